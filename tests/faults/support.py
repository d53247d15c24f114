"""Shared by the fault cases: real pipelines and workers as processes, and the tally of what applications saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from photonstream.testing.stream_worker import read_records

REPO = Path(__file__).resolve().parents[2]


def environment(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), **extra}


def pipeline_yaml(
    path: Path,
    address: str,
    *,
    experiment: str = "faults",
    run: int = 1,
    events: int = 60,
    rate_hz: float = 0.0,
    shape: Sequence[int] = (64, 64),
    durable: bool = False,
    send_timeout_s: float = 20.0,
) -> Path:
    """A synthetic-diffraction → buffer pipeline config (events are numbered 0 .. events-1)."""
    config = {
        "stream": {"experiment": experiment, "run": run, "stream_id": "det"},
        "source": {"type": "synthetic-diffraction", "detector": "custom", "shape": list(shape), "events": events,
                   "rate_hz": rate_hz, "seed": run},
        "handlers": [{"type": "buffer", "address": address, "durable": durable, "send_timeout_s": send_timeout_s,
                      "resend_s": 0.3}],
    }  # fmt: skip
    path.write_text(yaml.safe_dump(config))
    return path


def start_pipeline(config: Path, *launcher: str) -> subprocess.Popen[str]:
    """``photonstream run CONFIG`` (under ``launcher``, e.g. mpirun -n 3, if given)."""
    return subprocess.Popen(
        [*launcher, sys.executable, "-m", "photonstream", "run", str(config), "--quiet", "--json"],
        cwd=REPO, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def api_consumer(created: dict[str, Any], directory: Path) -> tuple[str, str, tuple[str, str]]:
    """(buffer endpoint, stream address, worker options) to read a stream the API created with the consumer
    credential its create response gave (written to ``directory``/consumer.json for the worker process)."""
    from photonstream.buffer.credentials import Credentials

    endpoint, credentials = Credentials.from_endpoint(created)
    assert credentials is not None, "the API's buffer does not authenticate"
    path = directory / "consumer.json"
    path.write_text(credentials.to_json())
    return endpoint, created["data_endpoint"]["streams"][0], ("--credentials", str(path))


def start_worker(endpoint: str, stream: str, out: Path, *options: str) -> subprocess.Popen[str]:
    """``photonstream.testing.stream_worker``: records each frame its application finished (see that module)."""
    return subprocess.Popen(
        [sys.executable, "-m", "photonstream.testing.stream_worker", endpoint, stream, str(out), *options],
        cwd=REPO, env=environment(), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


@dataclass
class Finished:
    rc: int
    out: str
    err: str

    def end_message(self) -> dict[str, Any]:
        """The end message ``photonstream run --json`` printed last ({} if none)."""
        lines = self.out.strip().splitlines()
        try:
            return json.loads(lines[-1]) if lines else {}
        except ValueError:
            return {}


def finish(process: subprocess.Popen[str], what: str, timeout: float = 30.0) -> Finished:
    """Wait (bounded) for ``process``. One still running after ``timeout`` is killed: it hangs, which fails."""
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise AssertionError(f"{what} still ran after {timeout} s (it hangs)") from None
    return Finished(process.returncode, out or "", err or "")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def frames_done(out: Path) -> int:
    return len(read_records(out)[0])


@dataclass
class Tally:
    """What the applications of one lossless group saw, against the events the producer sent."""

    lost: int  # events no application finished
    duplicates: int  # extra finishes of an event, across every application of the group
    within_one: int  # extra finishes of an event by the same application (the subscription must prevent these)
    per_worker: list[list[int]]

    def numbers(self) -> tuple[int, int]:
        return self.lost, self.duplicates


def tally(events: int | Sequence[int], *outs: Path) -> Tally:
    expected = list(range(events)) if isinstance(events, int) else list(events)
    per_worker = [[int(f["event"]) for f in read_records(out)[0]] for out in outs]
    seen: Counter[int] = Counter(e for worker in per_worker for e in worker)
    return Tally(
        lost=sum(1 for e in expected if seen[e] == 0),
        duplicates=sum(n - 1 for n in seen.values() if n > 1),
        within_one=sum(len(worker) - len(set(worker)) for worker in per_worker),
        per_worker=per_worker,
    )


def summary_of(out: Path) -> dict[str, Any]:
    summary = read_records(out)[1]
    assert summary is not None, f"{out.name}: the worker left no summary (it did not finish)"
    return summary


def report(case: str, **numbers: Any) -> None:
    """Print a case's numbers (pytest -s) and keep them in artifacts/faults.json."""
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    path = artifacts / "faults.json"
    try:
        known = json.loads(path.read_text())
    except (OSError, ValueError):
        known = {}
    known[case] = numbers
    path.write_text(json.dumps(known, indent=2, sort_keys=True))
    print(f"\nfault {case}: {json.dumps(numbers)}")
