"""A picture of a report page as a desktop browser shows it, taken by headless Chromium (Debian package ``chromium``).

python -m review.screenshot outputs/infer/report.html docs/images/report_desktop.png --width 1280

For the README and for checking the layout by eye. The window is made tall enough for a whole report and the
blank page below the content is cut off; the PNG is reduced to 256 colours (the report is flat colours plus a few
video frames), which keeps it a few hundred KB. The flags that make Chromium run headless, offline and quietly are
shared with the report's browser test (tests/test_report_browser.py), so the picture shows what the test checks.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import atomic_write

INSTALL = "install it (Debian/Ubuntu: apt-get install chromium) or put chromium on PATH"


def find_chromium() -> str | None:
    """Google Chrome first where installed (GitHub's runners ship it; their open-source Chromium build has no H.264
    decoder), else Debian's or Ubuntu's Chromium (which plays H.264)."""
    return shutil.which("google-chrome") or shutil.which("chromium") or shutil.which("chromium-browser")


def headless(chromium: str, profile: Path, *args: str) -> list[str]:
    """A headless Chromium command line that never touches the network or the user's profile; media play without a
    click and ``--virtual-time-budget`` lets the page load its videos before Chromium prints or captures it."""
    return [
        chromium,
        "--headless",
        *(["--no-sandbox"] if os.geteuid() == 0 else []),  # Chromium refuses to run as root with its sandbox
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--autoplay-policy=no-user-gesture-required",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
        *args,
    ]


def trim_bottom(rgb: np.ndarray, margin: int = 16) -> np.ndarray:
    """Cut the rows below the page's content (all the colour of the last row), keeping ``margin`` of them."""
    blank = np.all(rgb == rgb[-1], axis=(1, 2))
    content = np.flatnonzero(~blank)
    return rgb if content.size == 0 else rgb[: min(len(rgb), int(content[-1]) + 1 + margin)]


def screenshot(page: Path, png: Path, *, width: int = 1280, height: int = 4000, timeout: float = 120) -> Path:
    """Capture ``page`` (an HTML file) at ``width`` CSS pixels into ``png``, cut to the page's content."""
    from PIL import Image

    chromium = find_chromium()
    if chromium is None:
        raise UserError(f"Chromium not found: {INSTALL}")
    page = Path(page).resolve()
    if not page.is_file():
        raise UserError(f"page not found: {page} (run infer.py on a video first; it writes report.html)")
    with tempfile.TemporaryDirectory(prefix="endolift-shot-") as tmp:
        raw = Path(tmp) / "shot.png"
        try:
            r = subprocess.run(
                headless(
                    chromium,
                    Path(tmp) / "profile",
                    f"--screenshot={raw}",
                    f"--window-size={width},{height}",
                    page.as_uri(),
                ),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise UserError(f"Chromium took over {timeout:.0f} s on {page}: try again on a less busy machine") from None
        if not raw.is_file():
            raise UserError(f"Chromium wrote no screenshot of {page}: {r.stderr.strip()[-500:]}")
        rgb = trim_bottom(np.asarray(Image.open(raw).convert("RGB")))
    with atomic_write(png) as out:
        Image.fromarray(rgb).quantize(256, method=Image.Quantize.FASTOCTREE).save(out, optimize=True)
    return Path(png)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", type=Path, help="report.html (or any HTML file)")
    ap.add_argument("png", type=Path, help="the PNG to write")
    ap.add_argument("--width", type=int, default=1280, help="window width in CSS pixels")
    ap.add_argument("--height", type=int, default=4000, help="window height; the blank part below is cut off")
    a = ap.parse_args(argv)
    try:
        out = screenshot(a.page, a.png, width=a.width, height=a.height)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{out} ({out.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
