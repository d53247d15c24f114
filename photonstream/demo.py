"""``photonstream demo``: a synthetic serial-crystallography run streamed over ZeroMQ to a separate consumer.

Everything runs on embedded defaults: the pipeline in this process, the consumer in a child process that
connects to it and prints hit rate and throughput when the end message arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys

from rich.console import Console

from photonstream.config.pipeline import validate_pipeline
from photonstream.errors import PhotonstreamError
from photonstream.pipeline import Pipeline, RunStats
from photonstream.transport.ports import free_tcp_port


def demo_config(endpoint: str, events: int, rate: float, detector: str) -> dict:
    return {
        "stream": {"experiment": "demo00001", "run": 1, "stream_id": detector},
        "source": {
            "type": "synthetic-diffraction",
            "detector": detector,
            "events": events,
            "hit_fraction": 0.1,
            "rate_hz": rate,
            "seed": 42,
        },
        "steps": [{"type": "hitfinder", "algorithm": "numpy"}],  # psana's peakfinder8 is ~60x slower here
        "serializer": {"type": "msgpack"},
        "handlers": [{"type": "zmq-push", "address": endpoint, "bind": True, "send_timeout_s": 20}],
    }


def run_demo(events: int, rate: float, detector: str, console: Console) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_tcp_port()}"
    config = validate_pipeline(demo_config(endpoint, events, rate, detector))
    console.print(
        f"[bold]photonstream demo[/]: {events} {detector} events at {rate:g} Hz "
        f"(≈10 % hits) → hitfinder → msgpack → zmq-push {endpoint} → consumer process"
    )
    consumer = subprocess.Popen(
        [sys.executable, "-m", "photonstream", "receive", endpoint, "--json", "--timeout", "30"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        pipeline = Pipeline(config)

        def show(stats: RunStats) -> None:
            hits = stats.counts["hit"]
            read = stats.counts["read"]
            console.print(
                f"  sent {stats.events_sent:5d}/{events}  hits {hits:4d} ({hits / max(read, 1):.1%})  "
                f"{stats.events_per_s:6.0f} ev/s  {stats.bytes_sent / stats.elapsed / 1e6:6.0f} MB/s",
                highlight=False,
            )

        end = pipeline.run(progress=show, progress_every=max(events // 10, 1))
        out, _ = consumer.communicate(timeout=60)
    except BaseException:
        consumer.kill()
        raise
    if consumer.returncode != 0:
        raise PhotonstreamError(f"the demo consumer failed (exit {consumer.returncode})")
    report = json.loads(out.strip().splitlines()[-1])
    console.print(
        f"[bold green]consumer[/]: {report['events']} events, hit rate {report['hit_rate']:.1%}, "
        f"{report['events_per_s']:,.0f} ev/s, {report['mb_per_s']:,.0f} MB/s, "
        f"median latency {report['latency_p50_ms']} ms; stream {end.reason}"
    )
    return report
