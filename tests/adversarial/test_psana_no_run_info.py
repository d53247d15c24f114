"""An XTC2 run without a runinfo record (legal: psana reports no experiment and no run number) is read like any
other: its run is the configured one, or 0 for files named directly. (Was: a raw TypeError at int(run.runnum).)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("psana", reason="needs psana (pip install 'photonstream[psana]')")

from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import Pipeline
from photonstream.sources.base import registry as sources
from photonstream.testing.xtc2 import write_xtc2_experiment, write_xtc2_run

pytestmark = [pytest.mark.psana, pytest.mark.timeout(60)]

EVENTS = 5
SHAPE = (8, 16)


def read_all(**options: object) -> tuple[dict[str, object], list[dict[str, object]], list[np.ndarray]]:
    source = sources.get("psana")(sources.get("psana").Options(**options))
    try:
        info = source.open()
        frames = list(source.events())
    finally:
        source.close()
    return info.details, [f.metadata for f in frames], [f.arrays["data"] for f in frames]


def test_a_file_without_run_info_reads_as_run_0(tmp_path: Path) -> None:
    written = write_xtc2_run(tmp_path / "norun.xtc2", EVENTS, SHAPE, np.uint16, "jungfrau", run_info=False)
    details, metadata, data = read_all(files=[str(written.path)], detector="jungfrau")
    assert (details["run"], details["experiment"]) == (0, "")
    assert [m["psana_run"] for m in metadata] == [0] * EVENTS
    assert all(np.array_equal(array, written.event(i)["image"]) for i, array in enumerate(data))


def test_an_experiment_run_without_run_info_is_the_configured_run(tmp_path: Path) -> None:
    written = write_xtc2_experiment(
        tmp_path / "exp", EVENTS, shape=SHAPE, dtype=np.uint16, detector="jungfrau", experiment="tstx00119", run=7,
        run_info=False,
    )  # fmt: skip
    details, metadata, _ = read_all(exp="tstx00119", run=7, dir=str(written.path.parent), detector="jungfrau")
    assert (details["run"], details["experiment"]) == (7, "tstx00119")
    assert [m["psana_run"] for m in metadata] == [7] * EVENTS


def test_a_pipeline_streams_a_file_without_run_info_to_the_end(tmp_path: Path) -> None:
    written = write_xtc2_run(tmp_path / "norun.xtc2", EVENTS, SHAPE, np.float32, "simcam", "generic", run_info=False)
    config = validate_pipeline(
        {
            "stream": {"experiment": "tstx00117", "run": 3, "stream_id": "norun"},
            "source": {"type": "psana", "files": [str(written.path)], "detector": "simcam",
                       "fields": {"data": "xtc1dump.image"}},
            "handlers": [{"type": "null"}],
        }
    )  # fmt: skip
    end = Pipeline(config).run()
    assert (end.reason, end.events_sent) == ("completed", EVENTS)
