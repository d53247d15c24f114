"""From a stream request to the pipeline configs its job runs, one per run, with the service's rules applied.

The caller picks the processing; the service picks what touches the facility:
- handlers are the service's (every stream goes to the buffer), never the caller's;
- the stream identity is ``experiment/run/<stream id>``, so buffer streams map one-to-one onto API streams;
- a source reading an experiment must read the requested one (``exp``), and its runs are the requested runs;
- files (source ``files``/``dir``/``directory``, calibration constants) must lie under the experiment's data root
  (``data_root`` setting, e.g. ``/data/{experiment}``); with no data root, no file is readable through the API;
- network sources (``address``) must be in the ``allow_source_addresses`` list.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel

from photonstream.api.errors import PermissionDeniedError
from photonstream.api.schemas import StreamRequest
from photonstream.api.settings import ApiSettings
from photonstream.config.pipeline import PipelineConfig, validate_pipeline
from photonstream.errors import ConfigError
from photonstream.processing._constants import ConstantFile

PATH_FIELDS = ("files", "dir", "directory")
RELATIVE_FIELDS = ("pattern", "end_marker")


def data_root(settings: ApiSettings, experiment: str) -> Path | None:
    if settings.data_root is None:
        return None
    return Path(settings.data_root.format(experiment=experiment)).expanduser().resolve()


def _confine(path: str, root: Path | None, where: str) -> None:
    if root is None:
        raise PermissionDeniedError(f"{where}: this service reads no files by path (it has no data_root)")
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise PermissionDeniedError(f"{where}: {path!r} is outside the experiment's data directory")


def _constant_files(value: Any, where: str) -> list[tuple[str, str]]:
    """(location, path) of every ConstantFile inside a step's options."""
    found: list[tuple[str, str]] = []
    if isinstance(value, ConstantFile):
        found.append((where, value.path))
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            found += _constant_files(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found += _constant_files(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += _constant_files(item, f"{where}.{key}")
    return found


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
        for i, path in enumerate([value] if isinstance(value, str) else value or []):
            where = f"pipeline.source.{name}" + (f"[{i}]" if isinstance(value, list) else "")
            _confine(path, root, where)
    for name in RELATIVE_FIELDS:
        value = raw_source.get(name)
        if isinstance(value, str) and (PurePosixPath(value).is_absolute() or ".." in PurePosixPath(value).parts):
            raise PermissionDeniedError(f"pipeline.source.{name}: {value!r} must stay inside the run's directory")
    address = raw_source.get("address")
    if "address" in fields and address not in settings.allow_source_addresses:
        raise PermissionDeniedError(f"pipeline.source.address: {address!r} is not a source this service may read")
    for i, step in enumerate(request.pipeline.steps):
        for where, path in _constant_files(step, f"pipeline.steps[{i}]"):
            _confine(path, root, where)

    reads_runs = "run" in fields and not raw_source.get("files")
    if len(request.runs) > 1 and not reads_runs:
        raise ConfigError(f"runs: source '{kind}' reads one run; ask for one run per stream")
    given_run = raw_source.get("run")
    if reads_runs and given_run is not None and given_run not in request.runs:
        raise ConfigError(f"pipeline.source.run: {given_run} is not among the requested runs {request.runs}")
    detector = raw_source.get("detector")
    if request.detectors and "detector" in fields and detector is not None and detector not in request.detectors:
        raise ConfigError(f"pipeline.source.detector: {detector!r} is not among detectors {request.detectors}")

    steps = [step.model_dump(mode="json") for step in request.pipeline.steps]
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
