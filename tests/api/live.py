"""A stream with data flowing: the API (sqlite, launcher off) on a real buffer service, a synthetic run piped into
the buffer by the real pipeline runner (in a thread, as the job would), and a lossless consumer group reading it.

The stream is created through POST /v1/streams and moved to ``streaming`` as the launcher would when its job runs;
the pipeline is the one the API bound for it (so its buffer address is the stream's).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photonstream.buffer import BufferService
from photonstream.client import Subscription, subscribe
from photonstream.config.pipeline import PipelineConfig
from photonstream.errors import HandlerError
from photonstream.pipeline import Pipeline
from photonstream.store.streams import StreamState
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, stream_request
from tests.buffer.support import start_service, wait_until
from tests.store.databases import DatabaseSpec

CONSUMER_GROUP = "analysis"


def diffraction_request(
    rate_hz: float,
    events: int,
    worker_pools: list[dict[str, Any]] | None = None,
    more_steps: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Two 96×96 modules with Bragg spots on half the frames, and the hit finder marking them (then ``more_steps``);
    with ``worker_pools``, a lossless group for each pool's ``group`` too."""
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [2, 96, 96], "module_grid": [1, 2],
              "events": events, "rate_hz": rate_hz, "hit_fraction": 0.5, "spot_photons": 400.0, "seed": 3}  # fmt: skip
    steps = [{"type": "hitfinder", "algorithm": "numpy", "min_peaks": 3}, *(more_steps or [])]
    consumers = [{"name": CONSUMER_GROUP}, *({"name": pool["group"]} for pool in worker_pools or [])]
    extra = {"worker_pools": worker_pools} if worker_pools else {}
    return stream_request(pipeline={"source": source, "steps": steps}, consumers=consumers, **extra)


@dataclass
class LiveStream:
    api: ApiHarness
    buffer: BufferService
    stream_id: str
    address: str
    token: str
    pipeline: Pipeline
    consumer: Subscription
    consumed: list[int] = field(default_factory=list)  # events the consumer group got
    threads: list[threading.Thread] = field(default_factory=list)

    def start_another(self, owner: str, token: str) -> str:
        """A stream of another user (created, never run): for the refusal tests."""
        response = self.api.client(token=token).post("/v1/streams", json=diffraction_request(1.0, 1))
        assert response.status_code == 201, response.text
        return str(response.json()["id"])


def _produce(live: LiveStream) -> None:
    try:
        live.pipeline.run()
    except HandlerError as exc:  # a stream cancelled through the API is ended in the buffer: later data is refused
        if "already ended" not in str(exc):
            raise


def _consume(live: LiveStream) -> None:
    for message in live.consumer:
        event = getattr(message, "event", None)
        if event is not None:
            live.consumed.append(event)


def _run_pools(live: LiveStream, running: threading.Event) -> None:
    """The launcher's pool passes (its other work -- launching, following jobs -- this stream does without)."""
    while running.is_set():
        live.api.services().launcher.pools.reconcile()
        time.sleep(0.3)


@contextmanager
def live_stream(
    pki: Pki,
    tmp_path: Path,
    rate_hz: float = 40.0,
    events: int = 100_000,
    worker_pools: list[dict[str, Any]] | None = None,
    more_steps: list[dict[str, Any]] | None = None,
) -> Iterator[LiveStream]:
    """With ``worker_pools``, the launcher's pool manager runs them (real worker jobs on the local backend);
    ``more_steps`` follow the hit finder (a thumbnail and a veto, say)."""
    buffer = start_service()
    database = DatabaseSpec("sqlite", tmp_path)
    api = ApiHarness(database, pki, tmp_path / "state", buffer_endpoint=buffer.endpoint)
    token = pki.token("alice", (EXPERIMENT,))
    pools_running = threading.Event()
    try:
        body = diffraction_request(rate_hz, events, worker_pools, more_steps)
        response = api.client(token=token).post("/v1/streams", json=body)
        assert response.status_code == 201, response.text
        created = response.json()
        store = api.services().streams
        store.transition(created["id"], StreamState.STARTING, "test: submitting", "launcher")
        store.transition(created["id"], StreamState.STREAMING, "test: job running", "launcher")
        config = PipelineConfig.model_validate(store.get(created["id"]).spec["pipelines"][0])
        address = created["data_endpoint"]["streams"][0]
        consumer = subscribe(buffer.endpoint, address, group=CONSUMER_GROUP, timeout_s=30)
        live = LiveStream(api, buffer, created["id"], address, token, Pipeline(config), consumer)
        live.threads = [
            threading.Thread(target=_produce, args=(live,), name="test-pipeline", daemon=True),
            threading.Thread(target=_consume, args=(live,), name="test-consumer", daemon=True),
        ]
        if worker_pools:
            pools_running.set()
            live.threads.append(threading.Thread(target=_run_pools, args=(live, pools_running), name="test-pools",
                                                 daemon=True))  # fmt: skip
        for thread in live.threads:
            thread.start()
        wait_until(lambda: len(live.consumed) >= 3, 20, "the consumer group to receive frames")
        yield live
        live.pipeline.cancel()
        pools_running.clear()
        for thread in live.threads:
            thread.join(20)
    finally:
        api.app.state.monitor.close()
        api.close()
        buffer.stop()
        database.close()
