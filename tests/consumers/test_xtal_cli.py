"""``photonstream xtal``: its help is the same kind as every other command's (typer), and bad options are one line."""

from __future__ import annotations

import json

from tests.test_cli import cli


def test_xtal_help_is_styled_like_the_other_commands() -> None:
    reference = cli("consume", "--help")
    assert reference.returncode == 0 and "╭─ Options" in reference.stdout
    for args, usage in [(("xtal", "--help"), "Usage: photonstream xtal [OPTIONS] COMMAND"),
                        (("xtal", "worker", "--help"), "Usage: photonstream xtal worker [OPTIONS]"),
                        (("xtal", "merge", "--help"), "Usage: photonstream xtal merge [OPTIONS]")]:  # fmt: skip
        shown = cli(*args)
        assert shown.returncode == 0, shown.stderr
        assert usage in shown.stdout and "╭─ Options" in shown.stdout, shown.stdout
        assert "python -m" not in shown.stdout and "positional arguments" not in shown.stdout
    assert "--settle" in cli("xtal", "merge", "--help").stdout


def test_xtal_worker_bad_options_are_one_line_naming_the_field() -> None:
    cases = [
        (["--results", "tcp://127.0.0.1:1", "--pull", "tcp://127.0.0.1:2", "--options", json.dumps({"nope": 1})],
         "error: --options: nope: Extra inputs are not permitted"),
        (["--results", "tcp://127.0.0.1:1", "--pull", "tcp://127.0.0.1:2", "--options", "{not json"],
         "error: --options: "),
        (["--results", "tcp://127.0.0.1:1"], "error: worker: give exactly one of --buffer (with --stream) and --pull"),
        (["--results", "tcp://127.0.0.1:1", "--buffer", "tcp://127.0.0.1:2"], "error: --buffer needs --stream"),
    ]  # fmt: skip
    for args, line in cases:
        result = cli("xtal", "worker", *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        lines = [text for text in result.stderr.splitlines() if text.strip()]
        assert len(lines) == 1 and lines[0].startswith(line), (args, result.stderr)
