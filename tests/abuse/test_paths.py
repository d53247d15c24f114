"""Path traversal through every file-path field a user can send in a stream request: hdf5 ``files``, hdf5-follow
``directory``/``pattern``/``end_marker``, psana ``files``/``dir``, calibrate constants; with ``..``, absolute paths
outside the data root, symlinks pointing out, ``~``, NUL bytes and glob tricks. Handlers (file ``directory`` and
``template``) are the service's: a request naming any is refused as an unknown field.

Canary files sit outside the data root (another experiment's directory, a directory elsewhere); inotify counts
every open of them. Numbers asserted: refused requests = all of them (403/422, the reason naming the field),
streams created = 0, canary contents in any answer = 0, canary files opened = 0. A request inside the root is
accepted, and its job reads the file the check looked at (the path is bound to the data root), canaries opened 0.

What a request cannot show is checked again in the job, before anything is opened (``$PHOTONSTREAM_DATA_ROOT``):
an HDF5 external link or virtual dataset inside the root pointing out, a symbolic link planted in a followed
directory after the request. Numbers asserted: such streams failed = all, naming the file; canaries opened = 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from tests.abuse.canary import Canaries
from tests.api.harness import EXPERIMENT, ApiHarness, Pki, stream_request
from tests.api.test_launcher import step_until
from tests.sources.test_hdf5 import write_cxi
from tests.store.databases import DatabaseSpec


class Layout:
    """data/{experiment} as the root; data/mfx00002 and outside/ hold canaries; symlinks inside point out."""

    def __init__(self, base: Path) -> None:
        self.root = base / "data" / EXPERIMENT
        self.outside = base / "outside"
        names = ["secret.h5", "ped.npy", "runs/r0001-s000.smd.xtc2", "run9/leak.h5"]
        self.canaries = Canaries(self.outside, names)
        self.other = Canaries(base / "data" / "mfx00002", ["run1.h5", "ped.npy"])
        (self.root / "run1").mkdir(parents=True)
        (self.root / "dark").mkdir()
        np.save(self.root / "dark" / "pedestal.npy", np.zeros((16, 16)))
        write_cxi(self.root / "run1.h5", np.arange(3 * 16 * 16, dtype="<u2").reshape(3, 16, 16))
        (self.root / "escape").symlink_to(self.outside)
        (self.root / "leak.h5").symlink_to(self.outside / "secret.h5")
        (self.root / "leak.npy").symlink_to(self.outside / "ped.npy")
        (self.root / "run1" / "leak.h5").symlink_to(self.outside / "secret.h5")
        (self.root / "clean").mkdir()
        (self.root / "follow").mkdir()
        (self.root / "follow" / "run9").symlink_to(self.outside / "run9")
        frames = np.arange(3 * 16 * 16, dtype="<u2").reshape(3, 16, 16)
        self.target = self.outside / "frames.h5"  # real frames outside: what a link inside the root points to
        write_cxi(self.target, frames)
        self.canaries.watch(self.target)
        for name, link in (("linked.h5", "external"), ("virtual.h5", "virtual")):
            write_cxi(self.root / name, frames)
            with h5py.File(self.root / name, "a") as f:
                del f["/entry_1/data_1/data"]
                if link == "external":
                    f["/entry_1/data_1/data"] = h5py.ExternalLink(str(self.target), "/entry_1/data_1/data")
                else:
                    layout = h5py.VirtualLayout(shape=frames.shape, dtype=frames.dtype)
                    layout[:] = h5py.VirtualSource(str(self.target), "/entry_1/data_1/data", shape=frames.shape)
                    f.create_virtual_dataset("/entry_1/data_1/data", layout)

    def opened(self) -> int:
        return self.canaries.total() + self.other.total()

    def leaked(self, text: str) -> bool:
        return self.canaries.leaked_into(text) or self.other.leaked_into(text)


@pytest.fixture()
def layout(tmp_path: Path) -> Iterator[Layout]:
    found = Layout(tmp_path)
    yield found
    found.canaries.close()
    found.other.close()


@pytest.fixture()
def api(pki: Pki, tmp_path: Path, layout: Layout) -> Iterator[ApiHarness]:
    spec = DatabaseSpec("sqlite", tmp_path)
    harness = ApiHarness(spec, pki, tmp_path / "state", data_root=str(tmp_path / "data" / "{experiment}"),
                         stream_handlers=[{"type": "null"}])  # fmt: skip
    yield harness
    harness.close()
    spec.close()


def hdf5(*files: str) -> dict[str, Any]:
    return {"type": "hdf5", "files": list(files)}


def follow(directory: str, **changes: Any) -> dict[str, Any]:
    return {"type": "hdf5-follow", "directory": directory, **changes}


def psana(**changes: Any) -> dict[str, Any]:
    return {"type": "psana", "detector": "jungfrau", **changes}


def calibrate(**constants: Any) -> list[dict[str, Any]]:
    return [{"type": "calibrate", **constants}]


def attacks(root: Path, outside: Path) -> list[tuple[str, dict[str, Any], list[dict[str, Any]], str]]:
    """(case, source, steps, the field the refusal must name)."""
    synthetic = {"type": "synthetic-diffraction", "detector": "custom", "shape": [16, 16], "events": 2}
    return [
        ("files: ..", hdf5("../mfx00002/run1.h5"), [], "pipeline.source.files[0]"),
        ("files: deep ..", hdf5("run1/../../../outside/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: absolute outside", hdf5(str(outside / "secret.h5")), [], "pipeline.source.files[0]"),
        ("files: second entry", hdf5("run1.h5", str(outside / "secret.h5")), [], "pipeline.source.files[1]"),
        ("files: symlink to a file outside", hdf5("leak.h5"), [], "pipeline.source.files[0]"),
        ("files: through a symlinked directory", hdf5("escape/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: ~", hdf5("~/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: ~user", hdf5("~root/.ssh/id_rsa"), [], "pipeline.source.files[0]"),
        ("files: NUL byte", hdf5("run1.h5\x00/../../outside/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: glob then ..", hdf5(f"{root}/**/../../../outside/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: glob ..", hdf5("*/../../mfx00002/*.h5"), [], "pipeline.source.files[0]"),
        ("files: glob through a symlinked directory", hdf5(f"{root}/esc*/secret.h5"), [], "pipeline.source.files[0]"),
        ("files: glob matching a symlink out", hdf5("*.h5"), [], "pipeline.source.files[0]"),
        ("files: glob of another experiment", hdf5(f"{root.parent}/*/run1.h5"), [], "pipeline.source.files[0]"),
        ("follow: directory ..", follow("../mfx00002"), [], "pipeline.source.directory"),
        ("follow: absolute directory", follow(str(outside)), [], "pipeline.source.directory"),
        ("follow: symlinked directory", follow("escape"), [], "pipeline.source.directory"),
        ("follow: ~", follow("~"), [], "pipeline.source.directory"),
        ("follow: NUL", follow("run1\x00"), [], "pipeline.source.directory"),
        ("follow: pattern ..", follow("clean", pattern="../../*.h5"), [], "pipeline.source.pattern"),
        ("follow: pattern absolute", follow("clean", pattern=f"{outside}/*.h5"), [], "pipeline.source.pattern"),
        ("follow: pattern glob ..", follow("clean", pattern="*/../../../outside/*"), [], "pipeline.source.pattern"),
        ("follow: pattern matching a symlink out", follow("run1"), [], "pipeline.source.pattern"),
        ("follow: pattern through a symlinked dir", follow("follow", pattern="*/*.h5"), [], "pipeline.source.pattern"),
        ("follow: end marker ..", follow("clean", end_marker="../../END"), [], "pipeline.source.end_marker"),
        ("psana: files ..", psana(files=["../mfx00002/run1.h5"]), [], "pipeline.source.files[0]"),
        ("psana: files absolute", psana(files=[f"{outside}/runs/r0001-s000.smd.xtc2"]), [], "pipeline.source.files[0]"),
        ("psana: dir ..", psana(dir="../../outside/runs"), [], "pipeline.source.dir"),
        ("psana: dir symlinked", psana(dir="escape/runs"), [], "pipeline.source.dir"),
        ("psana: dir ~", psana(dir="~/xtc"), [], "pipeline.source.dir"),
        ("constant: absolute", synthetic, calibrate(pedestal=str(outside / "ped.npy")), "pipeline.steps[0].pedestal"),
        ("constant: ..", synthetic, calibrate(pedestal={"path": "../mfx00002/ped.npy"}), "pipeline.steps[0].pedestal"),
        ("constant: symlink out", synthetic, calibrate(mask="leak.npy"), "pipeline.steps[0].mask"),
        ("constant: symlinked dir", synthetic, calibrate(gain={"path": "escape/secret.h5"}), "pipeline.steps[0].gain"),
        ("constant: ~", synthetic, calibrate(pedestal="~/ped.npy"), "pipeline.steps[0].pedestal"),
        ("constant: NUL", synthetic, calibrate(pedestal="dark/pedestal.npy\x00"), "pipeline.steps[0].pedestal"),
        ("constant: glob", synthetic, calibrate(pedestal="../*/ped.npy"), "pipeline.steps[0].pedestal"),
    ]  # fmt: skip


def test_every_traversal_is_refused_naming_its_field_and_no_file_outside_is_opened(
    api: ApiHarness, layout: Layout
) -> None:
    alice = api.client(cert="alice")
    cases = attacks(layout.root, layout.outside)
    outcomes: dict[str, tuple[int, str]] = {}
    for case, source, steps, field in cases:
        response = alice.post("/v1/streams", json=stream_request(pipeline={"source": source, "steps": steps}))
        detail = str(response.json().get("detail"))
        outcomes[case] = (response.status_code, field)
        # a NUL byte is refused with the body (400, naming where it is), every other case by the path check
        assert response.status_code in (400, 403, 422), f"{case}: {response.status_code} {response.text}"
        assert field in detail, f"{case}: the reason does not name {field}: {detail}"
        assert not layout.leaked(response.text), f"{case}: canary contents in the answer"
    refused = [case for case, (status, _) in outcomes.items() if status in (400, 403, 422)]
    assert len(refused) == len(cases)
    assert api.services().streams.find(limit=10).total == 0  # no stream was created, none reached starting
    assert layout.opened() == 0


def test_handlers_are_not_the_callers_to_give(api: ApiHarness, layout: Layout) -> None:
    handler = {"type": "file", "directory": str(layout.outside), "template": "../../{experiment}.h5"}
    pipeline = {"source": {"type": "synthetic-diffraction"}, "handlers": [handler]}
    response = api.client(cert="alice").post("/v1/streams", json=stream_request(pipeline=pipeline))
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == ["pipeline.handlers"]
    assert api.services().streams.find(limit=10).total == 0


def test_a_relative_path_inside_the_root_is_read_from_the_root_by_the_job(api: ApiHarness, layout: Layout) -> None:
    """The check looked at data_root/run1.h5; the job must read that file, not run1.h5 in its own directory."""
    alice = api.client(cert="alice")
    steps = calibrate(pedestal="dark/pedestal.npy")
    response = alice.post("/v1/streams", json=stream_request(pipeline={"source": hdf5("run1.h5"), "steps": steps}))
    assert response.status_code == 201, response.text
    stream_id = response.json()["id"]
    [pipeline] = api.services().streams.get(stream_id).spec["pipelines"]
    assert pipeline["source"]["files"] == [str(layout.root / "run1.h5")]
    assert pipeline["steps"][0]["pedestal"]["path"] == str(layout.root / "dark" / "pedestal.npy")
    done = step_until(api, stream_id, {"completed", "failed"})
    assert done["state"] == "completed", done["reason"]
    assert "3 events sent" in alice.get(f"/v1/streams/{stream_id}/logs").json()["text"]
    assert layout.opened() == 0


@pytest.mark.parametrize("name", ["linked.h5", "virtual.h5"])
def test_a_link_out_of_the_root_inside_a_file_fails_the_job_before_the_target_is_opened(
    api: ApiHarness, layout: Layout, name: str
) -> None:
    alice = api.client(cert="alice")
    response = alice.post("/v1/streams", json=stream_request(pipeline={"source": hdf5(name)}))
    assert response.status_code == 201, response.text  # the file itself is inside: only the job can see the link
    done = step_until(api, response.json()["id"], {"completed", "failed"})
    assert done["state"] == "failed"
    assert f"{layout.target} is outside the data directory" in done["reason"]
    assert layout.opened() == 0


def test_a_symlink_planted_in_a_followed_directory_after_the_request_fails_the_job(
    api: ApiHarness, layout: Layout
) -> None:
    alice = api.client(cert="alice")
    source = follow("clean", poll_interval_s=0.1)
    response = alice.post("/v1/streams", json=stream_request(pipeline={"source": source}))
    assert response.status_code == 201, response.text
    (layout.root / "clean" / "run_000001.h5").symlink_to(layout.target)  # after the check, before the job
    (layout.root / "clean" / "END").touch()
    done = step_until(api, response.json()["id"], {"completed", "failed"})
    assert done["state"] == "failed"
    assert f"{layout.root / 'clean' / 'run_000001.h5'} is outside the data directory" in done["reason"]
    assert layout.opened() == 0
