"""Ends the API owes the buffer survive restarts, of the API and of the buffer.

The buffer is ``photonstream buffer serve`` in its own process (stopped and started again on the same port and
keys); the API is the app with its launcher stepped by hand, restarted as a new app on the same database.

- The buffer is down when a stream fails: the end is recorded pending; the API is restarted (its memory gone),
  the buffer comes back, and the new launcher's first pass delivers it: a consumer gets END ``failed``.
- A stream is cancelled and its end delivered; the buffer restarts (a non-durable stream is forgotten); the link's
  sync re-sends grants and the end: a consumer that subscribes only now gets END ``cancelled`` with the reason.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from photonstream.client import subscribe_stream
from photonstream.frames import EndMessage
from photonstream.store.streams import StreamState
from tests.api.harness import ApiHarness, Pki
from tests.api.test_launcher import create, small_source
from tests.buffer.support import free_port, listening, wait_until
from tests.store.databases import DatabaseSpec


class ExternalBuffer:
    """``buffer serve`` on a fixed port and keys directory, so that a restart is the same buffer to its clients."""

    def __init__(self, keys: Path) -> None:
        self.keys = keys
        self.endpoint = f"tcp://127.0.0.1:{free_port()}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "photonstream.buffer.cli", "serve", "--bind", self.endpoint,
                   "--keys-dir", str(self.keys)]  # fmt: skip
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: (self.keys / "buffer.key").exists() and listening(self.endpoint), 30, "the buffer")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture()
def buffer(tmp_path: Path) -> Iterator[ExternalBuffer]:
    external = ExternalBuffer(tmp_path / "keys")
    external.start()
    yield external
    external.stop()


@pytest.fixture()
def api(pki: Pki, tmp_path: Path, buffer: ExternalBuffer) -> Iterator[ApiHarness]:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state", buffer_endpoint=buffer.endpoint, buffer_keys_dir=buffer.keys)
    yield harness
    harness.close()
    spec.close()


def first_message(created: dict[str, Any]) -> Any:
    with subscribe_stream(created, timeout_s=20) as subscription:
        return next(subscription)


def test_an_end_the_buffer_missed_is_delivered_by_the_api_after_its_restart(
    api: ApiHarness, buffer: ExternalBuffer
) -> None:
    api.settings.workdirs.parent.mkdir(parents=True, exist_ok=True)
    api.settings.workdirs.write_text("a file where the stream workdirs should go")  # the launch will fail
    created = create(api, small_source())
    buffer.stop()
    launcher = api.services().launcher
    launcher.step()  # the job cannot be submitted: failed; the buffer does not answer the end
    failed = api.client(cert="alice").get(f"/v1/streams/{created['id']}").json()
    assert failed["state"] == "failed"
    (pending,) = launcher.ends.pending()
    assert (pending.stream_id, pending.state, pending.reason) == (created["id"], "failed", failed["reason"])

    api.services().launcher.stop()  # the API goes away; what it held in memory is lost
    buffer.start()
    restarted = api.new_app()
    try:
        new_launcher = api.services(restarted).launcher
        new_launcher.step()  # its first pass delivers what the store says is pending
        assert new_launcher.ends.pending() == []
        assert new_launcher.ends.get(created["id"]).delivered_at is not None
        new_launcher.link.sync()  # the grants, so that the stream's consumer may subscribe
        end = first_message(created)
    finally:
        api.services(restarted).launcher.stop()
        api.services(restarted).db.dispose()
    assert isinstance(end, EndMessage)
    assert (end.reason, end.error) == ("failed", " ".join(failed["reason"].split()))


def test_a_restarted_buffer_is_told_the_end_again_for_late_subscribers(api: ApiHarness, buffer: ExternalBuffer) -> None:
    link = api.services().launcher.link
    created = create(api, small_source())
    link.sync()
    assert api.client(cert="alice").delete(f"/v1/streams/{created['id']}").json()["state"] == "cancelled"
    assert api.services().launcher.ends.pending() == []  # the buffer took it
    address = created["data_endpoint"]["streams"][0]

    buffer.stop()
    buffer.start()  # a new instance: the stream was not durable, it knows nothing of it
    assert address not in link.stats()["streams"]
    link.sync()  # what the link's thread does every buffer_sync_s
    assert link.stats()["streams"][address]["ended_by"] == ["cancelled", "cancelled by alice"]
    end = first_message(created)
    assert isinstance(end, EndMessage) and (end.reason, end.error) == ("cancelled", "cancelled by alice")
    link.sync()  # the same instance again: the ends are not re-sent (nothing changes)
    assert link.stats()["streams"][address]["ended_by"] == ["cancelled", "cancelled by alice"]


def test_an_end_never_recorded_because_the_api_died_is_recorded_by_the_next_one(
    api: ApiHarness, buffer: ExternalBuffer
) -> None:
    created = create(api, small_source())
    streams = api.services().streams
    # the API recorded the failure and died before it recorded the end it owes the buffer
    streams.transition(created["id"], StreamState.FAILED, "node lost", "launcher")
    api.services().launcher.stop()
    assert api.services().launcher.ends.get(created["id"]) is None
    restarted = api.new_app()
    try:
        new_launcher = api.services(restarted).launcher
        new_launcher.step()
        owed = new_launcher.ends.get(created["id"])
        assert owed is not None and (owed.state, owed.reason) == ("failed", "node lost")
        assert owed.delivered_at is not None
        new_launcher.link.sync()
        end = first_message(created)
    finally:
        api.services(restarted).launcher.stop()
        api.services(restarted).db.dispose()
    assert isinstance(end, EndMessage) and (end.reason, end.error) == ("failed", "node lost")
