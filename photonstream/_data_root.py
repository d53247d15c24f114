"""Where a job may read files: ``$PHOTONSTREAM_DATA_ROOT``, which the API's launcher sets to the experiment's data
directory.

The API checks every path of a request before the stream is created (``api/binding.py``); sources and constant
loaders check again here, in the job, just before a file is opened, for what a request cannot show: an HDF5
external link, a symbolic link planted after the request, a glob or followed directory matching a file later.
Without the variable (a pipeline run by hand) nothing is checked.
"""

from __future__ import annotations

import os
from pathlib import Path

from photonstream.config.environment import DATA_ROOT_ENV


def outside_data_root(path: str | Path) -> str | None:
    """Why ``path`` may not be read (it resolves outside ``$PHOTONSTREAM_DATA_ROOT``), or None when it may."""
    root = os.environ.get(DATA_ROOT_ENV)
    if not root:
        return None
    allowed = Path(root).resolve()
    if Path(path).resolve().is_relative_to(allowed):
        return None
    return f"{path} is outside the data directory {allowed} (${DATA_ROOT_ENV})"
