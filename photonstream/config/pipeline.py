"""The pipeline configuration: a source, processing steps, a serializer and one or more handlers.

Plugin sections are tagged unions over every registered plugin's Options model (the ``type`` field picks one), so
the whole tree validates in one pass and publishes one JSON schema (the request API embeds it).

    stream: {experiment: xpptut15, run: 42, stream_id: epix}
    source: {type: synthetic-diffraction, detector: epix10k2m, events: 100}
    steps: [{type: hitfinder}, {type: filter, drop_misses: true}]
    serializer: {type: msgpack}
    handlers: [{type: zmq-push, address: "tcp://127.0.0.1:5555"}]
"""

from __future__ import annotations

import re
from functools import reduce
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from photonstream.config.base import one_line
from photonstream.errors import ConfigError, PluginNotFoundError
from photonstream.handlers.base import registry as handler_registry
from photonstream.processing.base import registry as step_registry
from photonstream.serializers.base import registry as serializer_registry
from photonstream.sources.base import registry as source_registry


def _union(registry: Any) -> Any:
    models = [cls.Options for cls in registry.classes()]
    if len(models) == 1:
        return models[0]
    return Annotated[reduce(lambda a, b: Union[a, b], models), Field(discriminator="type")]  # noqa: UP007


SourceConfig = _union(source_registry)
StepConfig = _union(step_registry)
SerializerConfig = _union(serializer_registry)
HandlerConfig = _union(handler_registry)

PLUGIN_NAMES = frozenset(
    source_registry.names() + step_registry.names() + serializer_registry.names() + handler_registry.names()
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class StreamIdentity(BaseModel):
    """Which data this stream is: experiment, run and a stream id unique within the run."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    experiment: str = Field("sim00001", description="experiment name, e.g. xpptut15")
    run: int = Field(1, ge=0, description="run number")
    stream_id: str = Field("stream", description="name of this stream within the run")

    @model_validator(mode="after")
    def _names_are_safe(self) -> StreamIdentity:
        for field in ("experiment", "stream_id"):
            if not _NAME.match(getattr(self, field)):
                raise ValueError(f"{field} must be 1-64 letters, digits, '_', '.', '-' (got {getattr(self, field)!r})")
        return self

    @property
    def address(self) -> str:
        """The buffer's address for this stream: ``experiment/run/stream-id``."""
        return f"{self.experiment}/{self.run}/{self.stream_id}"


class PipelineConfig(BaseModel):
    """A complete pipeline: source → steps → serializer → handlers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    stream: StreamIdentity = Field(default_factory=StreamIdentity)
    source: SourceConfig  # type: ignore[valid-type]
    steps: list[StepConfig] = Field(default_factory=list)  # type: ignore[valid-type]
    serializer: SerializerConfig = Field(default_factory=lambda: serializer_registry.get("msgpack").Options())  # type: ignore[valid-type]
    handlers: list[HandlerConfig] = Field(min_length=1)  # type: ignore[valid-type]
    max_events: int | None = Field(None, ge=0, description="stop after this many source events")
    progress_every: int = Field(0, ge=0, description="log progress every N events (0: never)")

    @model_validator(mode="after")
    def _batch_comes_last(self) -> PipelineConfig:
        for i, step in enumerate(self.steps):
            if step.type == "batch" and i != len(self.steps) - 1:
                raise ValueError(f"steps[{i}]: 'batch' must be the last step")
        return self


def _check_plugin_names(raw: dict[str, Any]) -> None:
    """Name an unknown plugin type, with the known ones, before pydantic reports a less helpful union error."""
    slots = [("source", raw.get("source"), source_registry), ("serializer", raw.get("serializer"), serializer_registry)]
    for key, registry in (("steps", step_registry), ("handlers", handler_registry)):
        items = raw.get(key)
        if isinstance(items, list):
            slots += [(f"{key}[{i}]", item, registry) for i, item in enumerate(items)]
    for where, section, registry in slots:
        if isinstance(section, dict) and isinstance(section.get("type"), str):
            try:
                registry.get(section["type"])
            except PluginNotFoundError as exc:
                raise PluginNotFoundError(f"{where}.type: {exc}") from None


def _is_yaml_null_type(section: Any) -> bool:
    return isinstance(section, dict) and "type" in section and section["type"] is None


def validate_pipeline(raw: Any) -> PipelineConfig:
    """Validate a config tree; raise ``ConfigError`` with one line naming the field on failure."""
    if not isinstance(raw, dict):
        raise ConfigError(f"(root): a pipeline config must be a mapping, got {type(raw).__name__}")
    handlers = raw.get("handlers")
    if isinstance(handlers, list):  # YAML reads `type: null` as None; the null handler is the only sensible meaning
        raw = {**raw, "handlers": [{**h, "type": "null"} if _is_yaml_null_type(h) else h for h in handlers]}
    _check_plugin_names(raw)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(one_line(exc, tags=PLUGIN_NAMES)) from None


def load_pipeline(path: str | Path) -> PipelineConfig:
    """Read and validate a pipeline YAML file."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read pipeline config ({exc.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} is not valid YAML ({getattr(exc, 'problem', exc)})") from None
    return validate_pipeline(raw)
