"""The settings reference, ``docs/settings.md``, made from the code: ``python -m photonstream.config.reference``.

Settings tables come from the pydantic models themselves (each field's type, bounds, default and
``Field(description=...)``; models nested in a field's type get a table of their own), the environment variables from
the registry in ``photonstream.config.environment``. A field whose default is computed (``default_factory``, other
than an empty list or mapping) says what it is with ``json_schema_extra={"doc_default": "..."}``, so that the
document is the same on every machine. ``tests/config/test_settings_reference.py`` fails when the document is not
what this module makes.
"""

from __future__ import annotations

import json
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from photonstream.config.environment import VARIABLES, EnvironmentVariable, Side

REGENERATE = "python -m photonstream.config.reference > docs/settings.md"
EMPTY_FACTORIES: tuple[Any, ...] = (list, dict, tuple, set, frozenset)
MIB = 1 << 20
SIDES: dict[Side, tuple[str, str]] = {
    "client": ("Client and command line", "read by `photonstream request`, `photonstream status` and the Python "
               "client (`PhotonstreamClient.from_env()`); an option given on the command line wins."),
    "service": ("Service and operators' commands", "read by `photonstream serve`, `ca`, `db` and the job backends."),
    "job": ("Jobs the service starts", "set by the service (launcher, job backends) for each stream's job and "
            "pool workers, read there; set them yourself only to run a pipeline by hand as a job would."),
    "third-party": ("Other software's variables", "variables of MPI launchers, OpenMP/BLAS, psana and XDG that "
                    "photonstream reads (or sets for the processes it starts)."),
    "install": ("Installation", "read by `scripts/install`."),
}  # fmt: skip


@dataclass(frozen=True)
class Section:
    """One settings model documented at the top level, under ``key`` of the settings file ('' for the file)."""

    key: str
    model: type[BaseModel]
    title: str
    intro: str


def sections() -> list[Section]:
    """The settings models an operator writes, in the order the document gives them."""
    from photonstream.api.settings import ApiSettings
    from photonstream.buffer.service import BufferSettings

    return [
        Section(
            "",
            ApiSettings,
            "Service settings: `photonstream serve --config settings.yaml`",
            "The settings file is a YAML mapping of the keys below (every key is optional). Unknown keys are "
            "refused and every value is checked before anything starts: a bad one fails in one line naming it. "
            "`photonstream serve`'s options override the file (`--ca` ca_dir, `--db` database_url, `--state-dir`, "
            "`--job-backend`, `--buffer` buffer_endpoint, `--data-root`, ...).",
        ),
        Section(
            "buffer_options",
            BufferSettings,
            "The embedded buffer: `buffer_options`",
            "`buffer_options` passes these keys to the buffer `photonstream serve` runs (`buffer: embedded`). "
            "`bind`, `security`, `token_bind`, `keys_dir`, `admin_keys` and `data_dir` come from the `buffer_*` "
            "settings above, `disk_per_stream` and `disk_total` from `buffer_disk_per_stream` and "
            "`buffer_disk_total`. `photonstream buffer serve` (an external buffer) takes the same settings as "
            "options, sizes there in MB or GB (`--memory-mb`, `--disk-gb`, ...).",
        ),
    ]


def _without_none(annotation: Any) -> list[Any]:
    if get_origin(annotation) in (Union, types.UnionType):
        return [arg for arg in get_args(annotation) if arg is not type(None)]
    return [annotation]


