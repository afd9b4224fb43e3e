"""Check (and complete) a downloaded copy of the public datasets in the layout the configs expect.

    python -m data.layout --root /data/endolift            # check: file counts, names, lists; exit 2 on problems
    python -m data.layout --root /data/endolift --install  # also copy the split lists shipped in data/lists/

Then point the configs at it: ``export ENDOLIFT_DATA=/data/endolift`` (configs/paths/default.yaml).

Expected layout (the official downloads, folders renamed where noted):

    $ENDOLIFT_DATA/kvasir-seg/images/*.jpg    1000   Kvasir-SEG (kvasir-seg.zip from Simula: Kvasir-SEG/images)
    $ENDOLIFT_DATA/kvasir-seg/masks/*.jpg     1000   (Kvasir-SEG/masks)
    $ENDOLIFT_DATA/cvc-clinicdb/images/N.*     612   CVC-ClinicDB "Original/" (TIFF or PNG, named 1..612)
    $ENDOLIFT_DATA/cvc-clinicdb/masks/N.*      612   CVC-ClinicDB "Ground Truth/"
    .../kvasir-seg/splits/{pranet_train,pranet_test,kvasir_sessile_subset}.txt       from data/lists/ (--install)
    .../cvc-clinicdb/splits/{pranet_train,pranet_test}.txt, .../cvc-clinicdb/sequences.csv   likewise

The split lists are the "PraNet protocol" (PraNet's released test names; the rest is training) and the 196
Kvasir-Sessile names; sequences.csv maps each CVC-ClinicDB frame to its video sequence (from the dataset's own
README). Both datasets are for research and education only (see README, Licences).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from core.files import atomic_write
from data.io import IMAGE_EXTS

LISTS = Path(__file__).resolve().parent / "lists"
EXPECTED = {  # dataset -> (folder -> count), list files shipped in data/lists/<dataset>/ and where they go
    "kvasir-seg": (
        {"images": 1000, "masks": 1000},
        {"pranet_train.txt": "splits", "pranet_test.txt": "splits", "kvasir_sessile_subset.txt": "splits"},
    ),
    "cvc-clinicdb": (
        {"images": 612, "masks": 612},
        {"pranet_train.txt": "splits", "pranet_test.txt": "splits", "sequences.csv": "."},
    ),
}


def public_data_problems(root: Path, *, install: bool = False) -> list[str]:
    """Problems with the copy under ``root`` (empty = ready)."""
    problems = []
    for name, (folders, lists) in EXPECTED.items():
        base = root / name
        stems: dict[str, set[str]] = {}
        for folder, n in folders.items():
            d = base / folder
            files = [p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS] if d.is_dir() else []
            stems[folder] = {p.stem for p in files}
            if len(files) != n:
                problems.append(f"{d}: {len(files)} images, expected {n}")
        if stems.get("images") and stems.get("masks") and stems["images"] != stems["masks"]:
            problems.append(f"{base}: images and masks differ in {len(stems['images'] ^ stems['masks'])} names")
        for fname, sub in lists.items():
            src, dst = LISTS / name / fname, base / sub / fname
            if install and base.is_dir() and not dst.is_file():
                with atomic_write(dst) as tmp:
                    shutil.copyfile(src, tmp)
            if not dst.is_file():
                problems.append(f"{dst} is missing (run with --install to copy it from {src})")
            elif dst.read_bytes() != src.read_bytes():
                problems.append(f"{dst} differs from the shipped {src}")
            elif fname.endswith(".txt") and stems.get("images"):
                missing = [s for s in (x.strip() for x in dst.read_text().split()) if s and s not in stems["images"]]
                if missing:
                    problems.append(f"{dst}: {len(missing)} listed names have no image, e.g. {missing[0]}")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Check a downloaded copy of Kvasir-SEG and CVC-ClinicDB")
    ap.add_argument("--root", required=True, help="the folder ENDOLIFT_DATA will point at")
    ap.add_argument("--install", action="store_true", help="copy the shipped split lists into place")
    a = ap.parse_args(argv)
    root = Path(a.root)
    if not root.is_dir():
        print(
            f"error: {root} is not a folder (download the datasets there, see python -m data.layout --help)",
            file=sys.stderr,
        )
        return 2
    problems = public_data_problems(root, install=a.install)
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if not problems:
        print(f"{root}: Kvasir-SEG and CVC-ClinicDB complete; use it with ENDOLIFT_DATA={root}")
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
