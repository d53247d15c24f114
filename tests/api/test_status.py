"""``photonstream status`` with a stream running: the stream list and each group's hop figures, in the terminal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from photonstream.api.ui.status import run_status, status_app
from photonstream.client.api import PhotonstreamClient
from tests.api.harness import EXPERIMENT, Pki
from tests.api.live import CONSUMER_GROUP, LiveStream, live_stream
from tests.api.servers import running_server
from tests.buffer.support import wait_until


@pytest.fixture()
def live(pki: Pki, tmp_path: Path) -> Iterator[LiveStream]:
    with live_stream(pki, tmp_path) as stream:
        yield stream


def test_status_of_one_stream_shows_balanced_hops(live: LiveStream) -> None:
    client = PhotonstreamClient(http=live.api.client(), token=live.token)

    def sampled_and_counted() -> bool:  # the buffer's figures are up to a second old: wait for the monitor's group
        detail = client.monitor_stream(live.stream_id)
        groups = {g["name"] for hop in detail["hops"] for g in hop["groups"]}
        return (detail["monitor"] or {}).get("sampled", 0) >= 2 and "_monitor" in groups

    wait_until(sampled_and_counted, 20, "the monitor to sample")
    console = Console(record=True, width=200, color_system=None)
    run_status(lambda: client, live.stream_id, console=console)
    text = console.export_text()
    assert f"hops of {live.stream_id[:8]} ({EXPERIMENT})" in text and "state streaming" in text
    rows = [line for line in text.splitlines() if CONSUMER_GROUP in line or "_monitor" in line]
    assert len(rows) == 2 and all("✓" in row for row in rows) and "≠" not in text
    assert "latency p50" in text and "(0 sampled)" not in text


def test_status_command_over_https(live: LiveStream, pki: Pki) -> None:
    runner = CliRunner(env={"COLUMNS": "200"})
    with running_server(live.api.app, pki) as url:
        options = ["--url", url, "--token", live.token, "--ca-cert", str(pki.ca.directory / "ca.crt")]
        result = runner.invoke(status_app, options, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert "streams visible to alice" in result.output and live.stream_id[:8] in result.output
        assert "streaming" in result.output and CONSUMER_GROUP in result.output
        as_json = runner.invoke(status_app, [*options, "--json"], catch_exceptions=False)
        assert [s["id"] for s in json.loads(as_json.output)["streams"]] == [live.stream_id]
        refused = runner.invoke(status_app, [*options[:2], "--ca-cert", options[-1], "--token", "x", "--json"])
        assert refused.exit_code == 2 and "401" in refused.output
