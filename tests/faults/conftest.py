"""The fault suite: each case breaks one part (kill -9, a cut link, a full disk, a stalled client) and asserts
numbers: frames lost, duplicates seen by applications, and the state the stream ends in.

Run it alone with ``pytest -m faults``. Cases that need privileges (mounting a tmpfs, network namespaces) skip with
the reason unless ``PHOTONSTREAM_REQUIRE_NETNS=1`` (CI), where they fail instead.
"""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: the fault suite (kill -9, cut links, full disks, stalled clients)")
