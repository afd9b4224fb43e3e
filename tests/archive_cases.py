"""Case folders for the index and review-app tests: one real infer.py run on the bundled clip (made once per test
process, about 10 s), copied into as many case folders as a test needs, plus hand-made summaries for the edge cases.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.conftest import ROOT, run_script

CLIP = ROOT / "samples" / "clinicdb_seq6.mp4"
HOSTILE = "<img src=x onerror=alert(1)>"
FORMULA = "=HYPERLINK(x)"
_REVIEWED: list[Path] = []


def reviewed_case(tmp_path_factory) -> Path:
    """The folder infer.py writes for the bundled clip with the original video beside the overlay (made once)."""
    if not _REVIEWED:
        out = tmp_path_factory.mktemp("reviewed") / "clip"
        p = run_script("infer.py", f"input={CLIP}", f"out_dir={out}", "review.original_video=true")
        assert p.returncode == 0, p.stderr[-2000:]
        _REVIEWED.append(out)
    return _REVIEWED[0]


def copy_case(src: Path, dst: Path, *, original: bool = True, source: str | None = None) -> Path:
    """A copy of a case folder; ``original=False`` drops the original video, ``source`` rewrites the input that
    config.yaml names."""
    shutil.copytree(src, dst)
    if not original:
        for p in dst.glob("*_original.mp4"):
            p.unlink()
    if source is not None:
        cfg = dst / "config.yaml"
        lines = [f"input: {source}" if ln.startswith("input:") else ln for ln in cfg.read_text().splitlines()]
        cfg.write_text("\n".join(lines) + "\n")
    return dst


def hand_made(folder: Path, summary: dict | str) -> Path:
    """A case folder holding only a summary.json (a dict, or raw text for a damaged one)."""
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    return folder
