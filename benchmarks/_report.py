"""Printing benchmark results: a rich table, then one JSON object on the last line."""

from __future__ import annotations

import json
import math
import platform
from typing import Any

from rich.console import Console
from rich.table import Table


def machine() -> dict[str, Any]:
    import os

    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:,.2f}" if abs(value) < 10 else f"{value:,.1f}"
    return "–" if value is None else str(value)


def report(title: str, rows: list[dict[str, Any]], summary: dict[str, Any], json_only: bool = False) -> None:
    if not json_only and rows:
        table = Table(title=title, title_justify="left")
        for column in rows[0]:
            table.add_column(column, justify="left" if column == "case" else "right")
        for row in rows:
            table.add_row(*(_cell(v) for v in row.values()))
        Console(width=160).print(table)
    print(json.dumps(summary, sort_keys=True))
