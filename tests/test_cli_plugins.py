"""``photonstream plugins``: whole summaries, and text in brackets (``photonstream[psana]``) shown as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from photonstream.cli_support import say_error
from photonstream.errors import MissingDependencyError
from tests.test_cli import cli


def test_every_summary_is_the_whole_first_paragraph_not_its_first_line() -> None:
    result = cli("plugins", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert len(entries) >= 20
    for entry in entries:
        summary = entry["summary"]
        assert summary and summary[-1] in ".)", entry  # a sentence that ends, never one cut at a line break
        assert "``" not in summary and not summary.startswith(entry["name"] + ":"), summary
    summaries = {(e["kind"], e["name"]): e["summary"] for e in entries}
    assert (
        summaries[("source", "psana")]
        == 'LCLS-II XTC2 runs read through SLAC\'s psana (pip install "photonstream[psana]").'
    )
    assert summaries[("source", "hdf5")].endswith("or any dataset), in order.")


def test_the_table_shows_brackets_as_text() -> None:
    env = {**os.environ, "COLUMNS": "240", "NO_COLOR": "1"}
    table = subprocess.run([sys.executable, "-m", "photonstream", "plugins"], capture_output=True, text=True,
                           timeout=120, env=env)  # fmt: skip
    assert table.returncode == 0, table.stderr
    assert 'source psana — LCLS-II XTC2 runs read through SLAC\'s psana (pip install "photonstream[psana]").' in (
        table.stdout
    )


def test_an_error_line_keeps_the_extra_in_its_install_hint(capsys: pytest.CaptureFixture[str]) -> None:
    status = say_error(MissingDependencyError.for_package("psana", "the psana source", extra="psana"))
    line = capsys.readouterr().err.strip()
    assert status == 1 and 'pip install "photonstream[psana]"' in line, line
