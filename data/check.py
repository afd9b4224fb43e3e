"""Audit a dataset before training: every image and mask is read and checked; a summary says what is there.

python -m data.check --manifest path/manifest.csv --heads fibrosis=F0,F1,F2 lift=adequate,partial,non-lifting
python -m data.check --root ../shared/data/cvc-clinicdb --groups-csv sequences.csv
Exit code 0 when every record is readable and consistent, 2 otherwise (each problem listed on stderr).
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any, Sequence

import numpy as np

from data.datasets import Record, folder_records, load_raw, manifest_records
from data.errors import UserError


def audit(records: Sequence[Record], heads: dict[str, Sequence[str]]) -> dict[str, Any]:
    """Read every record; return counts, label distributions, mask coverage and the list of problems."""
    problems: list[str] = []
    coverage, sizes = [], Counter()
    empty_masks = 0
    for r in records:
        try:
            s = load_raw(r, list(heads))
        except UserError as e:
            problems.append(str(e))
            continue
        sizes[f"{s['image'].shape[1]}x{s['image'].shape[0]}"] += 1
        if "mask" in s:
            frac = float(s["mask"].mean())
            coverage.append(frac)
            empty_masks += frac == 0.0
    labels = {h: Counter(c[r.labels.get(h, -1)] if r.labels.get(h, -1) >= 0 else "unknown" for r in records)
              for h, c in heads.items()}
    cov = np.array(coverage) if coverage else np.zeros(1)
    return {"records": len(records), "groups": len({r.group for r in records}), "with_mask": len(coverage),
            "empty_masks": empty_masks, "mask_coverage_median": float(np.median(cov)),
            "mask_coverage_range": [float(cov.min()), float(cov.max())], "sizes": dict(sizes.most_common(5)),
            "labels": {h: dict(c) for h, c in labels.items()}, "problems": problems}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="folder with images/ and masks/")
    src.add_argument("--manifest", help="CSV or JSONL manifest")
    ap.add_argument("--groups-csv", default=None)
    ap.add_argument("--split-file", default=None)
    ap.add_argument("--heads", nargs="*", default=[], help="head=class1,class2,... for manifest labels")
    a = ap.parse_args(argv)
    try:
        heads = {h: c.split(",") for h, c in (x.split("=", 1) for x in a.heads)}
        records = (manifest_records(a.manifest, heads=heads) if a.manifest else
                   folder_records(a.root, groups_csv=a.groups_csv, split_file=a.split_file, require_masks=False))
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = audit(records, heads)
    for p in report.pop("problems"):
        print(f"error: {p}", file=sys.stderr)
        report.setdefault("n_problems", 0)
        report["n_problems"] += 1
    for k, v in report.items():
        print(f"{k}: {v}")
    return 2 if report.get("n_problems") else 0


if __name__ == "__main__":
    sys.exit(main())
