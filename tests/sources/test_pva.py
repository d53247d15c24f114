"""pva source against real pvAccess servers: ``pvapy-ad-sim-server`` and a small ``pvaccess.PvaServer`` script.

Every server runs as a subprocess with its own free UDP search port and TCP port on loopback (``EPICS_PVA*``
environment), serving a channel name unique to the test, so tests cannot meet each other or anything else on the
machine. The client (the source, or a whole pipeline) runs in a subprocess too: the suite preloads cctbx
(tests/conftest.py), and pvaccess cannot be loaded in a process that holds cctbx (both bundle boost.python); a
fresh process also gives pvaccess a client context made from the source's ``address_list`` ("127.0.0.1:<udp
port>"). The client writes what it read to files the test then checks; only the buffer and its consumer stay here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from photonstream.buffer import BufferService
from photonstream.client import subscribe
from photonstream.errors import SourceError
from photonstream.frames import EndMessage, Frame, StartMessage
from photonstream.sources.base import registry
from photonstream.sources.pva import PvaSource, _Update, image
from tests.buffer.support import REPO, start_service

if importlib.util.find_spec("pvaccess") is None:
    pytest.skip("pvapy (pvaccess) is not installed: pip install 'photonstream[pva]'", allow_module_level=True)

SHAPE = (24, 40)  # (ny, nx): the NTNDArray's dimension list is [nx, ny]

# A PVA server publishing NTNDArrays: the first id is the record's value before any client connects (a monitor
# receives it on connecting), the others are published after the test writes a line to stdin.
SERVER_SCRIPT = r"""
import sys, time
import numpy as np

def image(uid, shape):
    return np.random.default_rng(uid).poisson(3.0, shape).astype(np.uint16)

def ntndarray(pva, uid, codec):
    ny, nx = SHAPE = (24, 40)
    data = image(uid, SHAPE)
    nt = pva.NtNdArray()
    nt["uniqueId"] = uid
    nt["dimension"] = [pva.PvDimension(nx, 0, nx, 1, False), pva.PvDimension(ny, 0, ny, 1, False)]
    nt["uncompressedSize"] = data.nbytes
    if codec == "lz4":
        import lz4.block
        payload = lz4.block.compress(data.tobytes(), store_size=False)  # areaDetector: LZ4_compress_default
    elif codec == "bslz4":
        import bitshuffle
        payload = bitshuffle.compress_lz4(data.reshape(-1), 0).tobytes()  # areaDetector: bshuf_compress_lz4
    if codec:
        nt["codec"] = pva.PvCodec(codec, pva.PvInt(int(pva.USHORT)))
        nt["compressedSize"] = len(payload)
        nt["value"] = {"ubyteValue": np.frombuffer(payload, dtype=np.uint8)}
    else:
        nt["compressedSize"] = data.nbytes
        nt["value"] = {"ushortValue": data.reshape(-1)}
    nt["dataTimeStamp"] = pva.PvTimeStamp(1_700_000_000 + uid, 250_000_000)
    nt["attribute"] = [pva.NtAttribute("ColorMode", pva.PvInt(0)), pva.NtAttribute("Exposure", pva.PvDouble(0.5)),
                       pva.NtAttribute("Operator", pva.PvString("cxi"))]
    return nt

if __name__ == "__main__":
    import pvaccess as pva
    channel, ids, codec = sys.argv[1], [int(i) for i in sys.argv[2].split(",")], sys.argv[3]
    server = pva.PvaServer()
    server.addRecord(channel, ntndarray(pva, ids[0], codec))
    server.start()
    print("ready", flush=True)
    sys.stdin.readline()
    for uid in ids[1:]:
        server.update(channel, ntndarray(pva, uid, codec))
        time.sleep(0.05)
    sys.stdin.readline()
    server.stop()
