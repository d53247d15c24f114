"""Running the whole-system demo: ``run_system_demo(DemoOptions(...), console)`` → ``DemoReport``.

Order of events (see the package docstring for the parts): the consumer processes start first (their imports take
seconds) while the CA, the buffer and the API come up; then alice's request goes through the typed client with
her certificate; the create response gives the buffer link (address, stream, CURVE credentials where the buffer
asks for them), which goes to the consumers; the job starts on the chosen backend; every second a progress line
(stream state, the buffer's intake, the merger's counts, the trainer's loss) until the stream has ended and every
consumer has reported. Everything is stopped in reverse order in any case, and the report says whether any
process it started is still alive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from photonstream.config.environment import THREAD_VARIABLES
from photonstream.errors import ConfigError, MissingDependencyError, PhotonstreamError
from photonstream.system_demo.pki import make_pki
from photonstream.system_demo.processes import RoleProcess, Roles, alive
from photonstream.system_demo.report import DemoReport, print_report
from photonstream.system_demo.services import api_settings, start_api
from photonstream.system_demo.verdict import keep_up_verdict, measure_throughput
from photonstream.transport.ports import free_tcp_port

EXPERIMENT = "demo00001"
USER = "alice"
XTAL_GROUP, TRAINER_GROUP, MONITOR_GROUP = "xtal", "trainer", "monitor"
READY_TIMEOUT_S = 120.0
IDLE_TIMEOUT_S = 120.0  # consumers give up after this long without a message
DRAIN_GRACE_S = 120.0  # after the planned duration, how long the analysis may take to finish

# Crystallography settings per detector. "small" (4 modules of 192 × 192 pixels, 200 µm, 3 Å) indexes a hit in
# ~10 ms on one core; the ePix10k2M (16 × 352 × 384, 2 Å) in ~30 ms, so two workers keep up with its ~12 hits/s
# at 120 Hz with room to spare, as long as they only get the hits' images (see stream_request).
DETECTORS: dict[str, dict[str, Any]] = {
    "small": {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
              "module_gap_px": 6, "resolution_limit_a": 3.0, "spot_photons": 300.0},
    "epix10k2m": {"detector": "epix10k2m", "resolution_limit_a": 2.0, "spot_photons": 300.0},
    "jungfrau4m": {"detector": "jungfrau4m", "resolution_limit_a": 2.0, "spot_photons": 300.0},
}  # fmt: skip
BACKENDS = ("local", "slurm")
BACKGROUND_BANK = 8  # frames' worth of pre-drawn background noise the source takes each frame's from
THUMBNAIL, THUMBNAIL_SIZE = "thumbnail", 64  # every frame's small picture: what the trainer learns from
MONITOR_SAMPLE_EVERY = 50  # one miss in this many keeps its full image (for the monitors)
STRUCTURE_EVERY_S, STRUCTURE_BUDGET_S = 5.0, 8.0  # merged data to the structure stage; its time per update
PUMP_PROBE_MOVE = {"move": "//A/62/CD1,CD2,NE1,CE2,CE3,CZ2,CZ3,CH2", "by": [1.5, 0.0, 0.0]}  # Trp62's rings, in Å


class DemoError(PhotonstreamError):
    """The demo could not run to its report. (500)"""


@dataclass(frozen=True)
class DemoOptions:
    duration_s: float = 20.0
    rate_hz: float = 120.0
    detector: str = "epix10k2m"
    workers: int = 2
    backend: str = "local"
    hit_fraction: float = 0.1
    seed: int = 42
    keep_running: bool = False
    show_progress: bool = True
    model: str = "1aki"  # the crystal's atomic model (a bundled name): the source's and the structure stage's
    pump_probe: bool = False  # alternate laser on/off with a moved Trp62 side chain: a light-dark map to find

    def __post_init__(self) -> None:
        if self.detector not in DETECTORS:
            raise ConfigError(f"--detector: {self.detector!r} is not one of {', '.join(DETECTORS)}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"--backend: {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.duration_s <= 0 or self.rate_hz <= 0:
            raise ConfigError("--duration and --rate: both must be positive")
        if self.workers < 1:
            raise ConfigError("--workers: at least one crystallography worker")
        from photonstream.sources._atomic_model import BUNDLED

        if self.model not in BUNDLED:
            raise ConfigError(f"--model: {self.model!r} is not one of the bundled models ({', '.join(BUNDLED)})")

    @property
    def events(self) -> int:
        return max(1, round(self.duration_s * self.rate_hz))


def stream_request(options: DemoOptions) -> dict[str, Any]:
    """alice's request: a synthetic serial-crystallography run, the hit finder on every frame, three groups.

    The veto pattern of facilities whose detectors outrun their analysis: the hit finder looks at every frame, a
    64 × 64 thumbnail (max-pooled) is made of every frame, and only hits, plus every ``MONITOR_SAMPLE_EVERY``-th
    miss for the monitors, travel with their image; the other misses travel as metadata (verdict, peaks, ground
    truth) and thumbnail. So every consumer still sees every event: the workers account for each one (indexing
    the hits), the trainer learns hit against miss from every frame's thumbnail (the very input it would pool from
    the full image), while the megabytes move only for ~12 frames a second, and those bitshuffle-LZ4 compressed
    (sparse photon counts: ~16× smaller, ~1 ms to compress, ~0.5 ms to decode). The background comes from a bank of
    pre-drawn Poisson noise at random offsets (``background_bank``): ~0.2 instead of ~1 ms of CPU per miss.
    """
    source = {"type": "synthetic-diffraction", **DETECTORS[options.detector], "events": options.events,
              "hit_fraction": options.hit_fraction, "rate_hz": options.rate_hz, "seed": options.seed,
              "background_bank": BACKGROUND_BANK, "model": options.model}  # fmt: skip
    if options.pump_probe:
        source.update(model_changes=[PUMP_PROBE_MOVE], laser_pattern="on,off")
    hitfinder = {"type": "hitfinder", "algorithm": "numpy", "min_peaks": 10, "threshold": 2.0, "min_snr": 5.0}
    thumbnail = {"type": "thumbnail", "array": "data", "output": THUMBNAIL, "size": THUMBNAIL_SIZE}
    veto = {"type": "veto", "arrays": ["data"], "keep_every": MONITOR_SAMPLE_EVERY}
    compress = {"type": "compress", "arrays": ["data"], "codec": "bslz4", "skip_missing": True}
    return {
        "experiment": EXPERIMENT,
        "runs": [1],
        "pipeline": {
            "source": source,
            "steps": [hitfinder, thumbnail, veto, compress],
            "serializer": {"type": "msgpack"},
        },
        "consumers": [
            {"name": XTAL_GROUP, "policy": "lossless"},
            {"name": TRAINER_GROUP, "policy": "lossless"},
            {"name": MONITOR_GROUP, "policy": "latest"},
        ],
        "job_backend": options.backend,
        "resources": {"time_limit_s": int(options.duration_s + DRAIN_GRACE_S + 300)},
    }


def pipeline_summary(options: DemoOptions) -> str:
    return (
        f"{options.detector} frames (background from a bank of {BACKGROUND_BANK} frames of Poisson noise) → hit "
        f"finder on every frame → {THUMBNAIL_SIZE}×{THUMBNAIL_SIZE} thumbnail of every frame → veto: misses "
        f"without their image, except one in {MONITOR_SAMPLE_EVERY} → bitshuffle-LZ4 on the images"
    )


def consumer_link(created: dict[str, Any]) -> dict[str, Any]:
    """The buffer link consumers need, from the create response (JSON): address, stream, credentials."""
    endpoint = created["data_endpoint"]
    address, credentials = str(endpoint["address"]), None
    try:
        from photonstream.buffer.credentials import Credentials
    except ImportError:  # a photonstream whose buffer has no credentials yet
        pass
    else:
        address, found = Credentials.from_endpoint(endpoint)
        if found is not None:
            credentials = {k: v for k, v in vars(found).items() if v is not None}
    return {"address": address, "stream": endpoint["streams"][0], "credentials": credentials}


class MonitorGroup:
    """The request's ``latest`` group, read in a thread here: when the first frame came, and the end message."""

    def __init__(self, link: dict[str, Any]) -> None:
        import zmq

        self.link = link
        self.first_frame_at: float | None = None
        self.frames_seen = 0
        self.end: Any = None
        self.error = ""
        self._context = zmq.Context()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-monitor-group", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import zmq

        from photonstream.frames import EndMessage, Frame, FrameBatch
        from photonstream.system_demo.roles import open_subscription

        try:
            subscription = open_subscription(self.link, MONITOR_GROUP, "latest", credit=1, timeout_s=IDLE_TIMEOUT_S,
                                             context=self._context)  # fmt: skip
            try:
                for message in subscription:
                    if isinstance(message, Frame | FrameBatch):
                        self.first_frame_at = self.first_frame_at or time.time()
                        self.frames_seen += len(message.frames) if isinstance(message, FrameBatch) else 1
                    elif isinstance(message, EndMessage):
                        self.end = message
                        break
                    if self._stop.is_set():
                        break
            finally:
                subscription.close()
        except zmq.ContextTerminated:
            pass
        except PhotonstreamError as exc:
            self.error = str(exc)
        finally:
            if not self._stop.is_set():
                self._context.term()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        threading.Thread(target=self._context.term, name="demo-monitor-stop", daemon=True).start()
        self._thread.join(timeout=5)


