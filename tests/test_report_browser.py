"""A real browser opens the report: headless Chromium (Debian package `chromium`, installed by .ci/run).

One report (two synchronised videos, a hostile file name) is opened once: a copy of the page beside it, with a
script appended that clicks like a reviewer, records what happened in ``document.body.dataset`` and lets Chromium
dump the DOM; the product page itself carries nothing for the test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from review.screenshot import find_chromium, headless, screenshot
from tests.test_infer import infer_in_process

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)"
)
STEM = "<img src=x onerror=alert(1)>"
FPS, FRAMES = 10, 12

# Clicks the timeline at its 00:00.60 tick (a PointerEvent, as a mouse press sends), then the last key frame's
# picture, then moves the overlay slider to 0; records the video times, the playhead and the overlay's opacity.
CLICKS = """<script>
(function () {
  var b = document.body, v = document.getElementById("overlay"), o = document.getElementById("original");
  b.dataset.h264 = v.canPlayType('video/mp4; codecs="avc1.42E01E"') || "no";
  function once(el, name, f) { el.addEventListener(name, f, {once: true}); }
  function clickTimeline() {
    var svg = document.getElementById("timeline"), box = svg.getBoundingClientRect();
    var tick = Array.from(svg.querySelectorAll("text.xtick")).find(function (t) {
      return t.textContent === "00:00.60";
    });
    var r = tick.getBoundingClientRect(), at = {bubbles: true, pointerId: 1, clientX: r.left + r.width / 2,
                                                clientY: box.top + box.height / 2};
    once(v, "seeked", function () {
      b.dataset.timelineSeek = v.currentTime;
      b.dataset.originalAt = o.currentTime;
      b.dataset.playhead = document.getElementById("playhead").getAttribute("x1");
      b.dataset.tickX = tick.getAttribute("x");
      clickKeyFrame();
    });
    svg.dispatchEvent(new PointerEvent("pointerdown", at));
    window.dispatchEvent(new PointerEvent("pointerup", at));
  }
  function clickKeyFrame() {
    var figures = document.querySelectorAll(".kf figure"), last = figures[figures.length - 1];
    once(v, "seeked", function () {
      b.dataset.keyframeSeek = v.currentTime;
      b.dataset.keyframeCaption = last.querySelector("figcaption").textContent;
      var mix = document.getElementById("mix");
      mix.value = "0";
      mix.dispatchEvent(new Event("input"));
      b.dataset.overlayOpacity = getComputedStyle(v).opacity;
      b.dataset.done = "yes";
    });
    last.querySelector("img").dispatchEvent(new MouseEvent("click", {bubbles: true}));
  }
  if (v.readyState >= 3) { clickTimeline(); } else { once(v, "canplay", clickTimeline); }
})();
</script>
"""


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_checkpoint) -> Path:
    """report.html of a 12-frame, 10 frames/s clip named like an attack, with the original video beside the
    overlay (threshold near 0: a lesion in every frame, so a segment and key frames exist)."""
    from data.synthetic import synthetic_frame
    from data.video import VideoWriter

    tmp = tmp_path_factory.mktemp("browser")
    clip = tmp / f"{STEM}.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(clip, fps=FPS, width=96, height=64) as w:
        for _ in range(FRAMES):
            w.write(synthetic_frame(rng, (64, 96))["image"])
    failures = infer_in_process(
        f"input='{clip}'",
        f"out_dir={tmp / 'out'}",
        f"checkpoint={tiny_checkpoint}",
        "review.original_video=true",
        "review.threshold=0.001",
    )
    assert failures == [], failures  # exit code 0
    return tmp / "out" / "report.html"


def test_report_plays_and_seeks_in_a_real_browser(report, tmp_path):
    page = report.with_name("clicked.html")  # beside the report: the videos' relative URLs still resolve
    page.write_text(report.read_text().replace("</body>", CLICKS + "</body>"))
    for attempt in range(3):  # Chromium's virtual-time budget can run out before a seek lands on a loaded machine
        r = subprocess.run(
            headless(
                CHROMIUM,
                tmp_path / f"profile{attempt}",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
                page.as_uri(),
            ),
            capture_output=True,
            text=True,
            timeout=120,
        )
        body = re.search(r"<body[^>]*>", r.stdout)
        assert body, r.stderr[-2000:]
        state = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(0)))
        if state.get("done") == "yes" or "js-error" in state:
            break
    if state.get("h264") == "no":  # e.g. an open-source Chromium build without proprietary codecs
        pytest.skip(f"{CHROMIUM} cannot play H.264 video; Debian's chromium or Google Chrome can")
    assert state.get("video") == "canplay", f"video never became playable: {body.group(0)}"
    assert "js-error" not in state and state.get("done") == "yes", state
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
    frame = 1 / FPS
    # the timeline's 00:00.60 mark seeks there, the original follows, the playhead sits on the mark
    assert abs(float(state["timeline-seek"]) - 0.6) < frame and float(state["original-at"]) == float(
        state["timeline-seek"]
    )
    assert abs(float(state["playhead"]) - float(state["tick-x"])) < 900 / FRAMES
    # a key frame seeks to the time in its caption; the slider fades the overlay out
    caption = re.search(r"at (\d\d):(\d\d\.\d\d)", state["keyframe-caption"])
    assert abs(float(state["keyframe-seek"]) - (60 * int(caption[1]) + float(caption[2]))) < frame
    assert float(state["overlay-opacity"]) == 0
    # the hostile name is text: no element was made of it, nothing ran
    assert "<img src=x" not in r.stdout and '<img src="x"' not in r.stdout and "&lt;img src=x" in r.stdout


def test_screenshot_command(report, tmp_path):
    png = screenshot(report, tmp_path / "shot.png", width=800, height=1600)
    from PIL import Image

    with Image.open(png) as im:
        assert im.width == 800 and 400 < im.height <= 1600
