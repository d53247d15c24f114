"""The built-in worker kinds (``pull``, ``xtal``, ``tof``) end to end through the API: a stream request with a pool
of each, the embedded CURVE buffer, real local jobs, the launcher stepped by hand. The workers read with the
credential the pool hands them as the job secret PHOTONSTREAM_BUFFER_CREDENTIALS (a 0600 file their environment
names; nothing else would let them into the buffer), so these tests cover that fallback of ``photonstream consume``,
``photonstream xtal worker`` and ``photonstream tof``; the pull test also runs ``consume`` with the credential in
the environment variable itself, and without it. Each checks numbers against what the source made: every frame
of the lossless group handled once across the workers, true hits indexed, m/q peaks at the configured species,
results in the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

from photonstream.buffer.credentials import CREDENTIALS_ENV, Credentials
from tests.api.harness import ApiHarness, Pki, stream_request
from tests.api.test_pools import close_api, make_api, pools_of, step_while

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
FAST_POOL = {"min_workers": 1, "target_lag": 1000, "scale_up_cooldown_s": 60.0, "scale_down_cooldown_s": 60.0,
             "stop_grace_s": 30.0, "interval_s": 0.2}  # fmt: skip


@pytest.fixture()
def kinds_api(pki: Pki, tmp_path: Path) -> Any:
    harness = make_api(pki, tmp_path)
    yield harness
    close_api(harness)


def create(api: ApiHarness, source: dict[str, Any], pool: dict[str, Any], groups: list[str]) -> dict[str, Any]:
    body = stream_request(
        pipeline={"source": source},
        consumers=[{"name": name, "policy": "lossless"} for name in groups],
        worker_pools=[{**FAST_POOL, **pool}],
    )
    created = api.client(cert="alice").post("/v1/streams", json=body)
    assert created.status_code == 201, created.text
    return dict(created.json())


def run_to_the_end(api: ApiHarness, stream_id: str, timeout: float = 120.0) -> list[dict[str, Any]]:
    """Step the launcher until the stream completed and its pool stopped; the pool's events."""
    alice = api.client(cert="alice")

    def running() -> bool:
        state = alice.get(f"/v1/streams/{stream_id}").json()["state"]
        assert state not in ("failed", "cancelled"), alice.get(f"/v1/streams/{stream_id}").json()["reason"]
        return state != "completed" or pools_of(api, stream_id)["pools"][0]["state"] != "stopped"

    step_while(api, running, "the stream to complete and its pool to stop", timeout)
    return list(pools_of(api, stream_id)["events"])


def worker_jobs(events: list[dict[str, Any]]) -> list[str]:
    return sorted({job for event in events for job in event["jobs"]})


def json_lines(api: ApiHarness, job_id: str) -> list[dict[str, Any]]:
    """The JSON objects a worker printed (one per line) in its log."""
    text = api.services().backends.get("local").logs(job_id)
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def results_of(api: ApiHarness, stream_id: str, kind: str, count: int) -> list[dict[str, Any]]:
    """The stream's results of ``kind`` served by the API, once there are ``count`` (collected from the buffer)."""
    alice, link = api.client(cert="alice"), api.services().launcher.link
    found: list[dict[str, Any]] = []

    def missing() -> bool:
        link.collect_results()
        found[:] = alice.get(f"/v1/streams/{stream_id}/results", params={"kind": kind, "limit": 1000}).json()["items"]
        return len(found) < count

    step_while(api, missing, f"{count} {kind} result(s) in the API", 20)
    return found


def assert_every_worker_ended_on_its_own(api: ApiHarness, events: list[dict[str, Any]], workers: int) -> None:
    jobs = worker_jobs(events)
    assert len(jobs) == workers, events
    backend = api.services().backends.get("local")
    assert {backend.status(job).state.value for job in jobs} == {"completed"}
    assert events[-1]["action"] == "stopped" and events[-1]["detail"] == "every worker ended", events[-1]


# --- pull: photonstream consume --------------------------------------------------------------------------------