@dataclass
class DemoRun:
    """What a running demo holds (for cleanup and the report)."""

    options: DemoOptions
    console: Console
    roles: Roles
    root: Path  # the temporary directory: CA, API state, logs
    url: str = ""
    stream_id: str = ""
    job_id: str | None = None
    job_group: int | None = None
    requested_at: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def merger(self) -> RoleProcess:
        return self.roles.named("merger")

    @property
    def structure(self) -> RoleProcess:
        return self.roles.named("structure")

    @property
    def trainer(self) -> RoleProcess:
        return self.roles.named("trainer")

    @property
    def workers(self) -> list[RoleProcess]:
        return [process for process in self.roles.processes if process.role == "worker"]


def check_dependencies() -> None:
    """The consumers' optional packages, named before anything starts."""
    import importlib.util

    for module, package, extra, feature in (
        ("cctbx", "cctbx-base", "xtal", "the demo's crystallography workers"),
        ("torch", "torch", "torch", "the demo's hit-classifier trainer"),
    ):
        if importlib.util.find_spec(module) is None:
            raise MissingDependencyError.for_package(package, feature, extra)


def check_backend(name: str) -> None:
    """Slurm must answer before anything starts (ConfigError naming why not)."""
    if name != "slurm":
        return
    from photonstream.jobs.slurm import SlurmBackend

    with tempfile.TemporaryDirectory(prefix="photonstream-demo-") as state:
        available, why_not = SlurmBackend(state_dir=state).available()
    if not available:
        raise ConfigError(f"--backend slurm: no Slurm to run the job on ({why_not})")


