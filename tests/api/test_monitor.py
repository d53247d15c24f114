"""With a stream running: per-hop metrics that add up, latency histograms with counts, the frame picture, the
dashboard's data, and who may see what (pages, live data, metrics, the session cookie and its CSRF rule)."""

from __future__ import annotations

import base64
import io
import json
import re
import ssl
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from photonstream.api.auth.session import CSRF_HEADER, SESSION_COOKIE
from photonstream.client import subscribe
from photonstream.metrics import default_registry, serve, track_subscription
from tests.api.harness import EXPERIMENT, Pki
from tests.api.live import CONSUMER_GROUP, LiveStream, live_stream
from tests.api.servers import running_server
from tests.buffer.support import wait_until

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    out = []
    for line in text.splitlines():
        match = SAMPLE.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            out.append((match["name"], labels, float(match["value"])))
    return out


@pytest.fixture()
def live(pki: Pki, tmp_path: Path) -> Iterator[LiveStream]:
    with live_stream(pki, tmp_path) as stream:
        yield stream


def watched(live: LiveStream, frames: int = 3) -> dict:
    """The stream page's data once the monitor has sampled ``frames`` frames."""
    client = live.api.client(token=live.token)

    def sampled() -> dict | None:
        detail = client.get(f"/ui/api/streams/{live.stream_id}").json()
        monitor = detail.get("monitor") or {}
        return detail if monitor.get("sampled", 0) >= frames and monitor.get("frame") else None

    return wait_until(sampled, 20, "the monitor to sample frames")


def test_hop_metrics_add_up_and_latency_histograms_count(live: LiveStream) -> None:
    watched(live)
    wait_until(lambda: len(live.consumed) >= 10, 20, "more frames at the consumer")
    text = live.api.client(token=live.token).get("/metrics/streams").text
    rows = samples(text)
    received = {labels["run"]: value for name, labels, value in rows if name == "photonstream_stream_buffer_in_total"}
    assert received and min(received.values()) > 0, text
    by_group: dict[str, dict[str, float]] = {}
    for name, labels, value in rows:
        if labels.get("stream") != live.stream_id or "group" not in labels or name.endswith("_bucket"):
            continue
        assert labels["experiment"] == EXPERIMENT and labels["run"] == "1"
        by_group.setdefault(labels["group"], {})[name] = value
    assert set(by_group) >= {CONSUMER_GROUP, "_monitor"}, by_group
    for group in (CONSUMER_GROUP, "_monitor"):
        figures = by_group[group]
        out = figures["photonstream_stream_group_out_total"]
        skipped = figures["photonstream_stream_group_skipped_total"]
        held = figures["photonstream_stream_group_held"]
        assert received["1"] == out + skipped + held, (group, received, figures)
        assert out > 0
    assert by_group["_monitor"]["photonstream_stream_group_skipped_total"] > 0  # policy latest skips
    assert by_group[CONSUMER_GROUP]["photonstream_stream_group_skipped_total"] == 0  # lossless never does
    assert by_group["_monitor"]["photonstream_stream_latency_seconds_count"] >= 3

    # the pipeline rank's own metrics (what `photonstream run --metrics-port` serves)
    stats = live.pipeline.stats
    stream_label = live.stream_id.replace("-", "")  # the pipeline's stream id is the API's, without dashes
    exposed = generate_latest(default_registry()).decode()
    named = {name: value for name, labels, value in samples(exposed) if labels.get("stream") == stream_label}
    assert named["photonstream_pipeline_events_read_total"] >= stats.events_sent > 0
    assert named["photonstream_pipeline_latency_seconds_count"] > 0
    assert named["photonstream_pipeline_encode_seconds_count"] > 0


def test_consumer_metrics_and_metrics_server(live: LiveStream) -> None:
    registry = CollectorRegistry()
    with subscribe(live.buffer.endpoint, live.address, group="latency-probe", timeout_s=20) as sub:
        labels = track_subscription(sub, registry)
        for count, _message in enumerate(sub, start=1):
            if count >= 6:
                break
        server = serve(0, registry=registry)
        try:
            port = server.server_address[1]
            body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        finally:
            server.shutdown()
    rows = {(name, tuple(sorted(lab.items()))): value for name, lab, value in samples(body)}
    key = tuple(sorted(labels.items()))
    assert labels["group"] == "latency-probe" and labels["experiment"] == EXPERIMENT
    assert rows[("photonstream_consumer_messages_total", key)] == sub.stats.yielded >= 5
    assert rows[("photonstream_consumer_latency_seconds_count", key)] == sub.stats.latency.count >= 5


