"""The typed client and the ``request``/``serve``/``db``/``policy`` commands against a real HTTPS server."""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from photonstream.api.cli import db_app, policy_app
from photonstream.api.request_cli import request_app
from photonstream.api.schemas import StreamInfo
from photonstream.api.serve_cli import serve_command
from photonstream.client.api import ApiError, ApiUnreachableError, PhotonstreamClient
from photonstream.store.db import Database
from tests.api.harness import EXPERIMENT, ApiHarness, stream_request
from tests.api.servers import free_port, running_server


@pytest.fixture()
def served(sqlite_api: ApiHarness) -> Iterator[str]:
    with running_server(sqlite_api.app, sqlite_api.pki) as url:
        yield url


def alice_client(api: ApiHarness, url: str) -> PhotonstreamClient:
    cert, key = api.pki.certs["alice"]
    return PhotonstreamClient(url, cert=cert, key=key, ca=api.pki.ca.directory / "ca.crt")


def test_the_typed_client_covers_a_streams_life(sqlite_api: ApiHarness, served: str) -> None:
    with alice_client(sqlite_api, served) as api:
        assert api.health().status == "ok" and api.me().identity == "alice"
        created = api.create_stream(stream_request())
        assert isinstance(created, StreamInfo) and created.state == "queued"
        assert created.data_endpoint.curve.client_secret_key
        assert api.get_stream(created.id).data_endpoint.curve.client_secret_key is None
        second = api.create_stream(stream_request())
        assert [s.id for s in api.list_streams(limit=1).items] == [second.id]
        assert {s.id for s in api.iter_streams(limit=1)} == {created.id, second.id}  # follows next_offset
        assert api.logs(created.id, tail=5).text == ""
        cancelled = api.cancel_stream(created.id)
        assert cancelled.state == "cancelled"
        events = list(api.events(created.id))
        assert [(e.event, e.id is not None) for e in events] == [("state", True), ("state", True), ("end", False)]
        assert api.wait(created.id).state == "cancelled"
        assert [t.to_state for t in api.transitions(created.id)] == ["queued", "cancelled"]
        assert api.datasets() == []

        with pytest.raises(ApiError) as missing:
            api.get_stream(uuid.uuid4())
        assert missing.value.status == 404 and missing.value.request_id
        with pytest.raises(ApiError) as invalid:
            api.create_stream({**stream_request(), "runs": []})
        assert invalid.value.status == 422 and "runs:" in str(invalid.value)
        with pytest.raises(ApiError) as gone:
            api.cancel_stream(created.id)
        assert gone.value.status == 409

    token = sqlite_api.pki.token("bob", (EXPERIMENT,))
    with PhotonstreamClient(served, token=token, ca=sqlite_api.pki.ca.directory / "ca.crt") as bob:
        assert bob.me().credential == "token"
        with pytest.raises(ApiError) as foreign:
            bob.get_stream(second.id)
        assert foreign.value.status == 404
    with pytest.raises(ApiUnreachableError):
        PhotonstreamClient(f"https://127.0.0.1:{free_port()}", token=token).health()


def test_request_commands(sqlite_api: ApiHarness, served: str, tmp_path: Path) -> None:
    runner = CliRunner()
    cert, key = sqlite_api.pki.certs["alice"]
    ca = sqlite_api.pki.ca.directory / "ca.crt"
    auth = ["--url", served, "--cert", str(cert), "--key", str(key), "--ca-cert", str(ca)]
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(
        yaml.safe_dump(
            {
                "source": stream_request()["pipeline"]["source"],
                "handlers": [{"type": "null"}],  # the service's own handlers win; the command says so
            }
        )
    )
    save = tmp_path / "stream.json"
    args = ["create", "-x", EXPERIMENT, "-r", "1", "-p", str(pipeline), "-c", "viewers:latest", "--time-limit", "600"]
    created = runner.invoke(request_app, [*auth, *args, "--save", str(save)])
    assert created.exit_code == 0, created.output
    assert "ignoring them" in created.output and "viewers (latest)" in created.output
    saved = json.loads(save.read_text())
    assert stat.S_IMODE(save.stat().st_mode) == 0o600 and len(saved["curve"]["client_secret_key"]) == 40
    stream_id = saved["stream_id"]

    listing = runner.invoke(request_app, [*auth, "list", "--json"])
    assert [s["id"] for s in json.loads(listing.stdout)["items"]] == [stream_id]
    assert stream_id in runner.invoke(request_app, [*auth, "list"]).stdout
    shown = runner.invoke(request_app, [*auth, "show", stream_id])
    assert shown.exit_code == 0 and "queued" in shown.stdout
    assert runner.invoke(request_app, [*auth, "logs", stream_id, "--tail", "3"]).exit_code == 0
    cancelled = runner.invoke(request_app, [*auth, "cancel", stream_id])
    assert cancelled.exit_code == 0 and "cancelled" in cancelled.stdout
    watched = runner.invoke(request_app, [*auth, "watch", stream_id])
    assert watched.exit_code == 1 and "queued → cancelled" in watched.stdout.replace("- → queued", "")
    missing = runner.invoke(request_app, [*auth, "show", str(uuid.uuid4())])
    assert missing.exit_code == 1 and "404" in missing.output and "Traceback" not in missing.output
    incomplete = runner.invoke(request_app, [*auth, "create", "-x", EXPERIMENT])
    assert incomplete.exit_code == 2 and "runs: missing" in incomplete.output


def test_serve_refuses_plain_http_with_certificates(tmp_path: Path) -> None:
    import typer

    app = typer.Typer()
    app.command()(serve_command)
    result = CliRunner().invoke(app, ["--insecure-http", "--mtls", "--ca", str(tmp_path), "--state-dir", str(tmp_path)])
    assert result.exit_code != 0
    result = CliRunner().invoke(app, ["--state-dir", str(tmp_path / "s")])  # no CA, no OIDC: nobody could log in
    assert result.exit_code == 2 and "tokens" in result.output


def test_db_and_policy_commands(tmp_path: Path) -> None:
    runner = CliRunner()
    where = ["--state-dir", str(tmp_path)]
    head = Database("sqlite://").head_revision()  # the newest migration shipped
    assert f"current (empty), head {head}" in runner.invoke(db_app, ["current", *where]).stdout
    assert f"revision {head}" in runner.invoke(db_app, ["upgrade", *where]).stdout
    assert runner.invoke(policy_app, ["grant", "alice", EXPERIMENT, *where]).exit_code == 0
    assert runner.invoke(policy_app, ["grant", "sfx", "*", "--group", *where]).exit_code == 0
    assert runner.invoke(policy_app, ["role", "carol", "operator", *where]).exit_code == 0
    assert runner.invoke(policy_app, ["member", "sfx", "alice", *where]).exit_code == 0
    bad = runner.invoke(policy_app, ["role", "carol", "root", *where])
    assert bad.exit_code == 2 and "not one of user, operator, admin" in bad.output
    snapshot = json.loads(runner.invoke(policy_app, ["show", "--json", *where]).stdout)
    assert {(g["subject"], g["experiment"]) for g in snapshot["grants"]} == {("alice", EXPERIMENT), ("sfx", "*")}
    assert snapshot["members"] == [{"group": "sfx", "identity": "alice"}]
    assert runner.invoke(policy_app, ["grant", "alice", EXPERIMENT, "--remove", *where]).exit_code == 0
    audit = runner.invoke(policy_app, ["audit", *where]).stdout
    assert "policy.ungrant" in audit and "policy.grant" in audit