def run_system_demo(options: DemoOptions, console: Console | None = None) -> DemoReport:
    """Run the demo to its report (see the module docstring); everything it started is stopped on return, also
    when it fails or is interrupted (Ctrl-C, SIGTERM), and then a line says whether anything is left."""
    console = console or Console(stderr=True)
    check_dependencies()
    check_backend(options.backend)
    began = time.time()
    root = Path(tempfile.mkdtemp(prefix="photonstream-demo-"))
    roles = Roles(root / "logs")
    run = DemoRun(options, console, roles, root)
    try:
        with terminate_as_interrupt(), single_threaded_libraries(), contextlib.ExitStack() as stack:
            stack.callback(shutil.rmtree, root, ignore_errors=True)
            stack.callback(roles.stop)
            report = demonstrate(run, stack, began)
    except BaseException:
        left = processes_left(run)["left"]
        console.print(f"stopped everything the demo started: {left or 'nothing left running'}")
        raise
    report.processes = processes_left(run)
    report.total_s = round(time.time() - began, 2)
    report.workdir = str(root)
    return report


@contextlib.contextmanager
def single_threaded_libraries() -> Iterator[None]:
    """The processes the demo starts (job, consumers) inherit one thread each for OpenMP and BLAS, unless the user
    set otherwise. A laptop runs six of them at once: a library spreading one call over every core only makes
    its threads spin waiting for each other (bitshuffle's OpenMP took 6× the CPU time of one thread here)."""
    names = THREAD_VARIABLES
    before = {name: os.environ.get(name) for name in names}
    for name in names:
        os.environ.setdefault(name, "1")
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here (so the demo cleans up as after Ctrl-C); the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def demonstrate(run: DemoRun, stack: contextlib.ExitStack, began: float) -> DemoReport:
    options, console, roles = run.options, run.console, run.roles
    roles.spawn("merge", "merger")
    for index in range(options.workers):
        roles.spawn("worker", f"worker-{index}")
    roles.spawn("trainer", "trainer")
    roles.spawn("structure", "structure")

    pki = make_pki(run.root, USER, EXPERIMENT)
    api_port = free_tcp_port()
    settings = api_settings(run.root / "state", pki, options.backend, api_port, free_tcp_port())
    api = start_api(settings, pki, api_port)
    stack.callback(api.stop)
    run.url = api.url
    say(run, f"[bold]photonstream demo[/]: API and dashboard on {api.url}/ui (CA {pki.ca_certificate}; "
             f"log in with the token in {pki.user_token}); buffer {settings.buffer_endpoint} (CURVE)")  # fmt: skip

    from photonstream.client.api import PhotonstreamClient

    client = PhotonstreamClient(api.url, cert=pki.user_certificate[0], key=pki.user_certificate[1],
                                ca=pki.ca_certificate)  # fmt: skip
    stack.callback(client.close)
    roles.wait_ready(READY_TIMEOUT_S)
    say(run, f"{USER} requests {options.events} {options.detector} frames at {options.rate_hz:g} Hz "
             f"(~{options.hit_fraction:.0%} hits), {options.workers} crystallography workers, a hit-classifier "
             f"trainer and a monitor group; the job runs on the {options.backend} backend")  # fmt: skip
    run.requested_at = time.time()
    created = client.create_stream(stream_request(options)).model_dump(mode="json")
    run.stream_id = str(created["id"])
    stack.callback(cancel_if_running, client, run)
    say(run, f"stream {run.stream_id} created; live on the dashboard at {api.url}/ui/streams/{run.stream_id}")
    link = consumer_link(created)
    start_consumers(run, link, created)
    monitor = MonitorGroup(link)
    stack.callback(monitor.stop)
    follow(run, client, monitor, api)
    report = build_report(run, client.get_stream(run.stream_id), monitor)
    report.results_channel = results_channel(client, run)
    if options.keep_running:
        report.total_s = round(time.time() - began, 2)
        print_report(report, console)
        say(run, f"[bold]--keep-running[/]: the dashboard stays at {api.url}/ui until Ctrl-C")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return report


