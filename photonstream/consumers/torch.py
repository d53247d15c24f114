"""A PyTorch ``IterableDataset`` over a stream in the buffer: train on data while it is being taken.

    dataset = StreamDataset("tcp://buffer:5600", "xpptut15/42/epix", group="train-7", label="true_hit")
    loader = DataLoader(dataset, batch_size=32, num_workers=4)
    for images, labels in loader: ...

Sharding: every DataLoader worker (and every process of a distributed job) opens its own subscription in
``__iter__`` as a member of the same work-sharing group, so the buffer hands each frame to exactly one of them
(lossless policy: a frame a member took but never acked goes to another member). Each subscription ends at the
end of the run, so iteration ends when the stream does. Give processes of one job the same ``group``; a new
training run needs a new group name (a group that already read the stream only gets its end message), which is
why the default is a fresh random name.

Epochs: ``epochs=N`` makes one iteration of the dataset read the stream N times. The first pass is group
``group`` from ``start``; pass e > 0 is a fresh group ``{group}.replay{e}`` starting at ``replay`` (any buffer start
spec: ``beginning``, ``offset:N``, ``time:...``), so the buffer must still hold the run (retention, durable streams).

Without a buffer, pass a factory instead of an endpoint: ``StreamDataset(lambda: read_stream(url))`` or any callable
returning an iterable of photonstream messages; each worker calls it once per pass and keeps every n-th frame
(n = number of workers × processes), so the factory must give every worker the same sequence.

Items: ``(tensor, label)``. The tensor is ``transform(array)`` (default: the array as float32); the label is
``frame.metadata[label]`` for a string, ``label(frame)`` for a callable, or, with ``label=None``, an info dict:
``event``, ``epoch``, ``shard`` and the frame's scalar metadata. ``with_info=True`` yields
``(tensor, label, info)`` with ``info`` = ``event``, ``epoch``, ``shard``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from photonstream.errors import ConfigError, MissingDependencyError
from photonstream.frames import EndMessage, Frame, FrameBatch, Message

try:
    import torch
    from torch.utils.data import IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise MissingDependencyError.for_package("torch", "photonstream.consumers.torch", extra="torch") from exc

MessageFactory = Callable[[], Iterable[Message]]
Transform = Callable[[np.ndarray], Any]
Label = str | Callable[[Frame], Any] | None
SCALARS = (bool, int, float, str, np.bool_, np.integer, np.floating)


def current_shard() -> tuple[int, int]:
    """(index, count) of this reader among all DataLoader workers of all processes of a distributed job."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * workers + worker, world * workers


def frames_of(messages: Iterable[Message]) -> Iterator[Frame]:
    """The frames of a message stream (batches unpacked), up to its end message."""
    for message in messages:
        if isinstance(message, Frame):
            yield message
        elif isinstance(message, FrameBatch):
            yield from message.frames
        elif isinstance(message, EndMessage):
            return


def as_tensor(array: Any) -> Any:
    return array if isinstance(array, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(array))


class StreamDataset(IterableDataset):
    """Frames of a buffer stream (or of a message factory) as ``(tensor, label)`` items; see the module doc."""

    def __init__(
        self,
        endpoint: str | MessageFactory,
        stream: str | None = None,
        group: str | None = None,
        *,
        transform: Transform | None = None,
        label: Label = None,
        array: str | None = None,
        policy: str = "lossless",
        epochs: int = 1,
        start: str | int = "beginning",
        replay: str | int = "beginning",
        credit: int = 4,
        timeout_s: float | None = 60.0,
        with_info: bool = False,
    ) -> None:
        super().__init__()
        if epochs < 1:
            raise ConfigError(f"epochs: must be at least 1 (got {epochs})")
        self.factory: MessageFactory | None = None if isinstance(endpoint, str) else endpoint
        if self.factory is None:
            from photonstream.buffer.groups import Policy, parse_start

            if not stream:
                raise ConfigError("stream: reading from a buffer needs the stream address experiment/run/stream-id")
            Policy.parse(policy)
            parse_start(start)
            parse_start(replay)
        self.endpoint = endpoint if isinstance(endpoint, str) else ""
        self.stream = stream or ""
        self.group = group or f"torch-{uuid.uuid4().hex[:12]}"
        self.transform = transform
        self.label = label
        self.array = array
        self.policy = policy
        self.epochs = epochs
        self.start = start
        self.replay = replay
        self.credit = credit
        self.timeout_s = timeout_s
        self.with_info = with_info

    def group_for(self, epoch: int) -> str:
        return self.group if epoch == 0 else f"{self.group}.replay{epoch}"

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        shard, shards = current_shard()
        for epoch in range(self.epochs):
            for frame in self._pass(epoch, shard, shards):
                yield self._item(frame, epoch, shard)

    def _pass(self, epoch: int, shard: int, shards: int) -> Iterator[Frame]:
        if self.factory is not None:
            for position, frame in enumerate(frames_of(self.factory())):
                if position % shards == shard:
                    yield frame
            return
        import zmq

        from photonstream.client import subscribe

        context = zmq.Context()  # one per worker: a context must not cross a fork
        subscription = subscribe(
            self.endpoint,
            self.stream,
            group=self.group_for(epoch),
            policy=self.policy,
            start=self.start if epoch == 0 else self.replay,
            credit=self.credit,
            timeout_s=self.timeout_s,
            context=context,
        )
        try:
            yield from frames_of(subscription)
        finally:
            subscription.close()
            context.term()

    def _item(self, frame: Frame, epoch: int, shard: int) -> tuple[Any, ...]:
        name = self.array or ("data" if "data" in frame.arrays or len(frame.arrays) != 1 else next(iter(frame.arrays)))
        try:
            array = frame.array(name)
        except KeyError as exc:
            present = sorted(frame.arrays)
            raise ConfigError(f"array: frame {frame.event} has no array {name!r} (it has {present})") from exc
        tensor = as_tensor(self.transform(array) if self.transform else np.asarray(array, dtype=np.float32))
        info: dict[str, Any] = {"event": frame.event, "epoch": epoch, "shard": shard}
        if self.label is None:
            scalars = {k: v for k, v in frame.metadata.items() if isinstance(v, SCALARS) and k not in info}
            return tensor, {**info, **scalars}
        if callable(self.label):
            label = self.label(frame)
        else:
            try:
                label = frame.metadata[self.label]
            except KeyError as exc:
                raise ConfigError(f"label: frame {frame.event} has no metadata {self.label!r}") from exc
        return (tensor, label, info) if self.with_info else (tensor, label)
