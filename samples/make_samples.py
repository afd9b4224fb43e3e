"""Rebuild the bundled demo data from the public datasets in ../shared/data (run from the repo root).

python samples/make_samples.py
- samples/clinicdb_seq6.mp4: the 23 frames of CVC-ClinicDB sequence 6 in order, 8 frames/s, H.264 (crf 18).
  Sequence 6 is held out of training by the default model's group-wise validation split (its frames are never
  trained on; they were used only to pick the best epoch), and 2 of its frames are in the PraNet test list.
- samples/clinicdb_seq6_masks/clinicdb_seq6_<frame index>.png: the matching ground-truth masks (0/255).
- samples/images/, samples/masks/: four Kvasir-SEG test-split images and masks (PraNet test list).
Licences: see samples/README.md (research and education only).
"""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from core.files import write_image_atomic  # noqa: E402
from data.io import read_image, read_mask  # noqa: E402
from data.video import VideoWriter  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
KVASIR_SAMPLES = [
    "cju0u82z3cuma0835wlxrnrjv",
    "cju1cbokpuiw70988j4lq1fpi",
    "cju2hqt33lmra0988fr5ijv8j",
    "cju7ajnbo1gvm098749rdouk0",
]


def main() -> None:
    clinic = SHARED / "cvc-clinicdb"
    with (clinic / "sequences.csv").open() as f:
        frames = sorted(int(r["frame"]) for r in csv.DictReader(f) if r["sequence"] == "6")
    out = ROOT / "samples"
    mask_dir = out / "clinicdb_seq6_masks"
    shutil.rmtree(mask_dir, ignore_errors=True)
    first = read_image(clinic / "images" / f"{frames[0]}.png")
    with VideoWriter(out / "clinicdb_seq6.mp4", fps=8, width=first.shape[1], height=first.shape[0], crf=18) as w:
        for i, n in enumerate(frames):
            w.write(read_image(clinic / "images" / f"{n}.png"))
            write_image_atomic(mask_dir / f"clinicdb_seq6_{i:06d}.png", read_mask(clinic / "masks" / f"{n}.png") * 255)
    kv = SHARED / "kvasir-seg"
    for sub in ("images", "masks"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for name in KVASIR_SAMPLES:
            shutil.copy2(kv / sub / f"{name}.jpg", out / sub / f"{name}.jpg")
    print(f"wrote {len(frames)} frames (ClinicDB {frames[0]}..{frames[-1]}) and {len(KVASIR_SAMPLES)} Kvasir images")


if __name__ == "__main__":
    main()
