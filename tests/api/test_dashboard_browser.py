"""The dashboard in a real headless Chromium (Debian's ``chromium`` and ``chromium-driver``, driven by Selenium)
against the API over HTTPS with a stream running: log in with a token, watch the list and the stream page update
live, see the frame picture load (the full image only: the stream vetoes misses to a thumbnail, as the demo's does)
with the strip of thumbnails, see the hit rate appear once frames flow, be refused another user's stream, cancel a
stream from its page.

Skipped (with the reason) where Chromium, its driver or selenium is missing; PHOTONSTREAM_REQUIRE_BROWSER=1 turns
the skip into a failure (CI). The stream page's screenshot goes to ``artifacts/dashboard.png``; with
PHOTONSTREAM_DOCS_SCREENSHOT=1 also to ``docs/dashboard.png`` (the README's).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.harness import EXPERIMENT, Pki
from tests.api.live import LiveStream, live_stream
from tests.api.servers import running_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPO = Path(__file__).resolve().parents[2]
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--ignore-certificate-errors", "--window-size=1400,1500"]  # fmt: skip


def _need_browser() -> None:
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.exists()]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("selenium (pip install selenium)")
    if missing:
        reason = f"browser tests need {', '.join(missing)} (apt-get install chromium chromium-driver)"
        if os.environ.get("PHOTONSTREAM_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)


def eventually(check: Callable[[], Any], timeout: float = 15.0, what: str = "the page") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as exc:  # the element may not exist yet, or be replaced while read
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def site(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, LiveStream]]:
    _need_browser()
    pools = [{"name": "readers", "group": "readers", "kind": "pull", "min_workers": 1, "max_workers": 1,
              "interval_s": 0.5}]  # fmt: skip
    veto = [{"type": "thumbnail", "size": 32}, {"type": "veto", "arrays": ["data"], "keep_every": 50}]
    with (
        live_stream(pki, tmp_path_factory.mktemp("dashboard"), worker_pools=pools, more_steps=veto) as live,
        running_server(live.api.app, pki) as url,
    ):
        yield url, live


@pytest.fixture(scope="module")
def browser(site: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(20)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def session(site: tuple[str, LiveStream], browser: Any) -> tuple[str, LiveStream, Any]:
    """Logged in as alice through the login form, with a token."""
    from selenium.webdriver.common.by import By

    url, live = site
    browser.get(f"{url}/ui")
    eventually(lambda: "/ui/login" in browser.current_url, what="the redirect to the login page")
    browser.find_element(By.ID, "token").send_keys("not a token")
    browser.find_element(By.ID, "login-button").click()
    eventually(lambda: "Not logged in" in browser.find_element(By.ID, "login-error").text, what="the refusal")
    token_box = browser.find_element(By.ID, "token")
    token_box.clear()
    token_box.send_keys(live.token)
    browser.find_element(By.ID, "login-button").click()
    eventually(lambda: browser.find_element(By.ID, "me").text == "alice", what="the stream list as alice")
    return url, live, browser


def test_login_keeps_the_token_out_of_page_scripts(session: tuple[str, LiveStream, Any]) -> None:
    _url, _live, browser = session
    assert browser.execute_script("return document.cookie") == ""  # HttpOnly
    cookie = browser.get_cookie("__Host-photonstream")
    assert cookie is not None and cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"


def test_stream_list_updates_live(session: tuple[str, LiveStream, Any]) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    browser.get(f"{url}/ui")

    def received() -> int:
        row = browser.find_element(By.CSS_SELECTOR, f'#streams tr[data-id="{live.stream_id}"]')
        return int(row.find_element(By.CSS_SELECTOR, ".received").text.replace(",", "") or 0)

    first = eventually(received, what="the stream's row with messages received")
    eventually(lambda: received() > first, what="the received count to grow without a reload")
    row = browser.find_element(By.CSS_SELECTOR, f'#streams tr[data-id="{live.stream_id}"]')
    assert "streaming" in row.text and EXPERIMENT in row.text and "alice" in row.text
    assert browser.find_elements(By.CSS_SELECTOR, "#rates-chart canvas")  # uPlot drew the chart


def test_stream_page_shows_the_frame_and_live_charts(session: tuple[str, LiveStream, Any]) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    opened = time.monotonic()
    browser.get(f"{url}/ui/streams/{live.stream_id}")
    # the first visit starts the monitor: the hit rate is there within seconds, as a number and as a chart series
    now = eventually(lambda: re.fullmatch(r"hit rate \d+(\.\d)?%", browser.find_element(By.ID, "hits-now").text),
                     10, "the hit rate readout")  # fmt: skip
    print(f"hit rate shown {time.monotonic() - opened:.1f} s after the page was asked for: {now.group(0)}")
    legend = eventually(lambda: browser.find_element(By.CSS_SELECTOR, "#chart-hits .u-legend").text, 5, "the legend")
    assert "hit rate" in legend
    width = eventually(
        lambda: browser.execute_script(
            "const i = document.getElementById('frame'); return i.complete && i.naturalWidth"
        ),
        20,
        "the frame picture to load",
    )
    assert width == 192 and browser.execute_script("return document.getElementById('frame').naturalHeight") == 96
    # misses come whole only one in 50 (then a hit soon takes the view back): the view shows hits, never thumbnails
    caption = r"event \d+ · hit · \d+ peaks · 2×96×96 · (just now|\d+ s ago)"
    eventually(lambda: re.search(caption, browser.find_element(By.ID, "frame-caption").text), what="the caption")
    assert not browser.find_element(By.ID, "frame-none").is_displayed()
    strip = eventually(
        lambda: browser.execute_script(
            "const i = document.getElementById('thumbs'); return i.complete && i.naturalWidth"
        ),
        10,
        "the thumbnail strip",
    )
    assert strip == 8 * 32 + 7 * 2 and browser.find_element(By.ID, "thumbs-box").is_displayed()
    thumbs_caption = browser.find_element(By.ID, "thumbs-caption").text
    assert re.match(r"events \d+–\d+, newest right · \d+ of \d+ hits", thumbs_caption)
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, '#hops tr[data-group="analysis"]'), what="hop rows")
    for chart in ("rates", "lag", "losses", "latency", "hits", "powder"):
        eventually(lambda c=chart: browser.find_elements(By.CSS_SELECTOR, f"#chart-{c} canvas"), what=f"{chart} chart")
    sums = browser.find_elements(By.CSS_SELECTOR, "#hops tbody td.good")
    assert sums and not browser.find_elements(By.CSS_SELECTOR, "#hops tbody td.bad")
    assert browser.find_element(By.ID, "state").text == "streaming"
    time.sleep(2.5)  # a few more seconds of chart history for the picture
    # seconds of vetoed misses later the frame view still holds a full image: it never flips to a thumbnail's size
    assert browser.execute_script("return document.getElementById('frame').naturalWidth") == 192
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    assert browser.save_screenshot(str(artifacts / "dashboard.png"))
    if os.environ.get("PHOTONSTREAM_DOCS_SCREENSHOT") == "1":
        shutil.copyfile(artifacts / "dashboard.png", REPO / "docs" / "dashboard.png")


def test_stream_page_shows_its_worker_pools(session: tuple[str, LiveStream, Any]) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    browser.get(f"{url}/ui/streams/{live.stream_id}")

    def pool_row() -> dict[str, str]:
        row = browser.find_element(By.CSS_SELECTOR, '#pools tr[data-pool="readers"]')
        cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
        return dict(zip(["pool", "kind", "group", "state", "workers", "bounds", "lag", "target", "last"], cells,
                        strict=True))  # fmt: skip

    shown = eventually(lambda: (row := pool_row())["state"] == "running" and row, 30, "the running pool's row")
    assert (shown["kind"], shown["group"], shown["workers"], shown["bounds"]) == ("pull", "readers", "1", "1–1")
    assert browser.find_element(By.ID, "pools-card").is_displayed()
    api = live.api.client(token=live.token).get(f"/v1/streams/{live.stream_id}/pools").json()["pools"][0]
    assert (api["state"], api["workers"], len(api["live_jobs"])) == ("running", 1, 1)  # the real worker's job

    def hop_lag() -> str:
        row = browser.find_element(By.CSS_SELECTOR, '#hops tr[data-group="readers"]')
        return str(row.find_elements(By.TAG_NAME, "td")[8].text)

    # the pool's lag is its group's, as the buffer shows it now (the same number the hops table has)
    eventually(lambda: pool_row()["lag"].replace(",", "").isdigit() and pool_row()["lag"] == hop_lag(), 15,
               "the pool's lag to be its group's")  # fmt: skip
    (REPO / "artifacts").mkdir(exist_ok=True)
    assert browser.find_element(By.ID, "pools-card").screenshot(str(REPO / "artifacts" / "dashboard-pools.png"))


def _crystallography_results(live: LiveStream, folder: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A real merger's ``merging`` result and a real structure stage's ``structure`` result for 60 1AKI stills,
    stored for the live stream the way the API stores what the buffer hands it."""
    pytest.importorskip("gemmi")
    from benchmarks.structure import indexed_results, merger_of, snapshot
    from photonstream.client.results import MergingStatistics, StructureUpdate
    from photonstream.consumers.structure.stage import StructureStage
    from photonstream.consumers.structure.worker import PUBLISHED_KEYS
    from photonstream.consumers.xtal.published import merging_result

    results, symmetry = indexed_results(60)
    merger = merger_of(results, symmetry)
    merging = merging_result(merger.report(), merger.history)
    assert merging is not None
    stage = StructureStage("1aki", folder)
    summary = stage.update(snapshot(merger, symmetry, final=True))
    structure = {key: summary[key] for key in PUBLISHED_KEYS if key in summary}
    items = []
    for number, (kind, data, model) in enumerate([("merging", merging, MergingStatistics),
                                                  ("structure", structure, StructureUpdate)]):  # fmt: skip
        model.model_validate(data)  # what the buffer would have let through
        items.append({"address": live.address, "kind": kind, "group": "xtal", "worker": "merger", "first_frame": None,
                      "last_frame": None, "published_at": time.time(), "publisher": "test", "data": data,
                      "buffer_id": 10_000 + number})  # fmt: skip
    assert live.api.services().launcher.reports.add_results({live.address: live.stream_id}, "browser-test", items) == 2
    return merging, structure


