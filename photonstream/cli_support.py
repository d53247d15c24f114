"""What every command module shares: the consoles and the one-line error handling of ``friendly``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from photonstream.errors import ConfigError, PhotonstreamError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly(fn: F) -> F:
    """Turn photonstream errors into one red line and exit status 2 (bad input) or 1 (failed run); an OSError
    (a missing file, a port in use) is bad input too."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (PhotonstreamError, OSError) as exc:
            raise typer.Exit(say_error(exc)) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def say_error(exc: PhotonstreamError | OSError) -> int:
    """Print ``error: ...`` in one line; the exit status: 2 for bad input (ConfigError, OSError), else 1."""
    line = str(exc) if isinstance(exc, PhotonstreamError) else os_error_line(exc)
    err_console.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)  # '[psana]' is text
    return 1 if isinstance(exc, PhotonstreamError) and not isinstance(exc, ConfigError) else 2


def os_error_line(exc: OSError) -> str:
    """``[Errno 2] No such file or directory: 'x'`` → ``x: No such file or directory``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    names = [str(name) for name in (exc.filename, exc.filename2) if name is not None]
    return f"{' → '.join(names)}: {reason}" if names else reason


def plugin_summary(module_doc: str, name: str) -> str:
    """A plugin's one-line summary: its module docstring's first paragraph, whole (a first line alone stops
    mid-sentence), without the leading ``name``: and the reST quotes."""
    paragraph = " ".join((module_doc or "").strip().split("\n\n")[0].split())
    return paragraph.removeprefix(f"``{name}``:").strip().replace("``", "")