def test_a_pull_pool_reads_every_frame_of_its_group_once(kinds_api: ApiHarness) -> None:
    events = 60
    source = {"type": "synthetic-diffraction", "detector": "custom", "shape": [8, 8], "events": events,
              "rate_hz": 30.0, "seed": 3}  # fmt: skip
    created = create(kinds_api, source, {"name": "readers", "group": "workers", "kind": "pull", "min_workers": 2,
                                         "max_workers": 2}, ["workers", "audit"])  # fmt: skip
    stream_id, address = created["id"], created["data_endpoint"]["streams"][0]
    history = run_to_the_end(kinds_api, stream_id)
    assert_every_worker_ended_on_its_own(kinds_api, history, 2)

    summaries = [json_lines(kinds_api, job)[-1] for job in worker_jobs(history)]
    assert all(s["stream"] == address and s["group"] == "workers" and s["ended"] for s in summaries), summaries
    assert sum(s["messages"] for s in summaries) == events  # across the two workers, every frame ...
    assert all(s["redelivered"] == 0 and s["duplicates_dropped"] == 0 for s in summaries), summaries  # ... once
    group = kinds_api.services().launcher.link.stats()["streams"][address]["groups"]["workers"]
    assert group["lag"] == 0, group
    workdir = Path(kinds_api.services().streams.get(stream_id).workdir) / "pools"
    left = [path.name for path in workdir.iterdir() if "secret_key" in path.read_text(errors="replace")]
    assert left == [], left  # the workers' secrets file is gone with them, and no log shows the credential

    # the same fallback by hand: the stream's consumer credential in the environment reads the other group; without
    # it the CURVE buffer never answers and consume says so
    endpoint, credential = Credentials.from_endpoint(created)
    assert credential is not None
    command = [sys.executable, "-m", "photonstream", "consume", endpoint, address, "--group", "audit", "--json",
               "--timeout-s", "20"]  # fmt: skip
    environment = {**os.environ, CREDENTIALS_ENV: credential.to_json()}
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["messages"] == events
    environment.pop(CREDENTIALS_ENV)
    command[command.index("--timeout-s") + 1] = "2"
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode != 0 and "error" in done.stderr.lower(), (done.returncode, done.stderr)


# --- tof: photonstream tof ------------------------------------------------------------------------------------


def test_a_tof_pool_finds_the_species_and_publishes_its_histograms(kinds_api: ApiHarness) -> None:
    from photonstream.consumers.tof import TofAnalyzer
    from photonstream.frames import StartMessage
    from photonstream.sources.synthetic_tof import DEFAULT_SPECIES, SyntheticTof, SyntheticTofOptions

    events = 80
    options = {"events": events, "seed": 5, "samples": 9000, "ions_per_shot": 4.0}
    created = create(kinds_api, {"type": "synthetic-tof", "rate_hz": 40.0, **options},
                     {"name": "tof", "group": "tof", "kind": "tof", "min_workers": 2, "max_workers": 2,
                      "options": {"batch_size": "16"}}, ["tof"])  # fmt: skip
    stream_id = created["id"]
    history = run_to_the_end(kinds_api, stream_id)
    assert_every_worker_ended_on_its_own(kinds_api, history, 2)

    truth = SyntheticTof(SyntheticTofOptions(**options))
    info = truth.open()
    frames = list(truth.events())
    arrivals = 0  # ions of one species in one shot arrive within the jitter: one pulse
    for frame in frames:
        times = np.sort(np.asarray(frame.metadata["true_times_ns"]))
        arrivals += int((np.diff(times) > 3.0).sum()) + 1 if times.size else 0
    reference = TofAnalyzer(start=StartMessage(stream_id="tof", source=info.details)).process(frames).hits

    summaries = [json_lines(kinds_api, job)[-1] for job in worker_jobs(history)]
    assert sum(s["events"] for s in summaries) == events, summaries  # every shot analysed once across the workers
    hits = sum(s["hits"] for s in summaries)
    assert hits == reference, (hits, reference)  # what one analyser finds in the whole run, shot for shot
    assert abs(hits - arrivals) <= 0.02 * arrivals, (hits, arrivals)

    results = results_of(kinds_api, stream_id, "tof_histogram", 2)
    assert len(results) == 2 and {r["worker"] for r in results} == {s["worker"] for s in summaries}
    species = sorted(s.mq for s in DEFAULT_SPECIES)
    by_worker = {s["worker"]: s for s in summaries}
    for result in results:
        summary = by_worker[result["worker"]]
        assert result["group"] == "tof" and result["data"]["quantity"] == "mq"
        assert result["publisher"].startswith("curve:")  # the pool's worker credential, from the environment
        assert sum(result["data"]["counts"]) == summary["hits"]
        for peak in result["data"]["peaks"]:  # every peak is a species (a rare one may miss a worker's share)
            nearest = min(species, key=lambda mq, peak=peak: abs(mq - peak))
            assert abs(peak - nearest) <= 1e-3 * nearest, (peak, species)
    found = {min(species, key=lambda mq, p=p: abs(mq - p)) for r in results for p in r["data"]["peaks"]}
    assert found == set(species), (found, species)


