"""The bad-credential matrix of issue 4, end to end through the data plane: the API (uvicorn, launcher, embedded
CURVE + token buffer) runs real jobs; consumers try to read a stream's frames with no credential, a key nobody
issued, the stream's public key with a made-up secret, another stream's key, another stream's token, the right
token user with a wrong password, and the credential of a stream whose owner was revoked or disabled.

Numbers asserted: frames received by every bad credential = 0 (each attempt ends in the client's one-line
refusal), frames received by the right credentials = all of them, frames a consumer already reading received
after its owner's revocation took effect <= its credit (1; what was already on the wire), then 0 -- whether the
revocation came through the API, by disabling the owner, or from ``photonstream ca revoke`` (the CRL alone); the
stream is then cancelled with the reason, its job stopped.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from photonstream.api.launcher import REVOKED_OWNER
from photonstream.buffer.credentials import Credentials
from photonstream.client import AccessRefusedError, ConsumerError, subscribe, subscribe_stream
from photonstream.frames import Frame
from tests.api.harness import EXPERIMENT, Pki, stream_request
from tests.api.test_integration import System, make_system

EVENTS = 8


@pytest.fixture()
def system(pki: Pki, tmp_path: Path) -> Iterator[System]:
    yield from make_system(pki, tmp_path)


def frames_read(open_subscription: Callable[[], Any]) -> tuple[int, str]:
    """(frames received, the error that ended the attempt: '' if it read to the end)."""
    frames = 0
    try:
        for message in open_subscription():
            frames += isinstance(message, Frame)
    except ConsumerError as exc:
        assert "\n" not in str(exc)
        return frames, type(exc).__name__
    return frames, ""


def create_as(system: System, user: str, events: int, rate_hz: float = 0.0) -> dict[str, Any]:
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": events,
              "rate_hz": rate_hz}  # fmt: skip
    body = stream_request(pipeline={"source": source}, consumers=[{"name": "analysis"}])
    response = system.api.client(cert=user, app=system.app).post("/v1/streams", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_every_bad_credential_reads_zero_frames(system: System) -> None:
    mine, other = system.create(events=EVENTS), system.create(events=EVENTS)
    for created in (mine, other):
        assert system.wait_state(created["id"], {"completed", "failed"})["state"] == "completed"
    endpoint = mine["data_endpoint"]
    buffer, address = endpoint["address"], endpoint["streams"][0]
    token_endpoint = endpoint["token"]["address"]
    server_key = endpoint["curve"]["server_public_key"]
    _, other_curve = Credentials.from_endpoint(other)
    _, other_token = Credentials.from_endpoint(other, "token")
    stranger = Credentials.curve(server_key, *(k.decode() for k in zmq.curve_keypair()))
    forged = Credentials.curve(server_key, endpoint["curve"]["client_public_key"], zmq.curve_keypair()[1].decode())
    wrong_password = Credentials.token(endpoint["token"]["username"], "not-the-password")

    def attempt(where: str, credentials: Credentials | None) -> Callable[[], Any]:
        return lambda: subscribe(where, address, group="analysis", credentials=credentials, timeout_s=10)

    matrix = {
        "no credential": attempt(buffer, None),
        "a key nobody issued": attempt(buffer, stranger),
        "the stream's public key with a made-up secret": attempt(buffer, forged),
        "another stream's key": attempt(buffer, other_curve),
        "another stream's token": attempt(token_endpoint, other_token),
        "the right token user, a wrong password": attempt(token_endpoint, wrong_password),
        "no credential on the token link": attempt(token_endpoint, None),
    }
    outcomes = {name: frames_read(open_) for name, open_ in matrix.items()}
    assert {name: frames for name, (frames, _) in outcomes.items()} == dict.fromkeys(matrix, 0)
    assert all(error for _, error in outcomes.values()), outcomes  # each attempt was refused, none just ended
    assert outcomes["another stream's key"][1] == "AccessRefusedError"

    right = frames_read(lambda: subscribe_stream(mine, timeout_s=30))
    by_token = frames_read(lambda: subscribe_stream(mine, group="by-token", security="token", timeout_s=30))
    assert (right, by_token) == ((EVENTS, ""), (EVENTS, ""))


@pytest.mark.parametrize("how", ["revoked certificate", "disabled identity", "ca revoke"])
def test_a_revoked_owners_stream_credential_stops_reading(system: System, pki: Pki, tmp_path: Path, how: str) -> None:
    owner = pki.add_user(f"dave-{how.split()[0]}", [EXPERIMENT], tmp_path / "dave")
    created = create_as(system, owner, events=100_000, rate_hz=50.0)
    reading = subscribe_stream(created, credit=1, timeout_s=30)  # a consumer already reading
    first = [m for m, _ in zip(reading, range(5), strict=False)]
    assert sum(isinstance(m, Frame) for m in first) >= 3

    admin = system.api.client(cert="root", app=system.app)
    if how == "revoked certificate":
        change = admin.post("/v1/admin/revocations", json={"kind": "certificate", "credential_id": pki.serial(owner)})
        assert change.status_code == 200, change.text
    elif how == "disabled identity":
        change = admin.put("/v1/admin/identities", json={"identity": owner, "disabled": True})
        assert change.status_code == 200, change.text
    else:  # the CA's own command: it rewrites only the CRL, the API learns of it on its launcher's next pass
        ca = str(pki.ca.directory)
        subprocess.run([sys.executable, "-m", "photonstream", "ca", "revoke", pki.serial(owner), "--ca", ca],
                       check=True, capture_output=True, timeout=60)  # fmt: skip
    revoked_at = time.monotonic()

    after = 0
    with pytest.raises(AccessRefusedError, match="may no longer read this stream"):
        for message in reading:
            after += isinstance(message, Frame)
            assert time.monotonic() - revoked_at < 15, "the consumer kept reading after its owner was revoked"
    if how != "ca revoke":  # (the CRL is read on the launcher's next pass: frames flow until then)
        assert after <= 2  # the one message its credit allowed on the wire, and one already queued in the client
    late = frames_read(lambda: subscribe_stream(created, group="late", timeout_s=10))
    assert late == (0, "ConsumerError")  # the key is unknown now: the handshake is refused

    def shown() -> dict[str, Any]:
        return dict(admin.get(f"/v1/streams/{created['id']}").json())

    deadline = time.monotonic() + 30
    while shown()["state"] == "streaming" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert (shown()["state"], shown()["reason"]) == ("cancelled", REVOKED_OWNER)  # the job was stopped, not failed