"""


def _expected_image(uid: int) -> np.ndarray:
    namespace: dict[str, Any] = {"__name__": "pva_server"}
    exec(SERVER_SCRIPT, namespace)
    return namespace["image"](uid, SHAPE)  # type: ignore[no-any-return]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A PVA server subprocess on loopback with its own ports; ``address`` is what a client's address list needs."""

    def __init__(self, args: list[str], tmp: Path) -> None:
        self.udp, self.tcp = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
        env.update(
            EPICS_PVAS_INTF_ADDR_LIST="127.0.0.1", EPICS_PVAS_BEACON_ADDR_LIST="127.0.0.1",
            EPICS_PVAS_AUTO_BEACON_ADDR_LIST="NO", EPICS_PVA_ADDR_LIST="127.0.0.1", EPICS_PVA_AUTO_ADDR_LIST="NO",
            EPICS_PVAS_BROADCAST_PORT=str(self.udp), EPICS_PVA_BROADCAST_PORT=str(self.udp),
            EPICS_PVAS_SERVER_PORT=str(self.tcp), EPICS_PVA_SERVER_PORT=str(self.tcp),
        )  # fmt: skip
        self.log = tmp / f"server-{self.udp}.log"
        self.proc = subprocess.Popen(
            args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log.open("wb"), text=True
        )
        self.address = f"127.0.0.1:{self.udp}"

    def wait_for(self, word: str, timeout_s: float = 30.0) -> None:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"server exited: {self.log.read_text()[-2000:]}")
            if word in line:
                return
        raise AssertionError(f"no {word!r} from the server within {timeout_s} s")

    def tell(self, line: str = "go") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _channel(name: str) -> str:
    return f"photonstream:test:{name}:{uuid.uuid4().hex[:8]}"


def _script_server(servers: list[Server], tmp: Path, channel: str, ids: list[int], codec: str = "") -> Server:
    script = tmp / "pva_server.py"
    script.write_text(SERVER_SCRIPT)
    server = Server([sys.executable, str(script), channel, ",".join(map(str, ids)), codec], tmp)
    servers.append(server)
    server.wait_for("ready")
    return server


# The source in a fresh process: prints "opened" once open() returned (the test then lets the server publish), reads
# to the end and writes what it got: OUT.json (info, events, metadata, counts, error) and OUT.npz (decoded images).
CLIENT_SCRIPT = r"""
import json, sys, time
import numpy as np
from photonstream.frames import EncodedArray
from photonstream.sources.pva import PvaOptions, PvaSource
options, out, conflicting = json.loads(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
source = PvaSource(PvaOptions(**options))
result, frames, started = {}, [], time.monotonic()
try:
    info = source.open()
    result["info"] = {"detector": info.detector, "shape": list(info.geometry.detector_shape), "details": info.details}
    if conflicting:
        try:
            PvaSource(PvaOptions(**conflicting)).open()
        except Exception as exc:
            result["conflict"] = str(exc)
    print("opened", flush=True)
    frames = list(source.events())
except Exception as exc:
    result["error"] = f"{type(exc).__name__}: {exc}"
finally:
    source.close()
result["seconds"] = time.monotonic() - started
result["events"] = [f.event for f in frames]
result["timestamps"] = [f.timestamp for f in frames]
result["metadata"] = [f.metadata for f in frames]
result["kinds"] = [getattr(f.arrays["data"], "codec", "ndarray") for f in frames]
result["counts"] = source.outcome_counts()
np.savez(out + ".npz", **{f"e{f.event}": f.array("data") for f in frames})
with open(out + ".json", "w") as f:
    json.dump(result, f)
"""


