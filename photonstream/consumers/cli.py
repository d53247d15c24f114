"""Command line of the consumers: ``train_app`` (``hitclassifier``), mounted as ``photonstream train ...``.

torch is imported only when a command runs, so mounting this app costs nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from photonstream.errors import ConfigError, PhotonstreamError

train_app = typer.Typer(help="Train models on live streams from the buffer.", no_args_is_help=True)


@train_app.callback()
def train() -> None:
    """Train models on live streams from the buffer."""


@train_app.command("hitclassifier")
def hitclassifier(
    stream: Annotated[str, typer.Argument(help="stream address experiment/run/stream-id")],
    buffer: Annotated[str, typer.Option(help="buffer endpoint")] = "tcp://127.0.0.1:5600",
    group: Annotated[str | None, typer.Option(help="consumer group (default: a fresh one)")] = None,
    label: Annotated[str, typer.Option(help="metadata key of the hit label")] = "true_hit",
    epochs: Annotated[int, typer.Option(help="passes over the stream (later ones replay it)")] = 1,
    holdout_every: Annotated[int, typer.Option(help="hold out every n-th event for testing")] = 5,
    batch_size: Annotated[int, typer.Option(help="frames per training batch")] = 16,
    learning_rate: Annotated[float, typer.Option(help="Adam learning rate")] = 3e-3,
    image_size: Annotated[int, typer.Option(help="frames are max-pooled to about this many pixels a side")] = 64,
    workers: Annotated[int, typer.Option(help="DataLoader workers (each a member of the group)")] = 0,
    timeout_s: Annotated[float, typer.Option(help="give up after this long without word from the buffer")] = 60.0,
    save: Annotated[Path | None, typer.Option(help="write the trained model's state_dict here")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as one JSON line")] = False,
) -> None:
    """Train a small CNN hit classifier on a stream as it arrives and report its held-out accuracy."""
    try:
        from photonstream.consumers.hitclassifier import train_hit_classifier

        def progress(state: dict[str, Any]) -> None:
            if not as_json and state["batches"] % 10 == 0:
                typer.echo(f"batch {state['batches']:5d}  events {state['events']:7d}  loss {state['loss']:.4f}")

        report = train_hit_classifier(
            buffer,
            stream,
            group=group,
            label=label,
            epochs=epochs,
            holdout_every=holdout_every,
            batch_size=batch_size,
            learning_rate=learning_rate,
            image_size=image_size,
            num_workers=workers,
            timeout_s=timeout_s,
            progress=progress,
        )
        if save is not None:
            import torch

            torch.save(report.model.state_dict(), save)
    except PhotonstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    result = report.as_dict()
    if as_json:
        typer.echo(json.dumps(result, sort_keys=True))
        return
    typer.echo(
        f"held-out accuracy {result['accuracy']:.3f} on {result['test_events']} events "
        f"(majority class {result['majority_baseline']:.3f}); trained on {result['train_events']} events "
        f"in {result['seconds']:.1f} s"
    )


def tof(
    endpoint: Annotated[str, typer.Argument(help="buffer endpoint, e.g. tcp://127.0.0.1:5600")],
    stream: Annotated[str, typer.Argument(help="stream address experiment/run/stream-id")],
    group: Annotated[str, typer.Option(help="consumer group (lossless: workers of one group share the shots)")] = "tof",
    worker_id: Annotated[str, typer.Option(help="this worker's name in its results")] = "tof",
    batch_size: Annotated[int, typer.Option(min=1, help="shots analysed at once")] = 64,
    credit: Annotated[int, typer.Option(min=1, help="messages the buffer may send ahead")] = 4,
    publish: Annotated[bool, typer.Option(help="publish the m/q histogram as a stream result at the end")] = True,
    timeout_s: Annotated[float, typer.Option(help="fail after this long without word from the buffer")] = 120.0,
) -> None:
    """Analyse time-of-flight waveforms of a stream in the buffer (m/q histogram); print a JSON summary.

    The buffer credential comes from $PHOTONSTREAM_BUFFER_CREDENTIALS (what an elastic pool gives its workers)."""
    from photonstream.buffer.credentials import Credentials
    from photonstream.client import ResultPublisher, subscribe
    from photonstream.consumers.tof import run_tof_consumer

    publisher = None
    try:
        credentials = Credentials.from_env()
        messages = subscribe(endpoint, stream, group=group, credit=credit, timeout_s=timeout_s, credentials=credentials)
        if publish:
            publisher = ResultPublisher(endpoint, stream, credentials, group=group, worker=worker_id)
        summary = run_tof_consumer(messages, batch_size=batch_size, results=publisher)
        messages.close()
    except PhotonstreamError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
    finally:
        if publisher is not None:
            publisher.close()
    typer.echo(json.dumps({"worker": worker_id, **summary.as_dict()}, sort_keys=True))
