"""The buffer as a child process of the API (``python -m photonstream.buffer.child``), started and watched by
``photonstream.api.buffer_process``.

The parent writes the BufferSettings as one JSON line on the child's stdin; the child answers one JSON line on
stdout, ``{"endpoint", "token_endpoint", "public_key", "instance"}`` once it listens, or ``{"error"}``, then
serves until its stdin closes (the parent stopped it, or died: the pipe closes with it) or it gets SIGTERM.

One buffer at a time uses a data directory: the child holds an exclusive lock on ``<data_dir>/.lock`` while it
runs, and a new child waits for the previous one to let go (it may still be writing its last state) before it
reads anything there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

LOCK_FILE = ".lock"
LOCK_WAIT_S = 30.0
SHUTDOWN_WAIT_S = 25.0  # < LOCK_WAIT_S: the next child outwaits this one


def hold_data_dir(data_dir: Path | None, wait_s: float = LOCK_WAIT_S) -> IO[str] | None:
    """Lock ``data_dir`` for this process (None without one); raises TimeoutError while another holds it."""
    if data_dir is None:
        return None
    data_dir.mkdir(parents=True, exist_ok=True)
    handle = open(data_dir / LOCK_FILE, "a+")  # noqa: SIM115  (held open as long as the process serves)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return handle
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                raise TimeoutError(f"{data_dir} is still used by another buffer after {wait_s:g} s") from None
            time.sleep(0.05)


def answer(out: IO[str], **fields: Any) -> None:
    out.write(json.dumps(fields) + "\n")
    out.flush()


def main() -> int:
    from photonstream.buffer.service import BufferService, BufferSettings, tune_allocator
    from photonstream.errors import PhotonstreamError

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    out = sys.stdout
    try:
        settings = BufferSettings.build(**json.loads(sys.stdin.readline()))
        lock = hold_data_dir(settings.data_dir)
    except (PhotonstreamError, ValueError, TimeoutError, OSError) as exc:
        answer(out, error=str(exc))
        return 2
    tune_allocator()
    service = BufferService(settings)
    try:
        endpoint = service.start()
    except PhotonstreamError as exc:
        answer(out, error=str(exc))
        return 2
    stopped = threading.Event()
    # the handler only sets a flag: threading.Event.set takes a lock, and a signal arriving while this thread
    # held it (inside Event.wait) deadlocked the child for good, holding its ports and the data directory
    terminated: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: terminated.append(signum))

    def watch_parent() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.read()  # returns at EOF: the parent closed the pipe or is gone
        stopped.set()

    threading.Thread(target=watch_parent, name="photonstream-buffer-parent", daemon=True).start()
    answer(out, endpoint=endpoint, token_endpoint=service.token_endpoint, public_key=service.public_key,
           instance=service.instance, pid=os.getpid())  # fmt: skip
    while not (terminated or stopped.is_set()) and service._thread is not None and service._thread.is_alive():
        time.sleep(0.2)
    # the lock goes only once the service thread has ended (its state persisted, its sockets closed and the
    # context terminated, so the ports are free): a new child waiting for it may bind at once
    service.stop(timeout=SHUTDOWN_WAIT_S)
    if service._thread is not None and service._thread.is_alive():
        logging.getLogger("photonstream.buffer").error(
            "buffer: still shutting down after %g s; exiting", SHUTDOWN_WAIT_S
        )
    if lock is not None:
        lock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
