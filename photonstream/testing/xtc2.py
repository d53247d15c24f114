"""Write realistic LCLS-II XTC2 runs with ``psana.dgramedit``, for tests and benchmarks.

Two detector layouts are available:

- ``fakecam``: the teststand camera type psana ships (``fakecam`` / algorithm ``raw`` 2.0.0, one field
  ``array_raw``), read back with the usual area-detector call ``det.raw.raw(evt)``.
- ``generic``: a ``generic_container`` with algorithm ``xtc1dump`` 0.1.0, where each field has its own
  reader (``det.xtc1dump.image(evt)``, ``det.xtc1dump.photon_energy(evt)``, ``det.xtc1dump.waveform(evt)``).

Every event's content is a pure function of ``(seed, event index)``, so a test regenerates what it expects
with ``Xtc2Run.event(i)`` instead of keeping hundreds of megabytes in memory::

    run = write_xtc2_run(tmp_path / "r1.xtc2", events=20, shape=(64, 128), dtype=np.uint16)
    expected = run.event(0)["image"]

``write_xtc2_experiment`` writes psana's experiment-directory layout (big-data file plus its
``smalldata/*.smd.xtc2`` index) for reading with ``exp=``/``run=``/``dir=``.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from photonstream.sources._xtc2 import EPICS_EPOCH_UNIX_S, to_unix_seconds

Layout = Literal["fakecam", "generic"]

DEFAULT_START_UNIX_S = 1_767_225_600  # 2026-01-01T00:00:00Z
MAX_EVENT_BYTES = 60_000_000  # dgramedit's default transition buffer is 64 MB
WAVEFORM_DETECTOR = "tof"  # the waveform's detector in the fakecam layout (generic keeps it on the camera)
SUPPORTED_DTYPES = (np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64)


def to_psana_timestamp(unix_ns: int) -> int:
    """Unix nanoseconds → psana's 64-bit timestamp (seconds since 1990 << 32 | nanoseconds)."""
    seconds, nanoseconds = divmod(unix_ns, 1_000_000_000)
    return ((seconds - EPICS_EPOCH_UNIX_S) << 32) | nanoseconds


@dataclasses.dataclass(frozen=True)
class Xtc2Run:
    """A run written by ``write_xtc2_run``: where it is, what it holds, and how to regenerate each event."""

    path: Path
    experiment: str
    run: int
    detector: str
    layout: Layout
    shape: tuple[int, ...]
    dtype: np.dtype
    events: int
    seed: int
    waveform_samples: int | None
    timestamps: tuple[int, ...]  # psana timestamps of the L1Accept events, in order
    smd_path: Path | None = None
    waveform_every: int = 1  # fakecam layout: the tof digitizer reads out every n-th event only

    @property
    def fields(self) -> dict[str, str]:
        """The ``psana`` source's ``fields`` option that reads back everything this run holds."""
        if self.layout == "fakecam":
            out = {"data": "raw.raw"}
            if self.waveform_samples:
                out["waveform"] = f"{WAVEFORM_DETECTOR}:xtc1dump.waveform"
            return out
        out = {"data": "xtc1dump.image", "photon_energy": "xtc1dump.photon_energy"}
        if self.waveform_samples:
            out["waveform"] = "xtc1dump.waveform"
        return out

    def event(self, index: int) -> dict[str, Any]:
        """What event ``index`` holds: ``image`` (and ``photon_energy``, ``waveform`` where written)."""
        if not 0 <= index < self.events:
            raise IndexError(f"event {index} is outside the run's {self.events} events")
        content = event_content(self.seed, index, self.shape, self.dtype, self.waveform_samples)
        if self.layout == "fakecam":
            content.pop("photon_energy")
            if index % self.waveform_every:
                content.pop("waveform", None)
        return content

    def unix_seconds(self, index: int) -> float:
        return to_unix_seconds(self.timestamps[index])


