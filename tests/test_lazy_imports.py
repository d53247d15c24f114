"""``photonstream run`` imports only what its pipeline uses.

Every plugin module is imported to build the pipeline config's schema, so a plugin's heavy dependency imported at
module level is paid by every run -- and a stream's start-up (request -> first frame) is mostly the job's imports.
Not a timing test: it checks which modules a run of a synthetic source loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Run ``photonstream run`` as ``python -m photonstream`` does, and write the loaded module names at exit.
_RUN_AND_LIST_MODULES = """
import atexit, json, runpy, sys
out, pipeline = sys.argv[1], sys.argv[2]
atexit.register(lambda: open(out, "w").write(json.dumps(sorted(sys.modules))))
sys.argv = ["photonstream", "run", pipeline, "--quiet"]
runpy.run_module("photonstream", run_name="__main__", alter_sys=True)
"""

PIPELINE = """
stream: {experiment: lazy001, run: 1}
source: {type: synthetic-diffraction, detector: custom, shape: [32, 32], events: 3, hit_fraction: 1.0}
steps: [{type: threshold, threshold: 1}]
handlers: [{type: "null"}]
"""

NOT_FOR_THIS_RUN = {
    "h5py": "the hdf5 serializer, hdf5 sources and the file handler",
    "hdf5plugin": "the same",
    "scipy": "the hitfinder step",
    "torch": "the training consumers",
    "psana": "the psana source",
    "numba": "nothing in a pipeline run",
    "fastapi": "the API service",
    "starlette": "the API service",
    "sqlalchemy": "the API's store",
    "uvicorn": "photonstream serve",
    "asyncio": "nothing here (zmq.utils.monitor imported it for the handshake watch)",
    "ssl": "a job that reports to the API",
    "http.server": "--metrics-port",
    "photonstream.api.app": "the API service",
    "photonstream.buffer.service": "photonstream buffer serve and the embedded buffer",
}


def _modules_of_a_run(tmp_path: Path) -> set[str]:
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    out = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _RUN_AND_LIST_MODULES, str(out), str(pipeline)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "completed; 3 events sent" in proc.stderr + proc.stdout
    return set(json.loads(out.read_text()))


def test_a_synthetic_run_does_not_import_other_plugins_dependencies_or_the_service(tmp_path: Path) -> None:
    modules = _modules_of_a_run(tmp_path)
    # the run really built and ran this pipeline (and listed every plugin to validate it)
    ran = {"photonstream.pipeline", "photonstream.sources.synthetic_diffraction", "photonstream.processing.threshold"}
    assert ran <= modules
    assert {"photonstream.serializers.hdf5", "photonstream.processing.hitfinder"} <= modules
    loaded = {
        name: needed_by
        for name, needed_by in NOT_FOR_THIS_RUN.items()
        if name in modules or any(m.startswith(name + ".") for m in modules)
    }
    assert not loaded, f"imported by a synthetic run, though only needed by: {loaded}"
