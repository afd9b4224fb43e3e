"""Audit a dataset before training: every image and mask is read and checked; a summary says what is there.

python -m data.check --manifest path/manifest.csv --heads fibrosis=F0,F1,F2 lift=adequate,partial,non-lifting
python -m data.check --manifest frames.csv --cases cases.csv --heads fibrosis=F0,F1,F2 --folds 5 --stratify fibrosis
python -m data.check --root ../shared/data/cvc-clinicdb --groups-csv sequences.csv
Exit code 0 when every record is readable and consistent, 2 otherwise (each problem listed on stderr). A case
(group) with frames in more than one split (train / val / test) is an error: its frames would leak between them.
Label counts are reported per head and split, and per cross-validation fold with --folds.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from typing import Any, Sequence

import numpy as np

from data.datasets import Record, folder_records, load_raw, manifest_records
from data.errors import UserError
from data.splits import group_kfold


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
    splits_of: dict[str, set] = {}
    for r in records:
        splits_of.setdefault(r.group, set()).add(r.split)
    for g, sp in sorted(splits_of.items()):
        named = sorted(x for x in sp if x)
        if len(named) > 1:
            problems.append(f"case/group '{g}' has frames in splits {named}: its frames leak between them "
                            "(put every frame of a patient in one split)")

    def count(rs: Sequence[Record]) -> dict[str, dict[str, int]]:
        return {h: dict(Counter(c[r.labels.get(h, -1)] if r.labels.get(h, -1) >= 0 else "unknown" for r in rs))
                for h, c in heads.items()}

    labels = count(records)
    by_split = {sp: count([r for r in records if (r.split or "unsplit") == sp])
                for sp in sorted({r.split or "unsplit" for r in records})}
    cov = np.array(coverage) if coverage else np.zeros(1)
    return {"records": len(records), "groups": len({r.group for r in records}), "with_mask": len(coverage),
            "empty_masks": empty_masks, "mask_coverage_median": float(np.median(cov)),
            "mask_coverage_range": [float(cov.min()), float(cov.max())], "sizes": dict(sizes.most_common(5)),
            "labels": labels, "labels_by_split": by_split, "problems": problems}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--root", help="folder with images/ and masks/")
    src.add_argument("--manifest", help="CSV or JSONL manifest")
    ap.add_argument("--groups-csv", default=None)
    ap.add_argument("--split-file", default=None)
    ap.add_argument("--heads", nargs="*", default=[], help="head=class1,class2,... for manifest labels")
    ap.add_argument("--cases", default=None, help="case table (relative to the manifest) with per-case labels")
    ap.add_argument("--covariates", nargs="*", default=[], help="covariate columns of the case table to check")
    ap.add_argument("--folds", type=int, default=None, help="report label counts per patient-level CV fold")
    ap.add_argument("--stratify", default=None, help="head whose labels balance the folds")
    ap.add_argument("--seed", type=int, default=0, help="fold seed (data.cv.seed)")
    a = ap.parse_args(argv)
    try:
        heads = {h: c.split(",") for h, c in (x.split("=", 1) for x in a.heads)}
        records = (manifest_records(a.manifest, heads=heads, cases=a.cases, covariates=a.covariates) if a.manifest
                   else folder_records(a.root, groups_csv=a.groups_csv, split_file=a.split_file, require_masks=False))
        folds = None
        if a.folds:
            strat = (lambda r: r.labels.get(a.stratify) if r.labels.get(a.stratify, -1) >= 0 else None) \
                if a.stratify else None
            folds = group_kfold(records, k=a.folds, seed=a.seed, stratify_of=strat)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = audit(records, heads)
    if folds is not None:
        report["labels_by_fold"] = {f: {h: dict(Counter(heads[h][r.labels[h]] if r.labels.get(h, -1) >= 0 else
                                                        "unknown" for r, fi in zip(records, folds) if fi == f))
                                        for h in heads} for f in range(a.folds)}
    for p in report.pop("problems"):
        print(f"error: {p}", file=sys.stderr)
        report.setdefault("n_problems", 0)
        report["n_problems"] += 1
    for k, v in report.items():
        print(f"{k}: {v}")
    return 2 if report.get("n_problems") else 0


if __name__ == "__main__":
    sys.exit(main())
