"""Crystallography to a structure through the service: a 1AKI run, a pool of ``xtal`` workers, the merger (run by
the user, offering its merged data with --structure-bind) and the service's own ``structure`` stage (a single-worker
pool of the built-in kind), then GET /v1/streams/{id}/merging, /structure and the MTZ and maps it wrote, with the
stream's authorization. Real buffer (CURVE), real local jobs, cctbx and gemmi reading the files back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.harness import ApiHarness, Pki, stream_request
from tests.api.test_pool_kinds import FAST_POOL, XTAL_DETECTOR, beside_a_merger, free_port, results_of
from tests.api.test_pools import close_api, make_api, pools_of, step_while

pytest.importorskip("cctbx")
gemmi = pytest.importorskip("gemmi")

EVENTS = 120
LYSOZYME_CELL = (59.06, 68.45, 30.52)


def run_to_the_end(api: ApiHarness, stream_id: str, timeout: float) -> list[dict[str, Any]]:
    """Step the launcher until the stream completed and every pool of it stopped; the pools' events."""
    alice = api.client(cert="alice")

    def running() -> bool:
        shown = alice.get(f"/v1/streams/{stream_id}").json()
        assert shown["state"] not in ("failed", "cancelled"), shown["reason"]
        pools = pools_of(api, stream_id)["pools"]
        return shown["state"] != "completed" or any(pool["state"] != "stopped" for pool in pools)

    step_while(api, running, "the stream to complete and its pools to stop", timeout)
    return list(pools_of(api, stream_id)["events"])


@pytest.fixture()
def api(pki: Pki, tmp_path: Path) -> Any:
    harness = make_api(pki, tmp_path)
    yield harness
    close_api(harness)


def _request(results: str, snapshots: str, **structure_options: str) -> dict[str, Any]:
    source = {"type": "synthetic-diffraction", **XTAL_DETECTOR, "resolution_limit_a": 2.5, "model": "1aki",
              "events": EVENTS, "hit_fraction": 0.8, "seed": 11, "rate_hz": 30.0}  # fmt: skip
    indexers = {**FAST_POOL, "name": "indexers", "group": "xtal", "kind": "xtal", "min_workers": 2,
                "max_workers": 2, "options": {"results": results}}  # fmt: skip
    stage = {**FAST_POOL, "name": "structure", "group": "xtal", "kind": "structure", "stop_grace_s": 120.0,
             "options": {"merger": snapshots, "budget": "10", **structure_options}}  # fmt: skip
    return stream_request(pipeline={"source": source}, consumers=[{"name": "xtal", "policy": "lossless"}],
                          worker_pools=[indexers, stage])  # fmt: skip


