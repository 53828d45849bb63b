"""report.html rendered in a real headless Chromium: charts present with real data, ranking, verdict, pixels.

Needs Debian's ``chromium``; without it the test fails unless ``FLEETPILOT_ALLOW_SKIP=1``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleetpilot.agent.replay import replay
from fleetpilot.agent.report import write_report
from fleetpilot.policies.oracle import OraclePolicy
from fleetpilot.simulations.fleet import Decision
from fleetpilot.simulations.goal import load_goal
from fleetpilot.simulations.traces import load_traces

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("FLEETPILOT_ALLOW_SKIP") == "1":
        pytest.skip("chromium not installed (FLEETPILOT_ALLOW_SKIP=1)")
    pytest.fail("chromium is not installed: apt-get install chromium (or set FLEETPILOT_ALLOW_SKIP=1)")


def _run_chromium(exe: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


class _Static:
    def __init__(self, n: int, name: str) -> None:
        self.n, self.name = n, name

    def initial_state(self) -> None:
        return None

    def decide(self, obs, state):  # noqa: ANN001
        return Decision({m: self.n for m in obs.models}), state


class _DOM(HTMLParser):
    """Collects svg charts (with their series paths and target lines), ranking rows and the verdict."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: list[dict] = []
        self.rows: list[str] = []
        self.verdict: dict | None = None
        self._svg: dict | None = None
        self._in_verdict = 0
        self.verdict_text = ""
        self._in_table = False

    def handle_starttag(self, tag: str, attrs) -> None:  # noqa: ANN001
        a = dict(attrs)
        if tag == "svg" and "chart" in (a.get("class") or "").split():
            self._svg = {"chart": a.get("data-chart"), "policy": a.get("data-policy"), "paths": [], "targets": 0}
        elif tag == "path" and self._svg is not None and "series" in (a.get("class") or "").split():
            self._svg["paths"].append(a.get("d") or "")
        elif tag == "line" and self._svg is not None and "target" in (a.get("class") or "").split():
            self._svg["targets"] += 1
        elif tag == "table" and a.get("id") == "ranking":
            self._in_table = True
        elif tag == "tr" and self._in_table and a.get("data-policy"):
            self.rows.append(a["data-policy"])
        elif tag == "section" and a.get("id") == "verdict":
            self.verdict = a
            self._in_verdict = 1
        elif self._in_verdict and tag == "section":
            self._in_verdict += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg" and self._svg is not None:
            self.charts.append(self._svg)
            self._svg = None
        elif tag == "table":
            self._in_table = False
        elif tag == "section" and self._in_verdict:
            self._in_verdict -= 1

    def handle_data(self, data: str) -> None:
        if self._in_verdict:
            self.verdict_text += data


def _png_pixels(path: Path, max_rows: int | None = None) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA PNG (what Chromium writes) into rows of raw pixels (the first ``max_rows``)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height if max_rows is None else min(height, max_rows)):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, [bytes(r) for r in rows]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    goal = load_goal(ROOT / "examples/goals/single-model.yaml")
    trace = load_traces(["azure_llm_2023_conv_1s"], (0.0, 1200.0)).scale_to_peak(250)
    pols = [_Static(12, "static-12"), _Static(3, "static-3"), OraclePolicy(goal)]
    try:
        from fleetpilot.policies.registry import make as make_policy

        pols[1:1] = [make_policy("hpa", goal), make_policy("keda", goal)]
    except ImportError:
        pass
    res = replay(goal, trace, pols, seed=4, tick_s=1.0)
    out = tmp_path_factory.mktemp("report")
    write_report(res, out)
    return res, out


def test_report_renders_in_chromium(report, tmp_path) -> None:
    exe = _chromium()
    res, out = report
    page = out / "report.html"
    html = page.read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html, "self-contained"
    dom = _run_chromium(exe, tmp_path / "profile", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    parser = _DOM()
    parser.feed(dom.stdout)
    summary = json.loads((out / "summary.json").read_text())
    names = list(summary["policies"])

    # every policy has its four charts, each with at least one path of real points
    for name in names:
        kinds = {c["chart"]: c for c in parser.charts if c["policy"] == name}
        assert set(kinds) >= {"traffic", "ttft", "replicas", "cost"}, (name, set(kinds))
        for kind, c in kinds.items():
            pts = [len(re.findall(r"[MLHV]", d)) for d in c["paths"]]
            assert pts and max(pts) >= 20, (name, kind, pts)
            coords = re.findall(r"-?\d+\.\d", " ".join(c["paths"]))
            assert len(set(coords)) > 10, (name, kind)
        assert kinds["ttft"]["targets"] == 1, "the TTFT chart draws the target line"

    # the ranked table lists every policy, cheapest first
    by_cost = sorted(names, key=lambda n: summary["policies"][n]["cost_usd"])
    assert parser.rows == by_cost

    # the verdict names the cheapest policy that met the goal (the oracle is the yardstick, not a candidate)
    met = [n for n in by_cost if summary["policies"][n]["met_goal"] and not summary["policies"][n]["is_oracle"]]
    assert parser.verdict is not None
    if met:
        assert parser.verdict["data-cheapest"] == met[0] == summary["cheapest_meeting_goal"]
        assert met[0] in parser.verdict_text and "cheapest" in parser.verdict_text
    else:
        assert parser.verdict["data-cheapest"] == ""
        assert "no policy met the goal" in parser.verdict_text

    # a real screenshot: big, and not a single colour
    png = tmp_path / "shot.png"
    shot = _run_chromium(exe, tmp_path / "profile2", f"--screenshot={png}", "--window-size=1400,3000", page.as_uri())
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    assert png.stat().st_size > 30_000
    width, height, rows = _png_pixels(png, max_rows=1500)  # the top half holds the verdict, table and charts
    assert (width, height) == (1400, 3000)
    bpp = len(rows[0]) // width
    colours: dict[bytes, int] = {}
    for y in range(0, len(rows), 5):
        r = rows[y]
        for x in range(0, width, 5):
            px = r[x * bpp:x * bpp + 3]
            colours[px] = colours.get(px, 0) + 1
    total = sum(colours.values())
    assert len(colours) > 50, "many distinct colours (text, charts, badges)"
    assert max(colours.values()) / total < 0.9, "not one flat background"
    # policy colours appear in the pixels (the first palette colour, #0072B2, is the first non-oracle policy)
    assert any(abs(p[0] - 0x00) < 25 and abs(p[1] - 0x72) < 25 and abs(p[2] - 0xB2) < 25 for p in colours)
