"""From a stream request to the pipeline configs its job runs, one per run, with the service's rules applied.

The caller picks the processing; the service picks what touches the facility:
- handlers are the service's (every stream goes to the buffer), never the caller's;
- the stream identity is ``experiment/run/<stream id>``, so buffer streams map one-to-one onto API streams;
- a source reading an experiment must read the requested one (``exp``), and its runs are the requested runs;
- files (source ``files``/``dir``/``directory``, calibration constants) must lie under the experiment's data root
  (``data_root`` setting, e.g. ``/data/{experiment}``); with no data root, no file is readable through the API.
  A path is resolved (symbolic links followed) and the job is given the resolved absolute path, so it reads the
  file that was checked (a relative path is relative to the root, not to the job's directory). A glob pattern
  is walked now, directory by directory, and refused when any entry it reaches leads outside the root; ``..``,
  ``~`` and NUL bytes are refused;
- network sources (``address``) must be in the ``allow_source_addresses`` list.
"""

from __future__ import annotations

import fnmatch
import glob
import os
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

from photonstream.api.errors import PermissionDeniedError
from photonstream.api.schemas import StreamRequest
from photonstream.api.settings import ApiSettings
from photonstream.config.pipeline import PipelineConfig, validate_pipeline
from photonstream.errors import ConfigError
from photonstream.processing._constants import ConstantFile
from photonstream.sources._atomic_model import BUNDLED as BUNDLED_MODELS

PATH_FIELDS = ("files", "dir", "directory")
RELATIVE_FIELDS = ("pattern", "end_marker")
MAX_MATCHES = 10_000  # entries a path pattern may reach when it is checked


def data_root(settings: ApiSettings, experiment: str) -> Path | None:
    if settings.data_root is None:
        return None
    return Path(settings.data_root.format(experiment=experiment)).expanduser().resolve()


def _confine(path: str, root: Path | None, where: str) -> str:
    """The absolute path (or pattern) inside the data root that the job must read for ``path``; raise
    PermissionDeniedError naming ``where`` when it leads outside the root."""
    if root is None:
        raise PermissionDeniedError(f"{where}: this service reads no files by path (it has no data_root)")
    if "\x00" in path:
        raise PermissionDeniedError(f"{where}: {path!r} contains a NUL byte")
    if path.startswith("~"):
        raise PermissionDeniedError(f"{where}: {path!r}: '~' is not expanded; give a path in the experiment's data")
    candidate = Path(path)
    absolute = candidate if candidate.is_absolute() else root / candidate
    outside = PermissionDeniedError(f"{where}: {path!r} is outside the experiment's data directory")
    if not glob.has_magic(path):
        resolved = absolute.resolve()
        if not resolved.is_relative_to(root):
            raise outside
        return str(resolved)
    parts = absolute.parts
    if ".." in parts:
        raise PermissionDeniedError(f"{where}: {path!r} is outside the experiment's data directory ('..' in a pattern)")
    first = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    prefix = Path(*parts[:first]).resolve()
    if not prefix.is_relative_to(root):
        raise outside
    _walk_pattern(prefix, parts[first:], root, where, path)
    return str(prefix.joinpath(*parts[first:]))


def _walk_pattern(prefix: Path, rest: tuple[str, ...], root: Path, where: str, path: str) -> None:
    """Expand the pattern as glob would, one component at a time, listing only directories inside the root;
    refuse at the first entry that resolves outside it (a symbolic link out)."""
    current = [prefix]
    for part in rest:
        reached: list[Path] = []
        for base in current:
            if glob.has_magic(part):
                try:
                    names = os.listdir(base)
                except OSError:  # not a directory, or unreadable: glob finds nothing there either
                    continue
                hidden = part.startswith(".")
                reached += [base / n for n in fnmatch.filter(names, part) if hidden or not n.startswith(".")]
            elif os.path.lexists(base / part):
                reached.append(base / part)
            if len(reached) > MAX_MATCHES:
                raise ConfigError(f"{where}: {path!r} reaches more than {MAX_MATCHES} files; be more specific")
        for entry in reached:
            if not entry.resolve().is_relative_to(root):
                raise PermissionDeniedError(
                    f"{where}: {path!r} reaches a file outside the experiment's data directory (a symbolic link)"
                )
        current = reached