def say(run: DemoRun, text: str) -> None:
    if run.options.show_progress:
        run.console.print(text, highlight=False)


def start_consumers(run: DemoRun, link: dict[str, Any], created: dict[str, Any]) -> None:
    results = f"tcp://127.0.0.1:{free_tcp_port()}"
    report_every = max(20, round(run.options.rate_hz / 2))
    snapshots = f"tcp://127.0.0.1:{free_tcp_port()}"
    run.structure.send({"bind": snapshots, "model": run.options.model, "out": str(run.root / "structure"),
                        "idle_timeout_s": IDLE_TIMEOUT_S + DRAIN_GRACE_S, "budget_s": STRUCTURE_BUDGET_S,
                        "group": "xtal-structure", "stream_info": created})  # fmt: skip
    run.merger.send({"bind": results, "workers": len(run.workers), "report_every": report_every,
                     "idle_timeout_s": IDLE_TIMEOUT_S, "group": XTAL_GROUP, "stream_info": created,
                     "structure": snapshots, "structure_every_s": STRUCTURE_EVERY_S})  # fmt: skip
    for index, worker in enumerate(run.workers):
        worker.send({"link": link, "group": XTAL_GROUP, "results": results, "worker_id": f"worker-{index}",
                     "idle_timeout_s": IDLE_TIMEOUT_S})  # fmt: skip
    run.trainer.send({"link": link, "group": TRAINER_GROUP, "policy": "lossless", "idle_timeout_s": IDLE_TIMEOUT_S,
                      "array": THUMBNAIL, "image_size": THUMBNAIL_SIZE})  # fmt: skip


