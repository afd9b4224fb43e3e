"""A real browser opens the report: headless Chromium (Debian package `chromium`, installed by .ci/run)."""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from tests.conftest import run_script

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (apt-get install chromium; .ci/run does)")
def test_report_opens_and_video_is_playable(tmp_path, tiny_checkpoint, synthetic_video):
    out = tmp_path / "out"
    p = run_script("infer.py", f"input={synthetic_video}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 0, p.stderr[-2000:]
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--autoplay-policy=no-user-gesture-required", "--virtual-time-budget=8000", "--dump-dom",
           (out / "report.html").as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    body = re.search(r"<body[^>]*>", r.stdout)
    assert body, r.stderr[-2000:]
    assert 'data-video="canplay"' in body.group(0), f"video never became playable: {body.group(0)}"
    assert "data-js-error" not in body.group(0)
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert not console, console
