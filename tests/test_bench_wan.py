"""``photonstream bench wan`` runs end to end with tiny settings and reports what it says it does.

No speed is asserted (the figures are the benchmark's output, not a test's): every key is there, the figures are
positive and consistent (fractions and ratios match the rates), goodput is at most the cap with 10 % tolerance
(the token bucket's burst, 128 KiB of the 4.7 MB measured, and a receiver descheduled as the measured window
began that then read what its socket held; a slow machine only lowers goodput), the create answer came before
the first frame (the workers could only ask for frames with it), the first frame before the last, every frame
arrived once and every case completed. Without network namespaces the command refuses with one line (tested
with ``ip`` off the PATH, which works on any machine); with them it needs root, like the other netns tests
(skipped, or failed under ``PHOTONSTREAM_REQUIRE_NETNS=1`` as in CI).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from photonstream.testing.netns import unavailable_reason
from tests.helpers import require_privileges

REPO = Path(__file__).resolve().parents[1]
FRAMES = 40
CAP_MBPS = 40.0  # a slow link: the goodput is measured over ~1 s (24 frames), not a few scheduling slices

pytestmark = pytest.mark.timeout(180)


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "photonstream", "bench", "wan", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, capture_output=True, text=True,
        timeout=170,
    )  # fmt: skip


def test_without_network_namespaces_it_refuses_in_one_line() -> None:
    result = bench("--json", env={"PATH": "/nonexistent"})  # no ip command
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "iproute2" in lines[0], result.stderr


def test_a_tiny_run_reports_every_case_with_sane_figures() -> None:
    require_privileges(unavailable_reason())
    result = bench("--json", "--frames", str(FRAMES), "--delay-ms", "5", "--rate-mbps", str(CAP_MBPS))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.splitlines()[-1])
    assert (summary["frames"], summary["cap_mbps"], summary["delay_ms_each_way"]) == (FRAMES, CAP_MBPS, 5.0)

    raw = summary["raw_tcp_goodput_mbps"]
    assert 0 < raw <= CAP_MBPS * 1.1
    assert summary["raw_tcp_goodput_of_cap"] == pytest.approx(raw / CAP_MBPS, abs=5e-3)  # both sides rounded
    assert summary["raw_tcp_connect_to_first_frame_ms"] > 0
    for case in ("curve", "none"):
        figures = {key.removeprefix(f"{case}_"): value for key, value in summary.items() if key.startswith(case)}
        assert 0 < figures["goodput_mbps"] <= CAP_MBPS * 1.1, figures
        assert 0 < figures["goodput_of_cap"] <= 1.1
        assert figures["goodput_of_cap"] == pytest.approx(figures["goodput_mbps"] / CAP_MBPS, abs=5e-3)
        assert figures["vs_raw"] == pytest.approx(figures["goodput_mbps"] / raw, abs=5e-3)
        assert 0 < figures["create_round_trip_ms"] < figures["request_to_first_frame_ms"]
        assert figures["request_to_first_frame_ms"] <= figures["request_to_last_frame_ms"]
        assert (figures["lost"], figures["duplicated"], figures["completed"]) == (0, 0, True), figures
        assert figures["link_overhead"] > 0  # framing, handshakes (and CURVE's boxes) cross the link too
