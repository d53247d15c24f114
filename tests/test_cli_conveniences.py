"""``--version`` and shell completion of the installed ``photonstream`` command."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.test_cli import cli

ROOT = Path(__file__).resolve().parent.parent


def installed_command() -> str:
    return str(Path(sys.executable).parent / "photonstream")  # the console script the install made


def test_version_names_the_package_version() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for run in (cli("--version"), subprocess.run([installed_command(), "--version"], capture_output=True, text=True,
                                                 timeout=60)):  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert run.stdout.startswith(f"photonstream {declared} (Python 3."), run.stdout


def complete(shell: str, words: str, cword: int) -> str:
    env = {**os.environ, "_PHOTONSTREAM_COMPLETE": f"complete_{shell}", "COMP_WORDS": words, "COMP_CWORD": str(cword),
           "_TYPER_COMPLETE_ARGS": words}  # fmt: skip
    run = subprocess.run([installed_command()], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_bash_completion_offers_commands_subcommands_and_options() -> None:
    assert complete("bash", "photonstream se", 1).split() == ["serve"]
    assert {"create", "list", "show", "cancel", "watch"} <= set(complete("bash", "photonstream request ", 2).split())
    assert "--connect-timeout-s" in complete("bash", "photonstream consume --conn", 2).split()
    script = subprocess.run([installed_command(), "--show-completion", "bash"], capture_output=True, text=True,
                            timeout=60, env={**os.environ, "SHELL": "/bin/bash"})  # fmt: skip
    assert script.returncode == 0 and "complete -o default -F _photonstream_completion photonstream" in script.stdout


def test_zsh_completion_describes_the_commands() -> None:
    assert '"serve":"Serve the request API' in complete("zsh", "photonstream ser", 1)