def event_content(
    seed: int, index: int, shape: tuple[int, ...], dtype: np.dtype, waveform_samples: int | None
) -> dict[str, Any]:
    """Deterministic content of one event: a detector image with Bragg-like peaks on a low background, the
    photon energy (eV) and, optionally, a digitizer waveform with two pulses on noise."""
    rng = np.random.default_rng((seed, index))
    if np.issubdtype(dtype, np.integer):
        image = rng.poisson(0.8, size=shape).astype(dtype)
        peak_value = min(1500, np.iinfo(dtype).max)
    else:
        image = rng.standard_normal(size=shape, dtype=np.float64 if dtype == np.float64 else np.float32)
        image = image.astype(dtype, copy=False)
        peak_value = 1500.0
    flat = image.reshape(-1)
    flat[rng.integers(0, flat.size, size=20)] = peak_value
    content: dict[str, Any] = {"image": image, "photon_energy": float(9500.0 + rng.normal(0.0, 5.0))}
    if waveform_samples:
        t = np.arange(waveform_samples, dtype=np.float32)
        wave = rng.standard_normal(waveform_samples, dtype=np.float32)
        for centre in rng.uniform(0.1, 0.9, size=2) * waveform_samples:
            wave += np.float32(50.0) * np.exp(-0.5 * ((t - np.float32(centre)) / np.float32(8.0)) ** 2)
        content["waveform"] = wave
    return content


def write_xtc2_run(
    path: str | Path,
    events: int,
    shape: tuple[int, ...] = (512, 1024),
    dtype: Any = np.float32,
    detector: str = "fakecam",
    layout: Layout = "fakecam",
    seed: int = 0,
    waveform_samples: int | None = None,
    waveform_every: int = 1,
    experiment: str = "tstx00117",
    run: int = 1,
    rate_hz: float = 120.0,
    start_unix_s: int = DEFAULT_START_UNIX_S,
    run_info: bool = True,
) -> Xtc2Run:
    """Write one XTC2 file: Configure, BeginRun (with runinfo), BeginStep, Enable, ``events`` L1Accepts,
    Disable, EndStep, EndRun. Returns the description needed to check what a reader gets back.

    ``run_info=False`` leaves the runinfo record out (legal: psana then reports no experiment and no run number).

    ``waveform_samples`` adds a digitizer waveform (fakecam layout: on a second detector, ``tof``, which reads
    out only every ``waveform_every``-th event, as slower detectors do)."""
    from psana.dgramedit import AlgDef, DetectorDef, DgramEdit
    from psana.psexp import TransitionId

    dtype = np.dtype(dtype)
    if dtype.type not in SUPPORTED_DTYPES:
        names = ", ".join(np.dtype(t).name for t in SUPPORTED_DTYPES)
        raise ValueError(f"dtype {dtype.name} is not supported; use one of {names}")
    if waveform_every < 1 or (waveform_every > 1 and layout != "fakecam"):
        raise ValueError("waveform_every must be >= 1, and above 1 only in the fakecam layout")
    if layout not in ("fakecam", "generic"):
        raise ValueError(f"layout must be 'fakecam' or 'generic', got {layout!r}")
    shape = tuple(int(n) for n in shape)
    event_bytes = int(np.prod(shape)) * dtype.itemsize + 4 * (waveform_samples or 0)
    if event_bytes > MAX_EVENT_BYTES:
        raise ValueError(f"one event would hold {event_bytes} bytes; the writer's limit is {MAX_EVENT_BYTES}")

    start_ns = int(start_unix_s) * 1_000_000_000
    period_ns = round(1e9 / rate_hz)
    event_ts = tuple(to_psana_timestamp(start_ns + i * period_ns) for i in range(events))
    before = to_psana_timestamp(start_ns - 4 * period_ns)
    after = to_psana_timestamp(start_ns + events * period_ns)

    config = DgramEdit(transition_id=TransitionId.Configure, ts=before)
    wave_fields = {"waveform": (np.float32, 1)} if waveform_samples else {}
    if layout == "fakecam":
        camera = config.Detector(
            DetectorDef(detector, "fakecam", "det001"),
            AlgDef("raw", 2, 0, 0),
            {"array_raw": (dtype.type, len(shape))},
            nodeId=1,
            namesId=0,
        )
        camera_data = camera.raw
        wave_data = None
        if waveform_samples:
            tof = config.Detector(
                DetectorDef(WAVEFORM_DETECTOR, "generic_container", "det002"),
                AlgDef("xtc1dump", 0, 1, 0),
                wave_fields,
                nodeId=1,
                namesId=1,
            )
            wave_data = tof.xtc1dump
    else:
        camera = config.Detector(
            DetectorDef(detector, "generic_container", "det001"),
            AlgDef("xtc1dump", 0, 1, 0),
            {"image": (dtype.type, len(shape)), "photon_energy": (np.float64, 0), **wave_fields},
            nodeId=1,
            namesId=0,
        )
        camera_data = camera.xtc1dump
        wave_data = camera_data if waveform_samples else None
    runinfo = None
    if run_info:
        runinfo = config.Detector(
            DetectorDef("runinfo", "runinfo", ""),
            AlgDef("runinfo", 0, 0, 1),
            {"expt": (str, 1), "runnum": (np.uint32, 0)},
            nodeId=1,
            namesId=2,
        )

    out = Path(path)
    buffer = bytearray(event_bytes + 1_000_000)
    view = memoryview(buffer)
    with out.open("wb") as f:

        def put(dgram: Any) -> None:
            dgram.save(buffer)
            f.write(view[: dgram.size])

        put(config)
        begin_run = DgramEdit(transition_id=TransitionId.BeginRun, config_dgramedit=config, ts=before + 1)
        if runinfo is not None:
            runinfo.runinfo.expt = experiment
            runinfo.runinfo.runnum = run
            begin_run.adddata(runinfo.runinfo)
        put(begin_run)
        put(DgramEdit(transition_id=TransitionId.BeginStep, config_dgramedit=config, ts=before + 2))
        put(DgramEdit(transition_id=TransitionId.Enable, config_dgramedit=config, ts=before + 3))
        for i in range(events):
            content = event_content(seed, i, shape, dtype, waveform_samples)
            dgram = DgramEdit(transition_id=TransitionId.L1Accept, config_dgramedit=config, ts=event_ts[i])
            if layout == "fakecam":
                camera_data.array_raw = content["image"]
            else:
                camera_data.image = content["image"]
                camera_data.photon_energy = content["photon_energy"]
            if wave_data is not None:
                wave_data.waveform = content["waveform"]
            dgram.adddata(camera_data)
            if wave_data is not None and wave_data is not camera_data and i % waveform_every == 0:
                dgram.adddata(wave_data)
            put(dgram)
        closing = (TransitionId.Disable, TransitionId.EndStep, TransitionId.EndRun)
        for offset, transition in enumerate(closing):
            put(DgramEdit(transition_id=transition, config_dgramedit=config, ts=after + offset))
    return Xtc2Run(
        path=out,
        experiment=experiment,
        run=run,
        detector=detector,
        layout=layout,
        shape=shape,
        dtype=dtype,
        events=events,
        seed=seed,
        waveform_samples=waveform_samples,
        timestamps=event_ts,
        waveform_every=waveform_every,
    )


