"""Request bodies parsed as JSON without letting a hostile body reach a parser limit: every malformed body is a
``MalformedBodyError`` (400) whose message says what is wrong, never a RecursionError or ValueError (500).

Refused before or while parsing:
- nesting deeper than ``MAX_DEPTH`` (counted on the raw text first: Python's parser recurses once per level);
- a number longer than ``MAX_NUMBER_CHARS`` (``int()`` refuses more than 4300 digits with a ValueError, and no
  field of ours needs more than 20), NaN, Infinity and floats that overflow to infinity;
- text that is not UTF-8, not JSON, or empty;
- duplicate keys in an object (which one would count is parser-dependent);
- strings holding NUL or a lone surrogate (neither can be stored: PostgreSQL refuses both).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from photonstream.api.errors import MalformedBodyError

MAX_DEPTH = 64
MAX_NUMBER_CHARS = 100
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def _check_depth(text: str) -> None:
    depth = 0
    for bracket in _BRACKET.finditer(_STRING_LITERAL.sub('""', text)):
        if bracket.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise MalformedBodyError(f"the body nests arrays/objects deeper than {MAX_DEPTH} levels")
        else:
            depth -= 1


def _number_text(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise MalformedBodyError(f"the body holds a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
    return text


def _integer(text: str) -> int:
    return int(_number_text(text))


def _float(text: str) -> float:
    value = float(_number_text(text))
    if not math.isfinite(value):
        raise MalformedBodyError(f"the body holds the number {text[:40]}, too large for a float")
    return value


def _constant(name: str) -> None:
    raise MalformedBodyError(f"the body holds {name}, which is not JSON")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise MalformedBodyError(f"the body repeats the key {key[:64]!r} in one object")
        obj[key] = value
    return obj


def _check_strings(data: Any) -> None:
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        where, item = pending.pop()
        if isinstance(item, dict):
            for key, value in item.items():
                pending.append((f"{where}.{key[:64]}" if where else key[:64], key))
                pending.append((f"{where}.{key[:64]}" if where else key[:64], value))
        elif isinstance(item, list):
            pending.extend((f"{where}[{i}]", value) for i, value in enumerate(item))
        elif isinstance(item, str):
            named = f" at {where}" if where else ""
            if "\x00" in item:
                raise MalformedBodyError(f"the body holds a string with a NUL character{named}")
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise MalformedBodyError(
                    f"the body holds a string with a lone surrogate (\\ud800-\\udfff){named}"
                ) from None


def parse_json_body(raw: bytes) -> Any:
    """The body as JSON data, or MalformedBodyError saying why it is not acceptable JSON."""
    if not raw.strip():
        raise MalformedBodyError("the body is empty; expected JSON")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedBodyError(f"the body is not UTF-8 (byte {exc.start})") from None
    _check_depth(text)
    try:
        data = json.loads(
            text, parse_int=_integer, parse_float=_float, parse_constant=_constant, object_pairs_hook=_object
        )
    except json.JSONDecodeError as exc:
        raise MalformedBodyError(f"the body is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:  # not reached after _check_depth; kept so that no body can ever make a 500 here
        raise MalformedBodyError(f"the body nests arrays/objects deeper than {MAX_DEPTH} levels") from None
    _check_strings(data)
    return data