# --- xtal: photonstream xtal worker, with the merger the request's results option points at --------------------

XTAL_DETECTOR = {"detector": "custom", "shape": [4, 192, 192], "pixel_size_m": 200e-6, "module_grid": [2, 2],
                 "module_gap_px": 6, "resolution_limit_a": 3.0, "spot_photons": 300.0}  # fmt: skip


def beside_a_merger(arguments: list[str], run: Callable[[], T]) -> T:
    """``run()`` with ``python -m photonstream.consumers.xtal merge ARGUMENTS`` running beside it; its result, once
    the merger exited 0 (it is killed if it outlives the test)."""
    merger = subprocess.Popen([sys.executable, "-m", "photonstream.consumers.xtal", "merge", *arguments], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        outcome = run()
        _, merger_errors = merger.communicate(timeout=60)
    finally:
        if merger.poll() is None:
            merger.kill()
            merger.wait()
    assert merger.returncode == 0, merger_errors
    return outcome


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_an_xtal_pool_indexes_the_true_hits_and_the_merged_results_reach_the_api(
    kinds_api: ApiHarness, tmp_path: Path
) -> None:
    pytest.importorskip("cctbx")
    from photonstream.sources.synthetic_diffraction import SyntheticDiffraction, SyntheticDiffractionOptions

    events, seed = 16, 4
    source = {
        "type": "synthetic-diffraction",
        **XTAL_DETECTOR,
        "events": events,
        "hit_fraction": 0.5,
        "seed": seed,
        "rate_hz": 10.0,
    }
    results = f"tcp://127.0.0.1:{free_port()}"
    created = create(kinds_api, source,
                     {"name": "indexers", "group": "xtal", "kind": "xtal", "min_workers": 2, "max_workers": 2,
                      "options": {"results": results}}, ["xtal"])  # fmt: skip
    stream_id = created["id"]
    info = tmp_path / "created.json"
    info.write_text(json.dumps(created))
    report = tmp_path / "merged.json"
    arguments = ["--bind", results, "--workers", "2", "--publish", str(info), "--report", str(report),
                 "--report-every", "1000", "--idle-timeout", "120"]  # fmt: skip
    history = beside_a_merger(arguments, lambda: run_to_the_end(kinds_api, stream_id, timeout=180))
    assert_every_worker_ended_on_its_own(kinds_api, history, 2)

    truth = SyntheticDiffraction(SyntheticDiffractionOptions(**{k: v for k, v in source.items() if k != "type"}))
    truth.open()
    true_hits = sum(bool(frame.metadata["true_hit"]) for frame in truth.events())
    assert 0 < true_hits < events

    summaries = [json_lines(kinds_api, job)[-1] for job in worker_jobs(history)]
    assert sum(s["frames"] for s in summaries) == events, summaries  # every frame once across the two workers
    merged = json.loads(report.read_text())
    assert merged["workers_missing"] == [] and len(merged["workers"]) == 2
    final = merged["report"]
    assert final["frames"] == events and final["true_hits"] == true_hits
    assert final["indexed"] == sum(s["indexed"] for s in summaries) and final["indexed"] >= 0.7 * true_hits, final
    assert final["hits_found"] == sum(s["hits"] for s in summaries)

    # the merger's results, published with the stream's consumer credential, reach the API
    (hit_rate,) = [r for r in results_of(kinds_api, stream_id, "hit_rate", 1) if r["data"]["frames"] == events]
    assert hit_rate["data"]["hits"] == final["hits_found"] and hit_rate["worker"] == "merger"
    indexing = results_of(kinds_api, stream_id, "indexing_rate", 1)[-1]
    assert (indexing["data"]["frames"], indexing["data"]["indexed"]) == (final["hits_found"], final["indexed"])
    cell = results_of(kinds_api, stream_id, "unit_cell", 1)[-1]["data"]
    true_cell = truth.cell
    np.testing.assert_allclose([cell["a"], cell["b"], cell["c"]], [true_cell.a, true_cell.b, true_cell.c], rtol=0.01)