def smdwriter_path() -> Path:
    """The ``smdwriter`` program the psana wheel installs (under ``site-packages/bin``)."""
    import psana

    bundled = Path(psana.__file__).resolve().parent.parent / "bin" / "smdwriter"
    found = bundled if bundled.is_file() else shutil.which("smdwriter")
    if not found:
        raise FileNotFoundError("psana's smdwriter program is neither next to the psana package nor on PATH")
    return Path(found)


def write_xtc2_experiment(directory: str | Path, events: int, **kwargs: Any) -> Xtc2Run:
    """Write psana's experiment layout: ``<dir>/<exp>-r<run>-s000-c000.xtc2`` and its small-data index
    ``<dir>/smalldata/<exp>-r<run>-s000-c000.smd.xtc2``. Keyword arguments are those of ``write_xtc2_run``."""
    directory = Path(directory)
    experiment = kwargs.get("experiment", "tstx00117")
    run_number = kwargs.get("run", 1)
    stem = f"{experiment}-r{run_number:04d}-s000-c000"
    (directory / "smalldata").mkdir(parents=True, exist_ok=True)
    written = write_xtc2_run(directory / f"{stem}.xtc2", events, **kwargs)
    smd_path = directory / "smalldata" / f"{stem}.smd.xtc2"
    with tempfile.TemporaryDirectory(dir=directory) as work:  # smdwriter writes ./smd.xtc2
        subprocess.run(
            [str(smdwriter_path()), "-f", str(written.path.resolve())],
            cwd=work,
            check=True,
            capture_output=True,
            timeout=120,
        )
        Path(work, "smd.xtc2").replace(smd_path)
    return dataclasses.replace(written, smd_path=smd_path)
