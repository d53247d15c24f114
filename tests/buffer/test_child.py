"""The embedded buffer's child process (``python -m photonstream.buffer.child``) ends when told, however often.

Seen under CI: a killed API's child got SIGTERM (PR_SET_PDEATHSIG) more than once, its handler called
``threading.Event.set`` while the main thread held that Event's lock inside ``Event.wait``, and the child hung for
good, holding its port and the data directory lock: the API started again could not start its buffer (exit 3).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from photonstream.buffer.child import hold_data_dir
from tests.buffer.support import REPO, free_port, listening


def start_child(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "photonstream.buffer.child"], cwd=REPO, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(json.dumps({"bind": f"tcp://127.0.0.1:{free_port()}", "data_dir": str(data_dir)}) + "\n")
    child.stdin.flush()
    answer = json.loads(child.stdout.readline())
    assert "endpoint" in answer, answer
    return child, answer["endpoint"]


@pytest.mark.parametrize("round_", range(5))
def test_a_burst_of_sigterms_ends_the_child_and_frees_its_port_and_data_dir(tmp_path: Path, round_: int) -> None:
    child, endpoint = start_child(tmp_path / "buf")
    try:
        assert listening(endpoint)
        for _ in range(3000):  # as fast as they go: some land while a handler is running
            try:
                os.kill(child.pid, signal.SIGTERM)
            except ProcessLookupError:
                break
        # it ends: 0, or SIGTERM's default once the interpreter is finalizing (it restores SIG_DFL)
        assert child.wait(20) in (0, -signal.SIGTERM)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(5)
    assert not listening(endpoint)
    lock = hold_data_dir(tmp_path / "buf", wait_s=0)  # let go: the next buffer may use it at once
    assert lock is not None
    lock.close()


def test_closing_stdin_ends_the_child(tmp_path: Path) -> None:
    child, endpoint = start_child(tmp_path / "buf")
    assert child.stdin is not None
    child.stdin.close()  # what the API's death does to the pipe
    assert child.wait(20) == 0
    assert not listening(endpoint)
