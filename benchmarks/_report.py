"""Printing benchmark results: a rich table, then one JSON object on the last line."""

from __future__ import annotations

import json
import platform
from typing import Any

from rich.console import Console
from rich.table import Table


def machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def report(title: str, rows: list[dict[str, Any]], summary: dict[str, Any], json_only: bool = False) -> None:
    if not json_only and rows:
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column, justify="left" if column == "case" else "right")
        for row in rows:
            table.add_row(*(f"{v:,.1f}" if isinstance(v, float) else str(v) for v in row.values()))
        Console(width=160).print(table)
    print(json.dumps(summary, sort_keys=True))