def follow(run: DemoRun, client: Any, monitor: MonitorGroup, api: Any) -> None:
    """Print progress every second until the stream has ended and every consumer has reported."""
    deadline = run.requested_at + run.options.duration_s + DRAIN_GRACE_S + 60
    finished_at: float | None = None
    while True:
        stream = client.get_stream(run.stream_id)
        if stream.job_id and run.job_group is None:
            run.job_id = stream.job_id
            run.job_group = job_process_group(api, stream.job_backend, stream.job_id)
        detail = client.monitor_stream(run.stream_id)  # also what starts the dashboard's _monitor group
        say(run, progress_line(run, stream.state, detail))
        failed = run.roles.failed()
        if failed:
            raise DemoError("; ".join(f"{p.name}: {p.error}" for p in failed))
        if stream.state in ("failed", "cancelled"):
            raise DemoError(f"the stream {stream.state}: {stream.reason}")
        if stream.state == "completed":
            finished_at = finished_at or time.time()
            if run.roles.all_done():
                return
            if time.time() - finished_at > DRAIN_GRACE_S:
                waiting = [p.name for p in run.roles.processes if not p.done.is_set()]
                raise DemoError(f"the stream completed but {', '.join(waiting)} did not finish")
        if time.time() > deadline:
            raise DemoError(f"the demo did not finish within {deadline - run.requested_at:.0f} s of the request")
        time.sleep(1.0)


def progress_line(run: DemoRun, state: str, detail: dict[str, Any]) -> str:
    elapsed = time.time() - run.requested_at
    hops = [hop for hop in detail.get("hops", []) if hop.get("present")]
    received = sum(int(hop.get("in", 0)) for hop in hops)
    rate = sum(float(hop.get("rate_in", 0.0)) for hop in hops)
    lag = max((int(g.get("lag", 0)) for h in hops for g in h["groups"] if g["name"] == XTAL_GROUP), default=0)
    merged = run.merger.latest.get("progress", {})
    cc = run.merger.latest.get("report", {}).get("cc_reference")
    loss = run.trainer.latest.get("progress", {}).get("loss")
    parts = [
        f"{elapsed:5.1f} s  {state:<9}",
        f"buffer {received:6d} frames ({rate:5.0f}/s)",
        f"xtal {merged.get('frames', 0):6d} analysed, {merged.get('hits', 0):4d} hits, "
        f"{merged.get('indexed', 0):4d} indexed, lag {lag:4d}",
        f"CC {cc:.3f}" if isinstance(cc, float) else "CC –",
        f"trainer loss {loss:.3f}" if isinstance(loss, float) else "trainer –",
    ]
    return "  ".join(parts)


def job_process_group(api: Any, backend_name: str, job_id: str) -> int | None:
    backend = api.services.backends.get(backend_name)
    lookup = getattr(backend, "process_group", None)
    with contextlib.suppress(PhotonstreamError, LookupError):
        return lookup(job_id) if callable(lookup) else None
    return None


def cancel_if_running(client: Any, run: DemoRun) -> None:
    """Cancel the stream (its job) if it has not ended: after a failure or an interruption."""
    with contextlib.suppress(PhotonstreamError):
        if client.get_stream(run.stream_id).state not in ("completed", "failed", "cancelled"):
            client.cancel_stream(run.stream_id)


def processes_left(run: DemoRun) -> dict[str, Any]:
    """The processes the demo started, and any of them still alive (after everything was stopped)."""
    left: list[int | str] = [pid for pid in run.roles.pids if alive(pid)]
    if run.job_group is not None:
        from photonstream.jobs._shepherd import group_members

        left += group_members(run.job_group)
    elif run.options.backend == "slurm" and run.job_id and slurm_job_listed(run.job_id):
        left.append(f"slurm job {run.job_id}")
    return {"consumers": run.roles.pids, "job_process_group": run.job_group, "left": left}


def slurm_job_listed(job_id: str) -> bool:
    """Whether squeue still lists the job (pending, running or completing)."""
    import subprocess

    try:
        listed = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                                timeout=10, check=False)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return listed.returncode == 0 and bool(listed.stdout.strip())


def results_channel(client: Any, run: DemoRun) -> dict[str, Any]:
    """What the API's results channel holds for the stream: counts per kind and the newest rates."""
    published = int((run.merger.final or {}).get("published") or 0)
    deadline = time.monotonic() + 5.0  # the API collects results from the buffer every results_poll_s
    while True:
        items: list[Any] = []
        after: int | None = 0
        while after is not None:
            page = client.results(run.stream_id, after=after, limit=1000)
            items += page.items
            after = page.next_after
        if len(items) >= published or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    kinds: dict[str, int] = {}
    newest: dict[str, dict[str, Any]] = {}
    for item in items:
        kinds[item.kind] = kinds.get(item.kind, 0) + 1
        newest[item.kind] = item.data
    return {
        "results": len(items),
        "kinds": kinds,
        "hit_rate": newest.get("hit_rate", {}).get("rate"),
        "indexing_rate": newest.get("indexing_rate", {}).get("rate"),
    }