def test_stream_page_data_and_frame_picture(live: LiveStream) -> None:
    detail = watched(live)
    assert detail["state"] == "streaming" and detail["owner"] == "alice"
    hop = detail["hops"][0]
    assert hop["present"] and hop["in"] > 0
    monitor = detail["monitor"]
    assert monitor["frame"]["shape"] == [2, 96, 96]
    assert monitor["latency"]["count"] >= 3 and monitor["latency"]["p99_ms"] >= monitor["latency"]["p50_ms"] >= 0
    assert monitor["hit_fraction"] is not None and monitor["powder"]["frames"] >= 3
    assert len(monitor["powder"]["q"]) == len(monitor["powder"]["intensity"]) > 10
    client = live.api.client(token=live.token)
    response = client.get(f"/ui/api/streams/{live.stream_id}/frame.png", params={"v": monitor["frame"]["version"]})
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    picture = Image.open(io.BytesIO(response.content))
    assert picture.size == (192, 96)  # the two modules side by side (module_grid 1×2)
    assert monitor["frame"]["hit"] in (True, False) and monitor["thumbnails"] is None  # no thumbnail step here
    strip = client.get(f"/ui/api/streams/{live.stream_id}/thumbnails.png")
    assert strip.status_code == 404 and "no thumbnails" in strip.json()["detail"]


def test_visibility_of_pages_data_and_metrics(live: LiveStream, pki: Pki) -> None:
    bob_token = pki.token("bob", (EXPERIMENT,))
    bobs = live.start_another("bob", bob_token)
    alice = live.api.client(token=live.token)
    bob = live.api.client(token=bob_token)
    carol = live.api.client(token=pki.token("carol", groups=("ops",)))  # an operator sees every stream
    assert alice.get(f"/ui/streams/{live.stream_id}").status_code == 200
    page = bob.get(f"/ui/streams/{live.stream_id}")
    assert page.status_code == 404 and "not found" in page.text.lower()
    assert alice.get(f"/ui/streams/{bobs}").status_code == 404
    assert carol.get(f"/ui/streams/{live.stream_id}").status_code == 200
    for path in ("", "/frame.png"):
        assert bob.get(f"/ui/api/streams/{live.stream_id}{path}").status_code == 404
    listed = {s["id"] for s in alice.get("/ui/api/streams").json()["streams"]}
    assert live.stream_id in listed and bobs not in listed
    assert {live.stream_id, bobs} <= {s["id"] for s in carol.get("/ui/api/streams").json()["streams"]}
    assert live.stream_id not in bob.get("/metrics/streams").text
    anonymous = live.api.client()
    redirect = anonymous.get("/ui", follow_redirects=False)
    assert redirect.status_code == 303 and redirect.headers["location"].startswith("/ui/login")
    assert anonymous.get("/metrics/streams").status_code == 401


