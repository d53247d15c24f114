"""The app's lifespan entered again (a test client per block, an ASGI server restarting the app in-process): the
embedded buffer comes back on the endpoints its first start bound, and the API's control link reaches it.

Was: with ``buffer_bind`` port ``*`` the second child bound a new port while the API kept talking to the first
one's: every dashboard request that asked the buffer for its state waited out the 5 s control timeout (the
schema fuzz of ``/ui/api/streams`` timed out in CI)."""

from __future__ import annotations

import time
from pathlib import Path

from fastapi.testclient import TestClient

from tests.api.harness import ApiHarness, Pki
from tests.store.databases import DatabaseSpec


def test_a_second_lifespan_finds_the_embedded_buffer_on_the_same_endpoint(pki: Pki, tmp_path: Path) -> None:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state", buffer_bind="tcp://127.0.0.1:*")
    link = harness.app.state.services.launcher.link
    endpoints, pids = [], []
    try:
        for _ in range(3):
            with TestClient(harness.app):
                began = time.monotonic()
                assert "streams" in link.stats()
                assert time.monotonic() - began < 2.0  # an answer, not the control timeout
                endpoints.append(link.settings.buffer_endpoint)
                pids.append(link.child.pid)
                assert link.child.ready["endpoint"] == endpoints[-1]
    finally:
        harness.close()
        spec.close()
    assert len(set(endpoints)) == 1 and not endpoints[0].endswith(":*")
    assert len(set(pids)) == 3  # a new child each time