def _seconds_after(moment: float | None, start: float) -> float | None:
    return None if moment is None else round(moment - start, 3)


def build_report(run: DemoRun, stream: Any, monitor: MonitorGroup) -> DemoReport:
    options = run.options
    final = run.merger.final or {}
    merged = final.get("report") or {}
    workers = [w.final or {} for w in run.workers]
    frames = int(merged.get("frames") or 0)
    first_frames = [t for t in [monitor.first_frame_at, *(w.get("first_received_at") for w in workers)] if t]
    report = DemoReport(
        stream_id=run.stream_id,
        state=stream.state,
        reason=stream.reason,
        backend=stream.job_backend,
        job_id=stream.job_id,
        detector=options.detector,
        rate_hz=options.rate_hz,
        duration_s=options.duration_s,
        events_requested=options.events,
        dashboard=f"{run.url}/ui/streams/{run.stream_id}",
        frames_sent=None if monitor.end is None else int(monitor.end.events_sent),
        frames_analysed=frames,
        pipeline=pipeline_summary(options),
        monitor_frames=monitor.frames_seen,
        hits=int(merged.get("hits_found") or 0),
        hit_rate=round(merged["hits_found"] / frames, 4) if frames else None,
        true_hit_fraction=round(merged["true_hits"] / frames, 4) if frames else None,
        indexed=int(merged.get("indexed") or 0),
        indexing_rate=merged.get("indexing_rate"),
        indexed_per_hit=merged.get("indexed_per_hit_found"),
        cc=merged.get("cc_reference"),
        cc_reflections=int(merged.get("cc_reflections") or 0),
        unique_reflections=int(merged.get("unique_reflections") or 0),
        mean_multiplicity=merged.get("mean_multiplicity"),
        cell=(merged.get("cell") or {}).get("mean"),
        first_frame_s=_seconds_after(min(first_frames), run.requested_at) if first_frames else None,
        first_result_s=_seconds_after(final.get("first_result_at"), run.requested_at),
        first_indexed_s=_seconds_after(final.get("first_indexed_at"), run.requested_at),
        trainer=run.trainer.final and {k: v for k, v in run.trainer.final.items() if k not in ("type", "at")},
        problems=[*run.problems, *(f"{p.name}: {w}" for p in run.roles.processes for w in p.warnings)],
    )
    received = [w.get("frames_received") for w in workers]
    vetoed = [w.get("frames_vetoed") for w in workers]
    if workers and all(isinstance(n, int) for n in received + vetoed):
        report.frames_vetoed = sum(vetoed)
        report.frames_whole = sum(received) - report.frames_vetoed
    speed = measure_throughput(frames, workers, final)
    report.acquisition_fps, report.analysis_fps = speed.acquisition_fps, speed.analysis_fps
    report.end_to_end_fps, report.drain_s, report.analysis_lag_frames = speed.end_to_end_fps, speed.drain_s, speed.lag
    verdict = keep_up_verdict(rate_asked_hz=options.rate_hz, acquisition_fps=speed.acquisition_fps,
                              frames_asked=options.events, frames_sent=report.frames_sent, frames_analysed=frames,
                              drain_s=speed.drain_s, lag_frames=speed.lag)  # fmt: skip
    report.keeps_up, report.rate_reached, report.keeps_up_text = verdict.keeps_up, verdict.rate_reached, verdict.text
    report.analysis_kept_pace = verdict.analysis_kept_pace
    created_last = [w["last_created_at"] for w in workers if w.get("last_created_at")]
    report.model = options.model
    report.add_crystallography(final, run.structure.final or {}, max(created_last) if created_last else None,
                               final.get("first_indexed_at"))  # fmt: skip
    medians = sorted(w["latency_p50_ms"] for w in workers if w.get("latency_p50_ms") is not None)
    report.latency_p50_ms = medians[len(medians) // 2] if medians else None
    if monitor.error:
        report.problems.append(f"monitor group: {monitor.error}")
    return report