def _bound_constants(value: Any, dumped: Any, root: Path | None, where: str) -> Any:
    """``dumped`` (a step's options as JSON) with every constant file's path confined and made absolute."""
    if isinstance(value, ConstantFile):
        return {**dumped, "path": _confine(value.path, root, where)}
    if isinstance(value, BaseModel) and isinstance(dumped, dict):
        return {
            key: _bound_constants(getattr(value, key), item, root, f"{where}.{key}")
            if key in type(value).model_fields
            else item
            for key, item in dumped.items()
        }
    if isinstance(value, list | tuple) and isinstance(dumped, list):
        return [
            _bound_constants(v, d, root, f"{where}[{i}]") for i, (v, d) in enumerate(zip(value, dumped, strict=True))
        ]
    if isinstance(value, dict) and isinstance(dumped, dict):
        return {
            key: _bound_constants(value[key], item, root, f"{where}.{key}") if key in value else item
            for key, item in dumped.items()
        }
    return dumped


def _relocate(message: str) -> str:
    """'(root): Value error, steps[0]: reason' → 'steps[0]: reason' (a whole-config check that names its field)."""
    if message.startswith("(root): "):
        inner = message.removeprefix("(root): ").removeprefix("Value error, ")
        field, sep, _ = inner.partition(": ")
        if sep and " " not in field:
            return inner
    return message


def default_handlers(settings: ApiSettings) -> list[dict[str, Any]]:
    if settings.stream_handlers is not None:
        return [dict(handler) for handler in settings.stream_handlers]
    return [{"type": "buffer", "address": settings.buffer_endpoint}]


def bind_pipelines(request: StreamRequest, stream_id: str, settings: ApiSettings) -> list[PipelineConfig]:
    """One validated PipelineConfig per requested run; PermissionDeniedError/ConfigError name the field."""
    source = request.pipeline.source
    fields = type(source).model_fields
    raw_source = source.model_dump(mode="json")
    kind = raw_source["type"]
    root = data_root(settings, request.experiment)

    exp = raw_source.get("exp")
    if "exp" in fields and exp is not None and exp != request.experiment:
        raise PermissionDeniedError(f"pipeline.source.exp: {exp!r} is not the requested experiment")
    for name in PATH_FIELDS:
        value = raw_source.get(name)
        if isinstance(value, str):
            raw_source[name] = _confine(value, root, f"pipeline.source.{name}")
        elif isinstance(value, list):
            raw_source[name] = [_confine(path, root, f"pipeline.source.{name}[{i}]") for i, path in enumerate(value)]
    model = raw_source.get("model")  # synthetic-diffraction: a bundled model by name, else a file like the others
    if "model" in fields and isinstance(model, str) and model.lower() not in BUNDLED_MODELS:
        raw_source["model"] = _confine(model, root, "pipeline.source.model")
    for name in RELATIVE_FIELDS:
        value = raw_source.get(name)
        if not isinstance(value, str):
            continue
        if PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts or "\x00" in value:
            raise PermissionDeniedError(f"pipeline.source.{name}: {value!r} must stay inside the run's directory")
        if isinstance(raw_source.get("directory"), str):  # what the pattern reaches now must be inside too
            _confine(str(Path(raw_source["directory"]) / value), root, f"pipeline.source.{name}")
    address = raw_source.get("address")
    if "address" in fields and address not in settings.allow_source_addresses:
        raise PermissionDeniedError(f"pipeline.source.address: {address!r} is not a source this service may read")
    steps = [
        _bound_constants(step, step.model_dump(mode="json"), root, f"pipeline.steps[{i}]")
        for i, step in enumerate(request.pipeline.steps)
    ]

    reads_runs = "run" in fields and not raw_source.get("files")
    if len(request.runs) > 1 and not reads_runs:
        raise ConfigError(f"runs: source '{kind}' reads one run; ask for one run per stream")
    given_run = raw_source.get("run")
    if reads_runs and given_run is not None and given_run not in request.runs:
        raise ConfigError(f"pipeline.source.run: {given_run} is not among the requested runs {request.runs}")
    detector = raw_source.get("detector")
    if request.detectors and "detector" in fields and detector is not None and detector not in request.detectors:
        raise ConfigError(f"pipeline.source.detector: {detector!r} is not among detectors {request.detectors}")

    serializer = request.pipeline.serializer.model_dump(mode="json")
    configs = []
    for run in request.runs:
        bound_source = dict(raw_source)
        if reads_runs:
            bound_source["run"] = run
            if "exp" in fields:
                bound_source["exp"] = request.experiment
        raw = {
            "stream": {"experiment": request.experiment, "run": run, "stream_id": stream_id},
            "source": bound_source,
            "steps": steps,
            "serializer": serializer,
            "handlers": default_handlers(settings),
            "max_events": request.pipeline.max_events,
        }
        try:
            configs.append(validate_pipeline(raw))
        except ConfigError as exc:
            raise ConfigError(f"pipeline.{_relocate(str(exc))}") from None
    return configs
