"""The base class of every plugin's options model, and the one-line rendering of validation errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class PluginOptions(BaseModel):
    """Options of one plugin. Subclasses declare ``type: Literal["plugin-name"] = "plugin-name"``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: str


UNION_SLOTS = frozenset({"source", "serializer", "steps", "handlers"})


def format_location(loc: tuple[Any, ...], tags: frozenset[str] = frozenset()) -> str:
    """('steps', 1, 'roi', 'x0') -> 'steps[1].x0': the union tag pydantic inserts after a plugin slot is dropped."""
    out = ""
    previous: Any = None
    for part in loc:
        in_slot = previous in UNION_SLOTS or (isinstance(previous, int) and out.split("[")[0] in UNION_SLOTS)
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and in_slot and (part in tags or part.startswith("function-")):
            pass
        else:
            out += f".{part}" if out else str(part)
        previous = part
    return out or "(root)"


def one_line(exc: ValidationError, prefix: str = "", tags: frozenset[str] = frozenset()) -> str:
    """The first validation error as 'field.path: reason' (plus how many more there are)."""
    errors = exc.errors()
    first = errors[0]
    loc = format_location(tuple(first["loc"]), tags)
    if prefix:
        loc = f"{prefix}.{loc}" if loc != "(root)" else prefix
    msg = first["msg"]
    if first.get("type") == "extra_forbidden":
        msg = "unknown option"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{loc}: {msg}{more}"