def _client(
    tmp: Path, server: Server | None, conflicting: dict[str, Any] | None = None, **options: Any
) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Run the source in a subprocess; after it opened, let ``server`` publish the rest of its frames."""
    out = tmp / f"client-{uuid.uuid4().hex[:6]}"
    args = [sys.executable, "-c", CLIENT_SCRIPT, json.dumps(options), str(out), json.dumps(conflicting or {})]
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        opened = proc.stdout.readline()
        if "opened" in opened and server is not None:
            server.tell()
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    with np.load(out.with_suffix(".npz")) as arrays:
        images = {int(name[1:]): arrays[name] for name in arrays.files}
    return result, images


def test_pva_is_registered() -> None:
    assert registry.get("pva") is PvaSource


def test_gaps_in_unique_id_are_counted_as_source_drops(servers: list[Server], tmp_path: Path) -> None:
    channel = _channel("gaps")
    server = _script_server(servers, tmp_path, channel, [1, 2, 3, 6, 7, 10])
    conflicting = {"channel": channel, "address_list": "127.0.0.1:1", "start_timeout_s": 1}
    result, images = _client(tmp_path, server, conflicting, channel=channel, address_list=server.address,
                             idle_timeout_s=1.5)  # fmt: skip
    assert "error" not in result, result["error"]
    assert result["info"]["detector"] == channel and tuple(result["info"]["shape"]) == SHAPE
    assert result["info"]["details"]["channel"] == channel and result["info"]["details"]["codec"] == "none"
    assert "already has a pvaccess client" in result["conflict"]  # pvaccess reads the list once per context
    assert result["events"] == [1, 2, 3, 6, 7, 10]
    assert result["counts"] == {"source_dropped": 4, "queue_overflow": 0, "id_restarts": 0}  # 4, 5, 8 and 9
    assert result["kinds"] == ["ndarray"] * 6
    for uid, data in images.items():
        assert data.dtype == np.uint16 and data.shape == SHAPE and np.array_equal(data, _expected_image(uid))
    assert result["timestamps"][0] == pytest.approx(1_700_000_001.25)
    assert result["metadata"][0] == {"ColorMode": 0, "Exposure": 0.5, "Operator": "cxi", "pva_unique_id": 1}


@pytest.mark.parametrize("decompress", [True, False])
@pytest.mark.parametrize("codec", ["lz4", "bslz4"])
def test_codec_plugin_payloads_arrive_bit_exact(
    servers: list[Server], tmp_path: Path, codec: str, decompress: bool
) -> None:
    channel = _channel(codec)
    server = _script_server(servers, tmp_path, channel, [4, 5, 6], codec)
    result, images = _client(tmp_path, server, channel=channel, address_list=server.address, idle_timeout_s=1.5,
                             decompress=decompress)  # fmt: skip
    assert "error" not in result, result["error"]
    assert result["events"] == [4, 5, 6] and result["info"]["details"]["codec"] == codec
    assert result["kinds"] == ["ndarray" if decompress else codec] * 3  # else EncodedArray, no recompression
    for uid, data in images.items():
        assert data.dtype == np.uint16 and data.shape == SHAPE and np.array_equal(data, _expected_image(uid))


def test_no_server_is_a_source_error_within_the_start_timeout(tmp_path: Path) -> None:
    address = f"127.0.0.1:{_free_port(socket.SOCK_DGRAM)}"
    result, _ = _client(tmp_path, None, channel=_channel("nobody"), address_list=address, start_timeout_s=1.0)
    assert result["error"].startswith("SourceError: pva: no image from channel")
    assert "within 1 s" in result["error"] and "\n" not in result["error"]
    assert result["seconds"] < 3.0


def test_pvaccess_after_cctbx_is_a_one_line_source_error() -> None:
    if importlib.util.find_spec("cctbx") is None:
        pytest.skip("cctbx is not installed")
    script = (
        "from photonstream.consumers.xtal import _cctbx\n"
        "assert _cctbx.preload()\n"
        "from photonstream.sources.pva import PvaOptions, PvaSource\n"
        "try:\n"
        "    PvaSource(PvaOptions(channel='x', start_timeout_s=0.1)).open()\n"
        "except Exception as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )  # in a subprocess: a failed pvaccess import leaves its libraries loaded
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("SourceError pva: pvaccess cannot be loaded in this process")
    assert "own process" in out.stdout and len(out.stdout.strip().splitlines()) == 1


def _update(codec: str, data: np.ndarray, payload: bytes, parameter: int = 6) -> _Update:
    ny, nx = data.shape
    return _Update(1, "ubyteValue", np.frombuffer(payload, np.uint8), [nx, ny], codec, parameter, data.nbytes, 0.0, {})


def test_an_lz4_block_exactly_as_long_as_the_image_still_decodes() -> None:
    import lz4.block

    noise = np.random.default_rng(0).integers(0, 256, (16, 16), dtype=np.uint8)
    for zeros in range(noise.size):  # random bytes grow under LZ4, zeros shrink them: find a block of equal length
        data = noise.copy()
        data.reshape(-1)[:zeros] = 0
        payload = lz4.block.compress(data.tobytes(), store_size=False)
        if len(payload) == data.nbytes:
            break
    assert len(payload) == data.nbytes  # the HDF5 framing reads such a block as stored raw: the source decodes it
    assert np.array_equal(image(_update("lz4", data, payload, parameter=5), decompress=True), data)
    assert np.array_equal(image(_update("lz4", data, payload, parameter=5), decompress=False).decode(), data)


def test_unreadable_codecs_are_source_errors_naming_them() -> None:
    data = np.arange(12, dtype=np.uint16).reshape(3, 4)
    with pytest.raises(SourceError, match="'jpeg'"):
        image(_update("jpeg", data, b"\xff\xd8"), decompress=True)
    with pytest.raises(SourceError, match="unknown codec 'zfp'"):
        image(_update("zfp", data, b"x"), decompress=True)
    with pytest.raises(SourceError, match="does not fit uncompressedSize"):
        image(_update("lz4", data, b"x", parameter=10), decompress=True)
    try:
        import blosc2 as blosc
    except ImportError:
        try:
            import blosc  # type: ignore[no-redef]
        except ImportError:
            blosc = None  # type: ignore[assignment]
    if blosc is None:
        with pytest.raises(SourceError, match="codec 'blosc' needs the blosc2 or blosc package"):
            image(_update("blosc", data, b"x"), decompress=True)
    else:
        packed = blosc.compress(data.tobytes(), typesize=2)
        assert np.array_equal(image(_update("blosc", data, packed), decompress=True), data)


@pytest.fixture
def buffer() -> Iterator[BufferService]:
    service = start_service()
    yield service
    service.stop()


PIPELINE_SCRIPT = r"""
import json, sys
from photonstream.config.pipeline import validate_pipeline
from photonstream.pipeline import run_pipeline
end = run_pipeline(validate_pipeline(json.loads(sys.argv[1])))
print(json.dumps({"reason": end.reason, "error": end.error, "counts": end.counts}))
"""


@pytest.mark.slow
def test_sim_server_frames_reach_a_consumer_through_the_buffer_once_each(
    servers: list[Server], tmp_path: Path, buffer: BufferService
) -> None:
    channel = _channel("sim")
    server = Server(
        ["pvapy-ad-sim-server", "-cn", channel, "-nx", "512", "-ny", "512", "-dt", "uint16", "-fps", "100",
         "-rt", "3", "-std", "1", "-shd", "0", "-nf", "20", "-dc"],
        tmp_path,
    )  # fmt: skip
    servers.append(server)
    config = {
        "stream": {"experiment": "pva", "run": 1, "stream_id": "sim"},
        "source": {"type": "pva", "channel": channel, "address_list": server.address, "start_timeout_s": 30,
                   "idle_timeout_s": 2},
        "handlers": [{"type": "buffer", "address": buffer.endpoint}],
    }  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_")}
    pipeline = subprocess.Popen([sys.executable, "-c", PIPELINE_SCRIPT, json.dumps(config)], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    messages: list[Any] = []
    consumer = threading.Thread(
        target=lambda: messages.extend(subscribe(buffer.endpoint, "pva/1/sim", timeout_s=60)), daemon=True
    )
    consumer.start()
    stdout, stderr = pipeline.communicate(timeout=120)
    consumer.join(30)
    assert pipeline.returncode == 0, stderr[-3000:]
    outcome = json.loads(stdout.splitlines()[-1])
    assert outcome["reason"] == "completed", outcome["error"]
    start, frames, end = messages[0], [m for m in messages if isinstance(m, Frame)], messages[-1]
    assert isinstance(start, StartMessage) and start.detector == channel
    assert start.geometry.detector_shape == (512, 512) and start.source["codec"] == "none"
    assert isinstance(end, EndMessage) and end.counts == outcome["counts"]
    ids = [f.event for f in frames]
    assert len(ids) >= 100, f"only {len(ids)} frames in a 3 s run at 100 Hz"
    assert ids == list(range(ids[0], ids[0] + len(ids))), "every uniqueId exactly once, in order"
    assert end.counts.get("source_dropped", 0) == 0 and end.counts.get("queue_overflow", 0) == 0
    assert end.events_sent == len(frames) == end.counts["read"]
    data = frames[-1].array("data")
    assert data.shape == (512, 512) and data.dtype == np.uint16
    assert frames[-1].metadata["pva_unique_id"] == ids[-1] and frames[-1].metadata["ColorMode"] == 0


@pytest.mark.parametrize("sizes", [[100_000, 100_000], [0, 512], [-4, 512], []])
def test_dimensions_a_server_claims_do_not_size_an_allocation(sizes: list[int]) -> None:
    payload = b"\x00" * 16  # a hostile server: a tiny lz4 payload claiming a 40 GB image, or no image at all
    update = _Update(1, "ubyteValue", np.frombuffer(payload, np.uint8), sizes, "lz4", 6, 2 * 100_000**2, 0.0, {})
    with pytest.raises(SourceError, match="are not an image's"):
        image(update, decompress=True)
