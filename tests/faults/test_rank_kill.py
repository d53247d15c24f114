"""kill -9 of one MPI rank of a 3-rank stream job (``resources.ranks: 3``: the local backend runs ``mpirun -n 3
photonstream run``), requested through the API and writing to the API's own CURVE buffer.

What the user sees: the launcher reports the killed rank and ends the others (MPICH: "BAD TERMINATION"), and
``mpirun`` exits non-zero, so the job fails and the API shows the stream ``failed`` (never ``completed``) with the
job's reason. No rank sends an end message, so the API ends the stream in the buffer: the lossless group's
application gets every frame the buffer stored, once, and then an end message ``failed`` instead of waiting.

Ranks split the events round-robin and die at slightly different moments, so what was stored is not a prefix of
the run: a second lossless group (``census``) reads the ended stream afterwards and gives the set to compare with.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from photonstream.testing.stream_worker import read_records
from tests.faults.support import Tally, api_consumer, finish, frames_done, report, start_worker, tally, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.timeout(120)]

pytest.importorskip("fastapi")

from photonstream.client import subscribe_stream  # noqa: E402
from photonstream.frames import Frame  # noqa: E402
from tests.api.harness import ApiHarness, Pki, step_until, stream_request  # noqa: E402
from tests.store.databases import DatabaseSpec  # noqa: E402


def mpirun() -> str:
    pytest.importorskip("mpi4py")
    for candidate in (Path(sys.prefix) / "bin" / "mpirun", shutil.which("mpirun")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    pytest.skip("mpirun not found (pip install mpich)")


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{entry.name}/stat").read_text()
                ppid = int(stat.rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def rank_pid(job_group: int, rank: int) -> int | None:
    """The PID of MPI rank ``rank`` in the job (by the PMI_RANK / OMPI rank variable it got)."""
    wanted = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for pid in descendants(job_group):
        with contextlib.suppress(OSError):
            variables = set(Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"))
            if variables & wanted and b"photonstream" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return pid
    return None


@dataclass
class Outcome:
    shown: dict[str, Any]  # the stream as the API shows it at the end
    stored: list[int]  # the events the buffer stored (read back by the census group)
    head: int  # data messages in the buffer's log
    counts: Tally
    worker_summary: dict[str, Any] | None


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    mpirun()
    root = tmp_path_factory.mktemp("rank-kill")
    spec = DatabaseSpec("sqlite", root)
    api = ApiHarness(spec, Pki(root / "pki"), root / "state", data_root=str(root / "data" / "{experiment}"),
                     local_max_concurrent=2, buffer_bind="tcp://127.0.0.1:*", buffer_token_bind=None,
                     buffer_isolation="thread", buffer_options={"member_timeout_s": 2.0},
                     max_ranks_per_request=3, max_cores_per_request=3)  # 3 ranks, whatever the host  # fmt: skip
    link = api.services().launcher.link
    link.start()  # the API's embedded CURVE buffer
    worker = None
    try:
        source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [32, 32], "events": 100_000,
                  "rate_hz": 30.0}  # fmt: skip
        body = stream_request(pipeline={"source": source}, resources={"time_limit_s": 600, "ranks": 3})
        created = api.client(cert="alice").post("/v1/streams", json=body)
        assert created.status_code == 201, created.text
        stream_id = created.json()["id"]
        streaming = step_until(api, stream_id, {"streaming", "completed", "failed"}, timeout=60.0)
        assert streaming["state"] == "streaming", streaming["reason"]
        endpoint, address, credentials = api_consumer(created.json(), root)
        out = root / "worker.jsonl"
        worker = start_worker(endpoint, address, out, "--credit", "8", "--timeout-s", "30", *credentials)
        wait_for(lambda: frames_done(out) >= 10, 60, "the worker to read ten frames")
        group = api.services().backends.get("local").process_group(streaming["job_id"])
        assert group is not None
        victim = wait_for(lambda: rank_pid(group, 1), 10, "rank 1's process")
        os.kill(victim, signal.SIGKILL)
        shown = step_until(api, stream_id, {"completed", "failed", "cancelled"}, timeout=60.0)
        head = int(link.service.stats_now()["streams"][address]["head"])
        wait_for(lambda: frames_done(out) >= head, 20, "the worker to read every stored frame")
        with contextlib.suppress(AssertionError):  # a worker that gets no end message is stopped after 5 s
            finish(worker, "the worker", 5)
        census = subscribe_stream(created.json(), group="census", policy="lossless", timeout_s=10)
        stored = [m.event for m in census if isinstance(m, Frame)]
        yield Outcome(shown, stored, head, tally(stored, out), read_records(out)[1])
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
        link.stop()
        api.close()
        spec.close()


def test_a_killed_rank_fails_the_run_and_no_stored_frame_is_lost_or_repeated(outcome: Outcome) -> None:
    summary = outcome.worker_summary or {}
    report("rank_kill9", state=outcome.shown["state"], reason=outcome.shown["reason"][-300:],
           lost=outcome.counts.lost, duplicates=outcome.counts.duplicates, stored=len(outcome.stored),
           consumer_end=summary.get("end_reason"))  # fmt: skip
    assert outcome.shown["state"] == "failed"  # mpirun exited non-zero: never completed
    assert "exit code" in outcome.shown["reason"] or "signal" in outcome.shown["reason"]
    assert len(outcome.stored) == len(set(outcome.stored)) == outcome.head >= 10
    assert outcome.counts.numbers() == (0, 0)  # frames lost, duplicates seen by the application
    assert summary.get("end_reason") != "completed"  # never completed


def test_after_a_killed_rank_the_consumers_get_a_failed_end(outcome: Outcome) -> None:
    assert outcome.worker_summary is not None, "the worker got no end message within 5 s"
    assert outcome.worker_summary["end_reason"] == "failed"
    assert outcome.worker_summary["end_error"] == " ".join(outcome.shown["reason"].split())  # the job's reason
