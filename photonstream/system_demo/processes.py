"""The demo's consumer processes (``roles``), started early, fed their setup after the request, followed by their
JSON lines, and stopped at the end whatever happened."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from photonstream.errors import PhotonstreamError
from photonstream.system_demo.roles import PARENT_ENV

STOP_GRACE_S = 5.0


class RoleError(PhotonstreamError):
    """A consumer process of the demo failed. (500)"""


class RoleProcess:
    """One ``python -m photonstream.system_demo.roles ROLE`` process and what it has said so far."""

    def __init__(self, role: str, name: str, log_dir: Path) -> None:
        self.role = role
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.ready = threading.Event()
        self.done = threading.Event()  # final, error, or the process ended
        self.latest: dict[str, dict[str, Any]] = {}  # last line of each type
        self.final: dict[str, Any] | None = None
        self.error = ""
        self.warnings: list[str] = []
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "photonstream.system_demo.roles", role],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                env={**os.environ, PARENT_ENV: str(os.getpid())},
            )
        self.pid = self.process.pid
        self._reader = threading.Thread(target=self._read, name=f"demo-{name}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            kind = str(record.get("type", ""))
            self.latest[kind] = record
            if kind == "ready":
                self.ready.set()
            elif kind == "final":
                self.final = record
                self.done.set()
            elif kind == "warning" and len(self.warnings) < 5:
                self.warnings.append(str(record.get("message", "")))
            elif kind == "error":
                self.error = str(record.get("message", "failed"))
                self.done.set()
        code = self.process.wait()
        if self.final is None and not self.error:
            self.error = f"exited {code} without a result; see {self.log.name}: {self.log_tail()}"
        self.ready.set()
        self.done.set()

    def log_tail(self, chars: int = 600) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-chars:].strip()
        return ""

    def send(self, setup: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(setup) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise RoleError(f"demo {self.name}: the process is gone ({self.error or self.log_tail()})") from None

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        """Close its stdin (a process still waiting for its setup exits), then SIGTERM, then SIGKILL."""
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        for signum, wait_s in ((None, 1.0), (signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            if signum is not None and self.running:
                with contextlib.suppress(ProcessLookupError):
                    self.process.send_signal(signum)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(wait_s)
            if not self.running:
                break
        self._reader.join(timeout=2)


class Roles:
    """The demo's consumer processes."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[RoleProcess] = []

    def spawn(self, role: str, name: str) -> RoleProcess:
        process = RoleProcess(role, name, self.log_dir)
        self.processes.append(process)
        return process

    def named(self, name: str) -> RoleProcess:
        for process in self.processes:
            if process.name == name:
                return process
        raise LookupError(f"no demo process {name!r}")

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            if not process.ready.wait(max(0.0, deadline - time.monotonic())):
                raise RoleError(f"demo {process.name}: not ready within {timeout_s:g} s")
            if process.error:
                raise RoleError(f"demo {process.name}: {process.error}")

    def failed(self) -> list[RoleProcess]:
        return [p for p in self.processes if p.error]

    def all_done(self) -> bool:
        return all(p.done.is_set() for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.stop()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]


def alive(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"