def test_the_structure_stage_pool_refines_1aki_and_the_api_serves_statistics_maps_and_files(
    api: ApiHarness, tmp_path: Path
) -> None:
    results, snapshots = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    alice, bob = api.client(cert="alice"), api.client(cert="bob")
    created = alice.post("/v1/streams", json=_request(results, snapshots))
    assert created.status_code == 201, created.text
    stream_id = created.json()["id"]
    base = f"/v1/streams/{stream_id}"
    nothing_yet = alice.get(f"{base}/structure")
    assert nothing_yet.status_code == 404 and "no structure update yet" in nothing_yet.json()["detail"]
    assert alice.get(f"{base}/merging").status_code == 404
    info = tmp_path / "created.json"
    info.write_text(json.dumps(created.json()))
    arguments = ["--bind", results, "--workers", "2", "--publish", str(info), "--report-every", "40",
                 "--idle-timeout", "120", "--structure-bind", snapshots, "--structure-every", "2"]  # fmt: skip
    events = beside_a_merger(arguments, lambda: run_to_the_end(api, stream_id, timeout=240))
    stage_events = [e for e in events if e["pool"] == "structure"]
    assert [e["action"] for e in stage_events].count("start-worker") == 1, stage_events  # one, never restarted
    assert any(e["action"] == "worker-ended" and "completed" in e["detail"] for e in stage_events), stage_events

    updates = results_of(api, stream_id, "structure", 1)
    final_update = updates[-1]["data"]
    assert final_update["final"] is True and final_update["model"] == "1aki"

    merging = alice.get(f"{base}/merging")
    assert merging.status_code == 200, merging.text
    statistics = merging.json()["data"]
    assert statistics["frames"] == EVENTS and statistics["indexed"] >= 0.6 * EVENTS * 0.8, statistics["overall"]
    assert len(statistics["shells"]) == 10 and 0.5 < statistics["overall"]["cc_half"] <= 1.0

    shown = alice.get(f"{base}/structure")
    assert shown.status_code == 200, shown.text
    structure = shown.json()
    data, history = structure["data"], structure["history"]
    assert structure["result_id"] == updates[-1]["id"] and data == final_update
    assert data["r_free"] < 0.4 and data["r_work"] < data["r_free"] + 0.02, data  # the right model fits
    assert [point["update"] for point in history] == list(range(1, data["update"] + 1))
    assert history[-1]["r_free"] == data["r_free"] and history[-1]["frames"] == EVENTS
    assert {f["name"] for f in structure["files"]} == {"structure.mtz", "2mFo-DFc.ccp4", "mFo-DFc.ccp4",
                                                       "structure.json"}  # fmt: skip

    by_name = {f["name"]: f for f in structure["files"]}
    mtz_reply = alice.get(by_name["structure.mtz"]["url"])
    assert mtz_reply.status_code == 200 and len(mtz_reply.content) == by_name["structure.mtz"]["bytes"]
    (tmp_path / "got.mtz").write_bytes(mtz_reply.content)
    mtz = gemmi.read_mtz_file(str(tmp_path / "got.mtz"))
    assert {"FP", "SIGFP", "FreeR_flag", "FWT", "PHWT", "DELFWT", "PHDELWT"} <= set(mtz.column_labels())
    assert mtz.spacegroup.hm == "P 21 21 21" and mtz.nreflections == data["reflections"]
    assert 0.03 < data["free_reflections"] / data["reflections"] < 0.07  # the 5 % free set
    assert [round(v, 1) for v in mtz.cell.parameters[:3]] == [round(v, 1) for v in LYSOZYME_CELL]
    map_reply = alice.get(by_name["2mFo-DFc.ccp4"]["url"])
    assert map_reply.status_code == 200
    (tmp_path / "got.ccp4").write_bytes(map_reply.content)
    density = gemmi.read_ccp4_map(str(tmp_path / "got.ccp4"))
    assert [round(v, 1) for v in density.grid.unit_cell.parameters[:3]] == [round(v, 1) for v in LYSOZYME_CELL]
    assert density.grid.point_count > 10_000

    # the stream's authorization: another user sees neither the results nor the files; odd names are refused
    for path in ("/merging", "/structure", "/structure/files/structure.mtz"):
        refused = bob.get(f"{base}{path}")
        assert refused.status_code == 404 and refused.json()["detail"] == f"stream {stream_id} not found"
    for name, status in (("light-dark.ccp4", 404), ("photonstream.db", 422), ("..%2F..%2Fphotonstream.db", 422)):
        reply = alice.get(f"{base}/structure/files/{name}")
        assert reply.status_code in (status, 404) and "Traceback" not in reply.text, (name, reply.text)


def test_a_structure_pool_takes_only_a_bundled_model_and_an_endpoint(api: ApiHarness) -> None:
    alice = api.client(cert="alice")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    for options, field in (({"model": "/etc/passwd"}, "model"), ({"model": "../1aki"}, "model"),
                           ({"merger": "--help"}, "merger"), ({"budget": "0"}, "budget")):  # fmt: skip
        body = _request(endpoint, options.pop("merger", endpoint), **options)
        refused = alice.post("/v1/streams", json=body)
        assert refused.status_code == 422, refused.text
        assert f"worker_pools[1].options.{field}" in refused.text, refused.text