def test_stream_page_shows_merging_statistics_r_free_and_a_map_section(
    session: tuple[str, LiveStream, Any], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    merging, structure = _crystallography_results(live, tmp_path)
    browser.get(f"{url}/ui/streams/{live.stream_id}")
    eventually(lambda: browser.find_element(By.ID, "xtal-card").is_displayed(), 15, "the merging statistics card")
    rows = browser.find_elements(By.CSS_SELECTOR, "#shells tbody tr")
    assert len(rows) == len(merging["shells"]) + 1  # ten shells and the overall row
    overall = [cell.text for cell in rows[-1].find_elements(By.TAG_NAME, "td")]
    assert overall[0] == "overall" and overall[6] == f"{merging['overall']['cc_half']:.3f}"
    assert overall[2] == str(merging["overall"]["unique"])
    readout = browser.find_element(By.ID, "xtal-readout").text
    assert f"resolution {merging['resolution']['cc_half']:.2f} Å" in readout and "data enough?" in readout
    assert "CC½" in browser.find_element(By.CSS_SELECTOR, "#chart-merging .u-legend").text
    caption = eventually(lambda: browser.find_element(By.ID, "structure-caption").text, 10, "the structure caption")
    assert f"R-free {structure['r_free']:.3f}" in caption and "(final)" in caption
    assert "R-free" in browser.find_element(By.CSS_SELECTOR, "#chart-rfree .u-legend").text
    peaks = browser.find_element(By.ID, "structure-peaks").text
    assert peaks.startswith("mFo-DFc peaks:") and structure["peaks"][0]["atom"] in peaks
    drawn = eventually(lambda: browser.execute_script("return document.getElementById('map-section').dataset.drawn"),
                       10, "the map section")  # fmt: skip
    assert int(drawn) == structure["section"]["size"]
    # the picture is the density: some pixels are dark (protein), some white (solvent)
    greys = browser.execute_script(
        "const c = document.getElementById('map-section'); const d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data; let dark = 0, white = 0;"
        "for (let i = 0; i < d.length; i += 4) { if (d[i] === d[i+1] && d[i] < 128) dark++;"
        " if (d[i] === 255 && d[i+1] === 255) white++; } return [dark, white];"
    )
    assert greys[0] > 100 and greys[1] > 100, greys


def test_another_users_stream_is_refused(session: tuple[str, LiveStream, Any], pki: Pki) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    bobs = live.start_another("bob", pki.token("bob", (EXPERIMENT,)))
    browser.get(f"{url}/ui/streams/{bobs}")
    assert browser.find_element(By.ID, "not-found").text == "Stream not found"
    status = browser.execute_async_script(
        f"const done = arguments[arguments.length - 1];fetch('/ui/api/streams/{bobs}').then(r => done(r.status));"
    )
    assert status == 404
    browser.get(f"{url}/ui")
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, f'#streams tr[data-id="{live.stream_id}"]'))
    assert not browser.find_elements(By.CSS_SELECTOR, f'#streams tr[data-id="{bobs}"]')


def test_cancel_a_stream_from_its_page(session: tuple[str, LiveStream, Any]) -> None:
    from selenium.webdriver.common.by import By

    url, live, browser = session
    browser.get(f"{url}/ui/streams/{live.stream_id}")
    eventually(lambda: browser.find_element(By.ID, "state").text == "streaming", what="the stream page")
    cancel = browser.find_element(By.ID, "cancel")
    cancel.click()  # arms
    assert "again" in cancel.text
    cancel.click()
    eventually(lambda: browser.find_element(By.ID, "state").text == "cancelled", what="the cancelled state")
    assert live.api.services().streams.get(live.stream_id).state == "cancelled"
    eventually(lambda: not browser.find_element(By.ID, "cancel").is_enabled(), what="cancel to be disabled")
