"""A pool worker for the concurrent-cancel test: reads nothing; on SIGTERM it signs ``OUT/terms`` and holds on.

    python tests/api/stubborn_worker.py OUT_DIR WORKER EXPECTED

It touches ``OUT_DIR/WORKER.ready`` once running. On SIGTERM it appends its name to ``OUT_DIR/terms`` and waits
there until ``EXPECTED`` names are in it, then writes ``OUT_DIR/WORKER.saw-all`` and exits. A worker whose SIGTERM
came while the other workers' cancels had not begun (cancels one after the other) never sees them all: it is
killed at the end of its grace period, and writes no ``saw-all``.
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from types import FrameType


def main() -> int:
    out, name, expected = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    terms = out / "terms"

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the group's SIGTERM may come twice (killpg, the shepherd)
        with terms.open("a") as signed:
            signed.write(name + "\n")
        while len(set(terms.read_text().split())) < expected:
            time.sleep(0.02)
        (out / f"{name}.saw-all").touch()
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.ready").touch()
    while True:
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main())