def nested_models(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    """(key path, model) of every model in a field's type: ``path.<name>`` for a mapping's values, ``path[]`` for a
    list's items."""
    for arg in _without_none(annotation):
        origin = get_origin(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            yield path, arg
        elif origin is dict:
            yield from nested_models(get_args(arg)[1], f"{path}.<name>")
        elif origin in (list, tuple, set, frozenset):
            yield from nested_models(get_args(arg)[0], f"{path}[]")


def walk(key: str, model: type[BaseModel]) -> Iterator[tuple[str, type[BaseModel]]]:
    """(key path, model) of ``model`` and, depth first, of every model nested in its fields."""
    yield key, model
    for name, field in model.model_fields.items():
        path = f"{key}.{name}" if key else name
        for inner_path, inner in nested_models(field.annotation, path):
            yield from walk(inner_path, inner)


def all_models() -> list[tuple[str, type[BaseModel]]]:
    """Every documented settings model with its key path in the settings file."""
    return [found for section in sections() for found in walk(section.key, section.model)]


def type_text(annotation: Any) -> str:
    """A field's type as a settings file sees it: ``int | null``, ``"off" | "optional"``, ``list[str]``."""
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in args)
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (list, tuple, set, frozenset):
        return f"list[{type_text(args[0])}]" if args else "list"
    if origin is dict:
        return f"dict[{type_text(args[0])}, {type_text(args[1])}]" if args else "dict"
    if annotation is Any:
        return "any"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


BOUNDS = (  # annotated_types constraint, its attribute, how the reference writes it
    (annotated_types.Ge, "ge", "≥ {}"),
    (annotated_types.Gt, "gt", "> {}"),
    (annotated_types.Le, "le", "≤ {}"),
    (annotated_types.Lt, "lt", "< {}"),
    (annotated_types.MinLen, "min_length", "min length {}"),
    (annotated_types.MaxLen, "max_length", "max length {}"),
)


def bounds_text(field: FieldInfo) -> str:
    """The field's numeric and length bounds: ``≥ 1``, ``> 0``, ``min length 1``."""
    found = [text.format(getattr(item, attribute)) for item in field.metadata
             for kind, attribute, text in BOUNDS if isinstance(item, kind)]  # fmt: skip
    return ", ".join(found)


def _value_text(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    elif isinstance(value, tuple | set | frozenset):
        value = list(value)
    text = f"`{json.dumps(value, ensure_ascii=False)}`"
    if isinstance(value, int) and not isinstance(value, bool) and value >= MIB and value % MIB == 0:
        mib = value // MIB
        text += f" ({mib // 1024} GiB)" if mib % 1024 == 0 else f" ({mib} MiB)"
    return text


def default_text(model: type[BaseModel], name: str, field: FieldInfo) -> str:
    """The default as the settings file would spell it; a computed one from its ``doc_default``."""
    if field.default_factory is not None:
        if field.default_factory in EMPTY_FACTORIES:
            return _value_text(field.default_factory())  # type: ignore[call-arg]
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if not isinstance(extra.get("doc_default"), str):
            raise ValueError(
                f"{model.__name__}.{name}: a computed default needs json_schema_extra={{'doc_default': ...}} "
                "(what it is, the same on every machine)"
            )
        return str(extra["doc_default"])
    if field.is_required():
        return "required"
    return _value_text(field.default)


def settings_env(model: type[BaseModel], name: str, field: FieldInfo) -> list[str]:
    """Variables that fill this field: the registry's (through a command's option) and, for a pydantic-settings
    model (one with ``env_prefix`` in its config), the one it reads itself."""
    found = [variable.name for variable in VARIABLES if variable.setting == f"{model.__name__}.{name}"]
    config: dict[str, Any] = dict(model.model_config)
    if "env_prefix" in config:
        alias = field.validation_alias if isinstance(field.validation_alias, str) else None
        own = alias or f"{config.get('env_prefix') or ''}{name}"
        found.append(own if config.get("case_sensitive") else own.upper())
    return found


def cell(text: str) -> str:
    """Text for a Markdown table cell: pipes, emphasis stars and tags escaped, no line breaks."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("<", "&lt;").replace("\n", " ")


def _code(text: str) -> str:
    return f"`{text}`".replace("|", "\\|")


def model_table(model: type[BaseModel]) -> list[str]:
    fields = model.model_fields
    env_of = {name: settings_env(model, name, field) for name, field in fields.items()}
    with_env = any(env_of.values())
    head = "| Key | Type | Default | " + ("Environment | " if with_env else "") + "Description |"
    lines = [head, "|" + " --- |" * (5 if with_env else 4)]
    for name, field in fields.items():
        kind = _code(type_text(field.annotation))
        bounds = bounds_text(field)
        row = [f"`{name}`", kind + (f", {bounds}" if bounds else ""), cell(default_text(model, name, field))]
        if with_env:
            row.append(", ".join(f"`{variable}`" for variable in env_of[name]))
        row.append(cell(field.description or ""))
        lines.append("| " + " | ".join(row) + " |")
    return lines


def settings_markdown() -> list[str]:
    lines: list[str] = []
    for section in sections():
        lines += [f"## {section.title}", "", section.intro, ""]
        for path, model in walk(section.key, section.model):
            if model is not section.model:
                lines += [f"### `{path}` ({model.__name__})", ""]
            doc = (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")
            if doc:
                lines += [doc, ""]
            lines += [*model_table(model), ""]
    return lines


def environment_markdown(variables: tuple[EnvironmentVariable, ...] = VARIABLES) -> list[str]:
    lines = [
        "## Environment variables",
        "",
        "Every variable photonstream reads, or sets for the processes it starts, from the registry in "
        "`photonstream/config/environment.py` (the code reading them takes their names from there).",
        "",
    ]
    for side, (title, intro) in SIDES.items():
        chosen = [variable for variable in variables if variable.side == side]
        if not chosen:
            continue
        lines += [f"### {title}", "", intro[0].upper() + intro[1:], ""]
        lines += ["| Variable | Used by | Setting | Description |", "| --- | --- | --- | --- |"]
        for variable in chosen:
            setting = f"`{variable.setting.split('.', 1)[1]}`" if variable.setting else ""
            row = [f"`{variable.name}`", cell(variable.read_by), setting, cell(variable.description)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return lines


def render() -> str:
    """The whole of docs/settings.md."""
    lines = [
        "# Settings and environment variables",
        "",
        f"<!-- Generated from the code: {REGENERATE}. Do not edit by hand. -->",
        "",
        "Every key of the service's settings file and every environment variable photonstream reads, with its "
        "type, default and meaning (None in a description is null in YAML). Made from the settings models and the "
        f"environment registry by `{REGENERATE}`; a test fails when this file is out of date.",
        "",
        *settings_markdown(),
        *environment_markdown(),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