def test_session_cookie_login_and_csrf_rule(live: LiveStream) -> None:
    client = live.api.client()
    refused = client.post("/ui/login", json={"token": live.token})
    assert refused.status_code == 401  # no CSRF header
    bad = client.post("/ui/login", json={"token": "not-a-token"}, headers={CSRF_HEADER: "1"})
    assert bad.status_code == 401
    response = client.post("/ui/login", json={"token": live.token}, headers={CSRF_HEADER: "1"})
    assert response.status_code == 200 and response.json()["identity"] == "alice"
    cookie = response.headers["set-cookie"]
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    session = {"Cookie": f"{SESSION_COOKIE}={live.token}"}
    client.cookies.clear()
    assert client.get("/v1/me", headers=session).json()["identity"] == "alice"
    assert client.get(f"/ui/streams/{live.stream_id}", headers=session).status_code == 200
    forged = client.delete(f"/v1/streams/{live.stream_id}", headers=session)
    assert forged.status_code == 401 and CSRF_HEADER in forged.json()["detail"]
    cancelled = client.delete(f"/v1/streams/{live.stream_id}", headers={**session, CSRF_HEADER: "1"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"


def test_live_updates_over_server_sent_events(live: LiveStream, pki: Pki) -> None:
    with running_server(live.api.app, pki) as url:
        verify = ssl.create_default_context(cafile=str(pki.ca.directory / "ca.crt"))
        headers = {"Authorization": f"Bearer {live.token}"}
        with httpx.Client(base_url=url, verify=verify, headers=headers, timeout=20) as http:
            updates = []
            with http.stream("GET", f"/ui/api/streams/{live.stream_id}/events") as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        updates.append(json.loads(line[6:]))
                    if len(updates) == 3:
                        break
    assert [u["id"] for u in updates] == [live.stream_id] * 3
    received = [u["received"] for u in updates]
    assert received == sorted(received) and received[-1] > received[0]  # the numbers move while it streams


def test_event_stream_ends_when_the_token_is_revoked(live: LiveStream, pki: Pki) -> None:
    token = pki.token("alice", (EXPERIMENT,))
    jti = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["jti"]
    with running_server(live.api.app, pki) as url:
        context = ssl.create_default_context(cafile=str(pki.ca.directory / "ca.crt"))
        with httpx.Client(base_url=url, verify=context, headers={"Authorization": f"Bearer {token}"}) as http:
            events = []
            with http.stream("GET", "/ui/api/events", timeout=20) as response:
                for line in response.iter_lines():
                    if line.startswith("event: "):
                        events.append(line[7:])
                        if len(events) == 1:
                            live.api.services().policy.revoke("token", jti, by="root", reason="test")
                    if events and events[-1] == "logged-out":
                        break
    assert events[0] == "update" and events[-1] == "logged-out"


def test_results_channel_feeds_rates_tof_and_the_results_list(live: LiveStream) -> None:
    published = [
        {"id": 1, "kind": "indexing_rate", "data": {"frames": 10, "indexed": 4}},
        {"id": 2, "kind": "hit_rate", "data": {"frames": 100, "hits": 25}},
        {"id": 3, "kind": "tof_histogram", "data": {"quantity": "mq", "edges": [0, 1, 2, 3], "counts": [[1, 5, 2]]}},
    ]
    asked: list[tuple[str, int]] = []

    def reader(stream_id: str, after: int, limit: int) -> list[dict]:
        asked.append((stream_id, after))
        return [item for item in published if item["id"] > after][:limit]

    live.api.app.state.monitor.results = reader
    client = live.api.client(token=live.token)
    detail = client.get(f"/ui/api/streams/{live.stream_id}").json()
    assert detail["indexing_rate"] == 0.4 and detail["hit_rate"] == 0.25
    assert [r["id"] for r in detail["results"]] == [1, 2, 3]
    published.append({"id": 4, "kind": "indexing_rate", "data": {"frames": 10, "indexed": 9}})
    again = client.get(f"/ui/api/streams/{live.stream_id}").json()
    assert [r["id"] for r in again["results"]] == [1, 2, 3, 4] and again["indexing_rate"] == 0.9
    assert asked == [(live.stream_id, 0), (live.stream_id, 3)]  # only what is new is asked for
    # no waveforms in this stream: the TOF histogram shown is the reported one
    assert again["monitor"]["tof"] == {"mq": [0.5, 1.5, 2.5], "counts": [1, 5, 2]}


def _vetoed_run(messages: list, monkeypatch: pytest.MonkeyPatch | None = None, hit_kept_s: float | None = None):
    from photonstream.api import monitor

    if monkeypatch is not None and hit_kept_s is not None:
        monkeypatch.setattr(monitor, "HIT_KEPT_S", hit_kept_s)
    watch = monitor.StreamWatch("v" * 8, ["a/1/s"], lambda address, context: iter(messages), sample_hz=1000.0)
    wait_until(lambda: watch.finished_at is not None, 10)
    assert watch.error == ""
    return watch


def _veto_frames():
    import numpy as np

    from photonstream.frames import Frame, Geometry, StartMessage

    shape = (2, 16, 24)
    start = StartMessage("v", geometry=Geometry(pixel_size_m=1e-4, distance_m=0.1, detector_shape=shape))

    def full(event: int, hit: bool) -> Frame:
        return Frame(event=event, arrays={"data": np.full(shape, event + 1, np.uint16),
                                          "thumbnail": np.full((8, 6), event, np.uint16)},
                     metadata={"hit": hit, "vetoed": False})  # fmt: skip

    def vetoed(event: int) -> Frame:
        return Frame(event=event, arrays={"thumbnail": np.full((8, 6), event, np.uint16)},
                     metadata={"hit": False, "vetoed": True})  # fmt: skip

    return shape, start, full, vetoed


def test_powder_takes_only_full_images_when_misses_carry_a_thumbnail() -> None:
    """The veto pattern: most samples are misses with a thumbnail only; they go to the thumbnail strip, never to
    the frame view or the powder pattern (made for the detector's own shape)."""
    from photonstream.frames import EndMessage

    shape, start, full, vetoed = _veto_frames()
    watch = _vetoed_run([start, full(0, True), vetoed(1), full(2, True), vetoed(3), EndMessage("v", events_sent=4)])
    assert watch.sampled == 4
    assert watch.powder is not None and watch.powder.frames == 2  # the two full images, none of the thumbnails
    assert watch.frame is not None and watch.frame.frame.event == 2 and watch.frame.image.shape == shape
    assert [t.event for t in watch.thumbnails] == [0, 1, 2, 3]
    assert [t.hit for t in watch.thumbnails] == [True, False, True, False]


def test_frame_view_keeps_a_recent_hit_against_a_newer_full_miss(monkeypatch: pytest.MonkeyPatch) -> None:
    from photonstream.frames import EndMessage, FrameBatch

    _shape, start, full, vetoed = _veto_frames()
    end = EndMessage("v", events_sent=4)
    kept = _vetoed_run([start, full(0, False), full(1, True), vetoed(2), full(3, False), end], monkeypatch, 3600.0)
    assert kept.frame is not None and (kept.frame.frame.event, kept.frame.hit, kept.frame.version) == (1, True, 2)
    # once the hit is older than HIT_KEPT_S, the newest full miss takes its place
    replaced = _vetoed_run([start, full(0, False), full(1, True), vetoed(2), full(3, False), end], monkeypatch, 0.0)
    assert replaced.frame is not None and (replaced.frame.frame.event, replaced.frame.hit) == (3, False)
    # of a batch, the newest hit is shown, though a full miss comes after it
    batch = FrameBatch(frames=[full(4, True), full(5, True), vetoed(6), full(7, False)])
    batched = _vetoed_run([start, batch, end], monkeypatch, 3600.0)
    assert batched.frame is not None and batched.frame.frame.event == 5
    assert [t.event for t in batched.thumbnails] == [4, 5, 6, 7] and batched.thumbnails_version == 1


def test_frame_and_thumbnail_pictures_of_a_vetoed_stream(pki: Pki, tmp_path: Path) -> None:
    """A live stream whose misses travel as a thumbnail only: the frame endpoint gives the full detector image
    (never the thumbnail), the thumbnails endpoint the strip of the latest thumbnails, hits and vetoed misses."""
    from photonstream.api.monitor import THUMBNAILS_KEPT

    steps = [{"type": "thumbnail", "size": 32}, {"type": "veto", "arrays": ["data"], "keep_every": 50}]
    with live_stream(pki, tmp_path, more_steps=steps) as live:
        client = live.api.client(token=live.token)
        path = f"/ui/api/streams/{live.stream_id}"

        seen: list[dict] = []
        verdicts: set[bool | None] = set()  # of the thumbnails seen over all polls

        def both_kinds() -> dict | None:
            seen[:] = [client.get(path).json()]
            monitor = seen[0].get("monitor") or {}
            verdicts.update((monitor.get("thumbnails") or {}).get("hits", []))
            shown = monitor.get("frame") or {}
            return seen[0] if {True, False} <= verdicts and shown.get("hit") and monitor.get("thumbnails") else None

        try:
            detail = wait_until(both_kinds, 30, "thumbnails of a hit and of a vetoed miss")
        except AssertionError as exc:
            monitor = (seen[0] if seen else {}).get("monitor")
            raise AssertionError(f"{exc}; verdicts seen {verdicts}, the monitor showed {monitor}") from None
        frame, thumbs = detail["monitor"]["frame"], detail["monitor"]["thumbnails"]
        assert frame["shape"] == [2, 96, 96] and frame["hit"] is True and frame["age_s"] >= 0
        assert thumbs["events"] == sorted(thumbs["events"]) and 2 <= len(thumbs["events"]) <= THUMBNAILS_KEPT
        picture = client.get(f"{path}/frame.png", params={"v": frame["version"]})
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(picture.content)).size == (192, 96)  # the full image, modules side by side
        strip = client.get(f"{path}/thumbnails.png", params={"v": thumbs["version"]})
        assert strip.status_code == 200 and strip.headers["content-type"] == "image/png"
        # 8 slots of 32×32 (192×96 max-pooled by 6×3) with 2-pixel gaps, a verdict bar below, however many came
        width, height = Image.open(io.BytesIO(strip.content)).size
        assert (width, height) == (THUMBNAILS_KEPT * 32 + (THUMBNAILS_KEPT - 1) * 2, 32 + 2 + 4)
        later = wait_until(lambda: (d := client.get(path).json())["monitor"]["sampled"] > detail["monitor"]["sampled"]
                           + 4 and d, 20, "more samples")  # fmt: skip
        assert later["monitor"]["frame"]["shape"] == [2, 96, 96]  # still the full image, among vetoed misses
