"""Example of training on a live stream: a small CNN that tells crystal hits from misses.

    report = train_hit_classifier("tcp://127.0.0.1:5600", "sim00001/1/stream", label="true_hit")
    report.accuracy  # on held-out events

Frames are flattened to 2-D (modules stacked), max-pooled to about ``image_size`` × ``image_size`` (max keeps
the few bright pixels of a Bragg spot) and log-scaled (``log1p``), then fed to three conv layers and a global max
pool. Every ``holdout_every``-th event (by event number) is held out: collected during the first pass, never
trained on, and scored at the end. The label is a frame metadata key (``true_hit`` from ``synthetic-diffraction``;
``hit`` from the hitfinder step) read as 0/1.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from photonstream.consumers.torch import MessageFactory, StreamDataset
from photonstream.errors import ConfigError
from photonstream.frames import Frame
from photonstream.processing.thumbnail import max_pool_to


def downsample_log(array: np.ndarray, image_size: int = 64) -> torch.Tensor:
    """(1, H, W) float32: the frame with modules stacked, max-pooled by whole factors to about ``image_size``
    per side (``max_pool_to``, the ``thumbnail`` step's pooling: a thumbnail passes through unchanged), negatives
    clipped, ``log1p``-scaled."""
    pooled = max_pool_to(array, image_size)
    return torch.from_numpy(np.log1p(np.maximum(pooled, 0).astype(np.float32)))[None]


@dataclass(frozen=True)
class BinaryLabel:
    """A frame's metadata ``key`` as 0/1, -1 where it is missing (picklable, for spawned DataLoader workers)."""

    key: str

    def __call__(self, frame: Frame) -> int:
        value = frame.metadata.get(self.key)
        return -1 if value is None else int(bool(value))


class HitClassifier(nn.Module):
    """conv 3×3 → ReLU → 2×2 max pool (twice), conv 3×3 → ReLU, global max pool, linear to two classes."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(4 * width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))


@dataclass
class HitClassifierReport:
    """Outcome of one training run; ``accuracy`` is on the held-out events."""

    accuracy: float
    majority_baseline: float  # accuracy of always answering the commoner held-out class
    train_events: int
    test_events: int
    train_hits: int
    test_hits: int
    seconds: float
    final_loss: float
    model: HitClassifier = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": round(self.accuracy, 4),
            "majority_baseline": round(self.majority_baseline, 4),
            "train_events": self.train_events,
            "test_events": self.test_events,
            "train_hits": self.train_hits,
            "test_hits": self.test_hits,
            "seconds": round(self.seconds, 2),
            "final_loss": round(self.final_loss, 4),
        }


def train_hit_classifier(
    endpoint: str | MessageFactory,
    stream: str | None = None,
    *,
    group: str | None = None,
    label: str = "true_hit",
    array: str | None = None,
    image_size: int = 64,
    holdout_every: int = 5,
    epochs: int = 1,
    batch_size: int = 16,
    learning_rate: float = 3e-3,
    width: int = 8,
    num_workers: int = 0,
    seed: int = 0,
    timeout_s: float | None = 60.0,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> HitClassifierReport:
    """Train a ``HitClassifier`` on ``stream`` as it arrives (buffer endpoint or message factory); score it on the
    held-out events. ``progress`` gets ``{"batches", "events", "loss"}`` after every training batch."""
    if holdout_every < 2:
        raise ConfigError(f"holdout_every: must be at least 2 (got {holdout_every})")
    if image_size < 8:
        raise ConfigError(f"image_size: must be at least 8 (got {image_size})")
    torch.manual_seed(seed)
    dataset = StreamDataset(
        endpoint,
        stream,
        group,
        transform=partial(downsample_log, image_size=image_size),
        label=BinaryLabel(label),
        array=array,
        epochs=epochs,
        timeout_s=timeout_s,
        with_info=True,
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    model = HitClassifier(width)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    test_images: list[torch.Tensor] = []
    test_labels: list[torch.Tensor] = []
    train_events = train_hits = batches = 0
    loss_value = float("nan")
    began = time.perf_counter()
    for images, labels, info in loader:
        if (labels < 0).any():
            raise ConfigError(f"label: frames without metadata {label!r} (events {info['event'][labels < 0].tolist()})")
        held_out = info["event"] % holdout_every == 0
        first_pass = info["epoch"] == 0
        test_images.append(images[held_out & first_pass])
        test_labels.append(labels[held_out & first_pass])
        train = ~held_out
        if not train.any():
            continue
        model.train()
        optimiser.zero_grad()
        loss = loss_fn(model(images[train]), labels[train])
        loss.backward()
        optimiser.step()
        loss_value = float(loss.detach())
        batches += 1
        train_events += int(train.sum())
        train_hits += int(labels[train].sum())
        if progress is not None:
            progress({"batches": batches, "events": train_events, "loss": loss_value})
    seconds = time.perf_counter() - began
    truth = torch.cat(test_labels) if test_labels else torch.zeros(0, dtype=torch.long)
    if truth.numel() == 0 or train_events == 0:
        counts = f"train {train_events}, test {truth.numel()}"
        raise ConfigError(f"the stream had too few events to train and test ({counts})")
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in torch.cat(test_images).split(256)])
    hits = int(truth.sum())
    return HitClassifierReport(
        accuracy=float((predicted == truth).float().mean()),
        majority_baseline=max(hits, truth.numel() - hits) / truth.numel(),
        train_events=train_events,
        test_events=int(truth.numel()),
        train_hits=train_hits,
        test_hits=hits,
        seconds=seconds,
        final_loss=loss_value,
        model=model,
    )
