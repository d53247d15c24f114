"""Two network namespaces joined by a veth pair: a facility and an HPC centre on one machine, for tests.

``NamespacePair()`` creates ``ps-facility-<suffix>`` and ``ps-hpc-<suffix>`` (a random suffix per pair, so runs
never collide), a veth pair between them with 169.254.77.1/30 (facility) and 169.254.77.2/30 (HPC), and brings
up ``lo`` in each. The link-local addresses exist only inside these two namespaces, so nothing outside the
machine (nor the machine's own network) is ever addressed. Processes run inside with ``ip netns exec``;
``close()`` ends the processes this object started, then deletes both namespaces by name (which also removes
the veth pair); it runs on failure too when the pair is used as a context manager.

Needs root and iproute2 (``ip netns``). ``unavailable_reason()`` says why not, in one line, or returns None.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
from collections.abc import Sequence
from typing import Any

FACILITY_ADDRESS = "169.254.77.1"
HPC_ADDRESS = "169.254.77.2"
PREFIX_LENGTH = 30


class NamespaceError(RuntimeError):
    """An ``ip`` command failed; the message has the command and its error output."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise NamespaceError(f"ip {' '.join(args)}: {result.stderr.strip() or f'exit {result.returncode}'}")
    return result


def unavailable_reason() -> str | None:
    """Why network namespaces cannot be used here (one line), or None when they can."""
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (ip netns add)"
    probe = f"ps-probe-{secrets.token_hex(3)}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
        return f"ip netns add is not allowed here: {result.stderr.strip() or f'exit {result.returncode}'}"
    _ip("netns", "del", probe, check=False)
    return None


class NamespacePair:
    """The facility and HPC namespaces with the veth link between them; see the module docstring."""

    def __init__(self, suffix: str | None = None) -> None:
        self.suffix = suffix or secrets.token_hex(3)
        self.facility = f"ps-facility-{self.suffix}"
        self.hpc = f"ps-hpc-{self.suffix}"
        self.facility_link = f"psf-{self.suffix}"  # interface names: at most 15 characters
        self.hpc_link = f"psh-{self.suffix}"
        self.facility_address = FACILITY_ADDRESS
        self.hpc_address = HPC_ADDRESS
        self._processes: list[subprocess.Popen[Any]] = []
        self._created: list[str] = []

    def create(self) -> NamespacePair:
        try:
            for name in (self.facility, self.hpc):
                _ip("netns", "add", name)
                self._created.append(name)
            _ip("link", "add", self.facility_link, "type", "veth", "peer", "name", self.hpc_link)
            _ip("link", "set", self.facility_link, "netns", self.facility)
            _ip("link", "set", self.hpc_link, "netns", self.hpc)
            for name, link, address in (
                (self.facility, self.facility_link, self.facility_address),
                (self.hpc, self.hpc_link, self.hpc_address),
            ):
                _ip("-n", name, "addr", "add", f"{address}/{PREFIX_LENGTH}", "dev", link)
                _ip("-n", name, "link", "set", link, "up")
                _ip("-n", name, "link", "set", "lo", "up")
        except BaseException:
            self.close()
            raise
        return self

    def argv(self, namespace: str, command: Sequence[str]) -> list[str]:
        """``command`` to run inside ``namespace`` (one of this pair's)."""
        if namespace not in (self.facility, self.hpc):
            raise ValueError(f"{namespace!r} is not one of this pair's namespaces")
        return ["ip", "netns", "exec", namespace, *command]

    def popen(self, namespace: str, command: Sequence[str], **options: Any) -> subprocess.Popen[Any]:
        """Start ``command`` inside ``namespace``; it is ended by ``close()`` if still running."""
        process = subprocess.Popen(self.argv(namespace, command), **options)
        self._processes.append(process)
        return process

    def run(self, namespace: str, command: Sequence[str], **options: Any) -> subprocess.CompletedProcess[Any]:
        options.setdefault("timeout", 60)
        return subprocess.run(self.argv(namespace, command), **options)

    def set_link(self, up: bool) -> None:
        """Take the veth link down (packets are dropped, as on a cut fibre) or bring it back up."""
        state = "up" if up else "down"
        _ip("-n", self.facility, "link", "set", self.facility_link, state)
        _ip("-n", self.hpc, "link", "set", self.hpc_link, state)

    def close(self) -> None:
        """End the processes started here, then delete both namespaces (and with them the veth pair)."""
        for process in self._processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGKILL)
        for process in self._processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
        self._processes.clear()
        for name in reversed(self._created):
            _ip("netns", "del", name, check=False)
        self._created.clear()
        _ip("link", "del", self.facility_link, check=False)  # only left if moving it into a namespace failed

    def __enter__(self) -> NamespacePair:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.close()
