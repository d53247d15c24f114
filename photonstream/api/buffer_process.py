"""The API's embedded buffer, run as a supervised child process.

Why a process and not a thread of the API: the buffer faces every data-plane peer, and some failures cannot be
caught in Python — libzmq asserts abort the whole process (see ``photonstream.buffer.routing``), and so would a
crash in a compression library or running out of memory. In a thread, each of those took the API down with the
buffer: no requests, no dashboard, no record of why. In a child process the API stays up, ``/v1/health`` says the
buffer is down and why (its exit status or signal), and the supervisor starts it again on the same endpoints,
keys and data directory: durable streams resume where they were (their grants are kept beside their data), and
producers and consumers reconnect by themselves. The API talks to its child as it talks to an external buffer:
over the control commands (ACL, FIN, RESULTS, STATS) with its admin key.

The child dies with the API (``PR_SET_PDEATHSIG`` and the closed stdin pipe), so a killed API leaves no buffer
behind holding its ports; the API started again starts a new one, which waits for the old one's data directory
lock (``photonstream.buffer.child``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from typing import IO, Any

from photonstream.errors import PhotonstreamError

log = logging.getLogger("photonstream.api.buffer")

READY_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_S = 60.0  # a child that ran this long resets the backoff


class BufferProcessError(PhotonstreamError):
    """The embedded buffer's process could not be started. (503)"""

    http_status = 503


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass  # not Linux: the closed stdin pipe still stops the child


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class BufferProcess:
    """Start (``start``), watch and restart the buffer child; ``stop`` ends it. ``status()`` for /v1/health."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = dict(settings)
        self.ready: dict[str, Any] = {}  # the child's answer: endpoint, token_endpoint, public_key, instance, pid
        self.restarts = 0
        self.last_exit = ""  # how the last child that died unasked ended, and when
        self.running = False
        self._process: subprocess.Popen[str] | None = None
        self._stdin: IO[str] | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> dict[str, Any]:
        """Start the child and wait until it listens; returns its answer. Raises BufferProcessError."""
        self._stopping.clear()
        self._spawn()
        # later children bind what the first one bound (a port '*' resolved), so clients find them again
        self.settings["bind"] = self.ready["endpoint"]
        if self.ready.get("token_endpoint"):
            self.settings["token_bind"] = self.ready["token_endpoint"]
        self._watcher = threading.Thread(target=self._watch, name="photonstream-buffer-supervisor", daemon=True)
        self._watcher.start()
        return self.ready

    def _spawn(self) -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "photonstream.buffer.child"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None, text=True, preexec_fn=_die_with_parent,
        )  # fmt: skip
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps(self.settings, default=str) + "\n")
        process.stdin.flush()
        answer = self._read_answer(process)
        if "error" in answer or "endpoint" not in answer:
            process.stdin.close()
            process.wait(10)
            raise BufferProcessError(f"buffer: {answer.get('error', 'the buffer process gave no endpoint')}")
        with self._lock:
            self._process, self._stdin = process, process.stdin
            self.ready = answer
            self.running = True

    @staticmethod
    def _read_answer(process: subprocess.Popen[str]) -> dict[str, Any]:
        assert process.stdout is not None
        result: dict[str, Any] = {}

        def read() -> None:
            line = process.stdout.readline() if process.stdout is not None else ""
            try:
                result.update(json.loads(line) if line else {"error": "the buffer process exited before it listened"})
            except ValueError:
                result["error"] = f"the buffer process answered {line[:200]!r}"

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(READY_TIMEOUT_S)
        if reader.is_alive():
            process.kill()
            return {"error": f"the buffer process did not listen within {READY_TIMEOUT_S:g} s"}
        return result

    def _watch(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            process = self._process
            if process is None:
                return
            started_at = time.monotonic()
            returncode = process.wait()
            if self._stopping.is_set():
                return
            with self._lock:
                self.running = False
                self.last_exit = f"{describe_exit(returncode)} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"
            log.error("embedded buffer (pid %s) %s; starting it again", process.pid, describe_exit(returncode))
            if time.monotonic() - started_at >= STABLE_S:
                attempt = 0
            while not self._stopping.is_set():
                self._stopping.wait(RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)])
                attempt += 1
                if self._stopping.is_set():
                    return
                try:
                    self._spawn()
                except (BufferProcessError, OSError) as exc:
                    log.error("embedded buffer: cannot start it again: %s", exc)
                    continue
                self.restarts += 1
                log.warning("embedded buffer started again (pid %s, restart %d)", self.pid, self.restarts)
                break

    def status(self) -> str:
        """'ok', or why the buffer is not serving now, for /v1/health."""
        with self._lock:
            if self.running:
                return "ok"
            return f"down ({self.last_exit or 'not started'}); restarting"

    def stop(self, timeout: float = 15.0) -> None:
        self._stopping.set()
        with self._lock:
            process, stdin = self._process, self._stdin
            self.running = False
        if process is None:
            return
        if stdin is not None:
            with contextlib.suppress(OSError):
                stdin.close()  # the child's signal to stop (it persists its state first)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        if process.stdout is not None:
            process.stdout.close()
        if self._watcher is not None:
            self._watcher.join(5)
