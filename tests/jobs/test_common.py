"""Log tails, log paths and records shared by the backends; building a backend by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from photonstream.errors import ConfigError
from photonstream.jobs import get_backend
from photonstream.jobs.base import JobSpec
from photonstream.jobs.common import JobRecords, log_path_of, read_tail, tail_text
from photonstream.jobs.local import LocalBackend


def test_tail_by_lines_and_bytes() -> None:
    data = b"one\ntwo\nthree\n"
    assert tail_text(data) == "one\ntwo\nthree\n"
    assert tail_text(data, tail_lines=2) == "two\nthree\n"
    assert tail_text(data, tail_lines=0) == ""
    assert tail_text(data, max_bytes=9) == "three\n"  # "o\nthree\n" cut mid-line: the partial line is dropped
    assert tail_text(data, max_bytes=0) == ""
    assert tail_text(b"\xff\xfeok\n") == "\ufffd\ufffdok\n"


def test_read_tail_reads_only_the_end(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(b"line %06d\n" % i for i in range(100_000)))
    assert read_tail(log, tail_lines=2, max_bytes=100) == "line 099998\nline 099999\n"
    assert read_tail(log, max_bytes=len("line 099999\n")) == "line 099999\n"
    assert read_tail(tmp_path / "absent.log") == ""


def test_log_paths() -> None:
    assert log_path_of(JobSpec(name="a", command=["x"], workdir="/w")) == "/w/a.log"
    assert log_path_of(JobSpec(name="a", command=["x"], workdir="/w", log_path="logs/a.txt")) == "/w/logs/a.txt"
    assert log_path_of(JobSpec(name="a", command=["x"], workdir="/w", log_path="/l/a.txt")) == "/l/a.txt"


def test_job_records_round_trip(tmp_path: Path) -> None:
    records = JobRecords(tmp_path / "records")
    assert records.load("1") is None
    records.save("perlmutter-1", {"log_path": "/x", "array": None})
    assert records.load("perlmutter-1") == {"log_path": "/x", "array": None}


def test_get_backend_builds_by_name_and_names_bad_options(tmp_path: Path) -> None:
    backend = get_backend("local", state_dir=tmp_path, max_concurrent=2)
    assert isinstance(backend, LocalBackend)
    assert backend.max_concurrent == 2
    with pytest.raises(ConfigError, match="unknown job backend 'pbs'; known: local, sfapi, slurm"):
        get_backend("pbs")
    with pytest.raises(ConfigError, match="unknown option"):
        get_backend("local", state_dir=tmp_path, max_concurent=2)
    with pytest.raises(ConfigError, match=r"missing option.*client_id"):
        get_backend("sfapi", private_key="x")
