"""Jobs: what a stream request runs, and the backends that run it (local, slurm, sfapi). See ``base.py``.

``get_backend("local", state_dir=...)`` builds one by name; each backend module is imported only when asked for,
so the SF API's httpx stays optional.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from photonstream.errors import ConfigError
from photonstream.jobs.base import JobBackend, JobSpec, JobState, JobStatus, Resources

BACKENDS = {
    "local": "photonstream.jobs.local:LocalBackend",
    "slurm": "photonstream.jobs.slurm:SlurmBackend",
    "sfapi": "photonstream.jobs.sfapi:SfApiBackend",
}


def get_backend(name: str, **config: Any) -> JobBackend:
    """The job backend called ``name``, configured with ``config`` (the keyword arguments of its constructor)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown job backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module_name, _, class_name = BACKENDS[name].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    parameters = inspect.signature(backend_class).parameters
    unknown = sorted(set(config) - set(parameters))
    if unknown:
        raise ConfigError(
            f"job backend {name!r}: unknown option(s) {', '.join(unknown)}; known: {', '.join(parameters)}"
        )
    missing = [
        key
        for key, parameter in parameters.items()
        if parameter.default is inspect.Parameter.empty and key not in config
    ]
    if missing:
        raise ConfigError(f"job backend {name!r}: missing option(s) {', '.join(missing)}")
    return backend_class(**config)


__all__ = ["BACKENDS", "JobBackend", "JobSpec", "JobState", "JobStatus", "Resources", "get_backend"]
