"""The catalog of worker kinds a stream request may run in an elastic pool (``worker_pools[].kind``).

A request never names a command: it names a *kind* from the service's catalog (``ApiSettings.worker_kinds``, on top
of the built-in ones below) and fills the kind's declared options, each checked against the kind's pattern. The
catalog's argv template may use the pool placeholders ({endpoint} {stream} {group} {pool} {worker} {index}, filled
per worker by ``photonstream.jobs.elastic``), the kind's options, ``{artifacts}`` (a folder of the stream's, filled
in by the service: what a worker writes there the API may serve) and ``{photonstream}`` as a whole argument (the
service's ``run_command``). A ``single`` kind runs one worker for the stream, not scaled, not started again once it
completed; its pool's group is only the one whose end it follows, and may be another pool's. Values go in as single
argv elements (no shell), and the default pattern refuses anything that could read as a flag. The buffer credential
reaches a worker as its job secret ``PHOTONSTREAM_BUFFER_CREDENTIALS`` (``photonstream.job_secrets``: a 0600 file),
never its command line.
"""

from __future__ import annotations

import re
import string

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from photonstream.jobs.elastic import PLACEHOLDERS
from photonstream.sources._atomic_model import BUNDLED

OPTION_NAME = r"^[a-z][a-z0-9_]{0,31}$"
DEFAULT_OPTION_PATTERN = r"^[A-Za-z0-9_.:/@+=][A-Za-z0-9_.:/@+=-]{0,255}$"  # never a flag (no leading '-')
PHOTONSTREAM = "{photonstream}"
ENDPOINT_OPTION = r"^tcp://[A-Za-z0-9][A-Za-z0-9.-]{0,252}:[0-9]{1,5}$"
SERVICE_VALUES = ("artifacts",)


class WorkerOption(BaseModel):
    """One option a request may set for a worker kind."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pattern: str = Field(DEFAULT_OPTION_PATTERN, description="a value must match this (whole) regular expression")
    default: str | None = Field(None, description="the value when the request gives none (None: required)")
    description: str = Field("", description="what the option means, shown to users in GET /v1/worker-kinds")

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(f"not a regular expression: {error}") from None
        return pattern


class WorkerKind(BaseModel):
    """A worker the service runs on request: its argv template and the options a request may fill in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    command: list[str] = Field(min_length=1, description="argv template (see the module docstring)")
    options: dict[str, WorkerOption] = Field(
        default_factory=dict, description="options a request may fill in, by name ({name} in command)"
    )
    roles: list[str] | None = Field(None, description="roles that may run this kind (None: anyone granted the data)")
    description: str = Field("", description="what the worker does, shown to users in GET /v1/worker-kinds")
    single: bool = Field(False, description="one worker per stream, run once (not scaled by the group's lag)")

    @field_validator("options")
    @classmethod
    def _option_names(cls, options: dict[str, WorkerOption]) -> dict[str, WorkerOption]:
        for name in options:
            if not re.match(OPTION_NAME, name) or name in (*PLACEHOLDERS, *SERVICE_VALUES, "photonstream"):
                raise ValueError(f"option name {name!r}: lower-case identifier, not a placeholder")
        return options

    @model_validator(mode="after")
    def _known_placeholders(self) -> WorkerKind:
        known = {*PLACEHOLDERS, *SERVICE_VALUES, *self.options}
        for argument in self.command:
            if argument == PHOTONSTREAM:
                continue
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(argument) if f is not None}
            except ValueError as error:
                raise ValueError(f"command argument {argument!r}: {error}") from None
            unknown = sorted(fields - known)
            if unknown:
                raise ValueError(f"command argument {argument!r}: unknown placeholder(s) {', '.join(unknown)}")
        return self

    def template(self, values: dict[str, str], run_command: list[str]) -> list[str]:
        """The pool's command: options and service values filled in (escaped), pool placeholders left for each
        worker."""
        out: list[str] = []
        for argument in self.command:
            if argument == PHOTONSTREAM:
                out.extend(part.replace("{", "{{").replace("}", "}}") for part in run_command)
                continue
            pieces = []
            for literal, field, _spec, _conversion in string.Formatter().parse(argument):
                pieces.append(literal.replace("{", "{{").replace("}", "}}"))
                if field is None:
                    continue
                if field in PLACEHOLDERS:
                    pieces.append("{" + field + "}")
                else:
                    pieces.append(values[field].replace("{", "{{").replace("}", "}}"))
            out.append("".join(pieces))
        return out


def words(line: str) -> list[str]:
    return line.split(" ")


def builtin_worker_kinds() -> dict[str, WorkerKind]:
    """Our own consumers, as ``photonstream`` runs them."""
    credit = WorkerOption(pattern=r"^[1-9][0-9]{0,3}$", default="4", description="frames fetched ahead, unacked")
    return {
        "pull": WorkerKind(
            description="reads the group and acks each message (photonstream consume); prints a JSON summary",
            command=words("{photonstream} consume {endpoint} {stream} --group {group} --credit {credit} --json"),
            options={"credit": credit},
        ),
        "xtal": WorkerKind(
            description="crystallography worker (photonstream xtal worker): indexes hits, sends them to a merger",
            command=words(
                "{photonstream} xtal worker --buffer {endpoint} --stream {stream} --group {group} --credit {credit} "
                "--results {results} --worker-id {worker}"
            ),
            options={
                "credit": credit,
                "results": WorkerOption(pattern=ENDPOINT_OPTION, description="the merger's endpoint, tcp://HOST:PORT"),
            },
        ),
        "tof": WorkerKind(
            description="time-of-flight analyser (photonstream tof): m/q histograms, published as stream results",
            command=words(
                "{photonstream} tof {endpoint} {stream} --group {group} --worker-id {worker} --batch-size {batch_size}"
            ),
            options={"batch_size": WorkerOption(pattern=r"^[1-9][0-9]{0,4}$", default="64")},
        ),
        "structure": WorkerKind(
            description="structure stage (photonstream xtal structure): refines a model against the merged data a "
            "merger sends (xtal merge --structure-bind), publishes R-work/R-free, peaks and a map section as "
            "stream results and writes MTZ and maps the API serves (GET /v1/streams/{id}/structure)",
            single=True,
            command=words(
                "{photonstream} xtal structure --connect {merger} --model {model} --out {artifacts}/structure "
                "--buffer {endpoint} --stream {stream} --worker-id {worker} --budget {budget} "
                "--idle-timeout {idle_timeout}"
            ),
            options={
                "merger": WorkerOption(
                    pattern=ENDPOINT_OPTION, description="where the merger offers its merged data, tcp://HOST:PORT"
                ),
                "model": WorkerOption(
                    pattern=f"^({'|'.join(sorted(BUNDLED))})$",
                    default="1aki",
                    description=f"the atomic model, one the service ships: {', '.join(sorted(BUNDLED))}",
                ),
                "budget": WorkerOption(pattern=r"^[1-9][0-9]{0,2}$", default="20", description="seconds per update"),
                "idle_timeout": WorkerOption(
                    pattern=r"^[1-9][0-9]{0,4}$", default="600", description="seconds without merged data: give up"
                ),
            },
        ),
    }


def merged_worker_kinds(configured: dict[str, WorkerKind | None]) -> dict[str, WorkerKind]:
    """The built-in kinds with the settings' on top (a kind set to null there is removed)."""
    kinds = builtin_worker_kinds()
    for name, kind in configured.items():
        if kind is None:
            kinds.pop(name, None)
        else:
            kinds[name] = kind
    return kinds
