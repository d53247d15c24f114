"""Moved to ``photonstream.testing.stream_worker`` (``photonstream bench wan`` runs it too).

Kept so that ``python -m tests.stream_worker`` and ``from tests.stream_worker import read_records`` still work.
"""

from __future__ import annotations

import sys

from photonstream.testing.stream_worker import last_line, main, open_subscription, read_records

__all__ = ["last_line", "main", "open_subscription", "read_records"]

if __name__ == "__main__":
    sys.exit(main())
