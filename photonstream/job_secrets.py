"""A job's secrets in a file only its owner may read, not in its environment or batch script.

Whatever a job backend puts in a job's environment may be kept where others read it: Slurm stores the batch script
(``scontrol write batch_script JOBID``, its state directory), the SF API uploads the script to NERSC, and a local
job's specification sits in the backend's state database. So the launcher hands a backend the job's secrets
(producer credential, report secret) apart from its environment (``JobSpec.secrets``); the backend writes them, as
one JSON object ``{"VARIABLE": "value", ...}``, to a file in the job's workdir created with mode 0600 (``O_EXCL``
under a temporary name, then renamed: the file never exists with wider permissions, nor half written), and puts
only the file's path in the environment: ``PHOTONSTREAM_JOB_SECRETS_FILE``. The file is deleted when the stream
finishes; the job's log stays.

Job side: ``job_secret(NAME)`` is the environment variable ``NAME`` if set, else the file's entry ``NAME``
(``reporting.reporter_from_env`` and ``Credentials.from_env`` read through it). Standard library only: every
pipeline run imports it.
"""

from __future__ import annotations

import json
import os
import re
import secrets as _random
from collections.abc import Mapping
from pathlib import Path

from photonstream.config.environment import SECRETS_FILE_ENV
from photonstream.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def write_secrets_file(directory: str | Path, values: Mapping[str, str], stem: str = "job-secrets") -> Path:
    """Write ``values`` to a new file ``<directory>/<stem>-<random>.json`` (mode 0600); returns its path."""
    for name in values:
        if not _NAME.match(name):
            raise ConfigError(f"job secrets: {name!r} is not a valid environment variable name")
    directory = Path(directory)
    path = directory / f"{stem}-{_random.token_hex(6)}.json"
    temporary = directory / f".{path.name}.tmp"
    # O_EXCL: never an existing file (or a link planted in its place); 0600 from the first byte on
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            json.dump(dict(values), file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_secrets_file(path: str | Path) -> dict[str, str]:
    """The entries of a secrets file; a clear ConfigError when it is missing or not what we write."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"${SECRETS_FILE_ENV}: {path} does not exist (the stream finished, or was deleted)") from None
    except OSError as error:
        raise ConfigError(f"${SECRETS_FILE_ENV}: cannot read {path}: {error.strerror}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"${SECRETS_FILE_ENV}: {path} is not JSON ({error.msg})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"${SECRETS_FILE_ENV}: {path} is not text (not a secrets file we wrote)") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"${SECRETS_FILE_ENV}: {path} must hold one JSON object of strings")
    return data


def job_secret(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """``$NAME`` if set, else entry ``NAME`` of the file ``$PHOTONSTREAM_JOB_SECRETS_FILE`` names (None if neither)."""
    env = os.environ if environ is None else environ
    value = env.get(name)
    if value:
        return value
    path = env.get(SECRETS_FILE_ENV)
    if not path:
        return None
    return read_secrets_file(path).get(name) or None


def remove_secrets_file(path: str | Path | None) -> bool:
    """Delete a secrets file (True if one was deleted); a missing one is no error."""
    if not path:
        return False
    try:
        Path(path).unlink()
    except FileNotFoundError:
        return False
    return True
