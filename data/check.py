"""Audit a dataset before training: every image and mask is read and checked; a summary says what is there.

python -m data.check --manifest path/manifest.csv --heads fibrosis=F0,F1,F2 lift=adequate,partial,non-lifting
python -m data.check --manifest frames.csv --cases cases.csv --heads fibrosis=F0,F1,F2 --folds 5 --stratify fibrosis
python -m data.check --root $ENDOLIFT_DATA/cvc-clinicdb --groups-csv sequences.csv
Exit code 0 when every record is readable and consistent, 2 otherwise (each problem listed on stderr). A case
(group) with frames in more than one split (train / val / test) is an error: its frames would leak between them.
Near-duplicate frames across splits (a val/test frame whose 48x36 grey thumbnail is within --near-duplicate grey
levels, mean absolute difference, of a training frame) are reported too: neighbouring video frames of one
sequence leak as surely as a shared patient id. Label counts are reported per head and split, and per
cross-validation fold with --folds. Every problem is listed in one pass (a bad label does not hide the rest).
Without --heads, the manifest's extra columns are taken as heads and counted by value.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from data.datasets import Record, folder_records, load_raw, manifest_records
from data.splits import development_folds, unit_of

THUMB = (48, 36)


def near_duplicates(
    records: Sequence[Record], thumbs: dict[int, np.ndarray], threshold: float
) -> list[tuple[str, str, float]]:
    """(held-out id, closest training id, mean abs grey difference) for every val/test record whose thumbnail is
    within ``threshold`` grey levels of a training record's."""
    train = [i for i, r in enumerate(records) if r.split in (None, "train") and i in thumbs]
    held = [i for i, r in enumerate(records) if r.split not in (None, "train") and i in thumbs]
    if not train or not held or threshold <= 0:
        return []
    bank = np.stack([thumbs[i] for i in train]).reshape(len(train), -1)
    out = []
    for i in held:
        d = np.abs(bank - thumbs[i].reshape(1, -1)).mean(axis=1)
        j = int(d.argmin())
        if d[j] <= threshold:
            out.append((records[i].id, records[train[j]].id, float(d[j])))
    return out


def audit(
    records: Sequence[Record], heads: dict[str, Sequence[str]], *, near_duplicate: float = 10.0
) -> dict[str, Any]:
    """Read every record; return counts, label distributions, mask coverage and the list of problems."""
    import cv2

    problems: list[str] = []
    coverage, sizes = [], Counter()
    empty_masks = 0
    thumbs: dict[int, np.ndarray] = {}
    for i, r in enumerate(records):
        try:
            s = load_raw(r, list(heads))
        except UserError as e:
            problems.append(str(e))
            continue
        thumbs[i] = cv2.resize(
            cv2.cvtColor(s["image"], cv2.COLOR_RGB2GRAY), THUMB, interpolation=cv2.INTER_AREA
        ).astype(np.float32)
        sizes[f"{s['image'].shape[1]}x{s['image'].shape[0]}"] += 1
        if "mask" in s:
            frac = float(s["mask"].mean())
            coverage.append(frac)
            empty_masks += frac == 0.0
    for kind, key in (("case/group", lambda r: r.group), ("patient", unit_of)):
        splits_of: dict[str, set] = {}
        for r in records if kind == "case/group" else [r for r in records if r.patient]:
            splits_of.setdefault(key(r), set()).add(r.split or "train")  # unsplit = development: train unless carved
        for g, sp in sorted(splits_of.items()):
            if len(sp) > 1:
                problems.append(
                    f"{kind} '{g}' has frames in splits {sorted(sp)}: its frames leak between them "
                    "(put every frame of a patient in one split; an empty split is development data)"
                )

    dups = near_duplicates(records, thumbs, near_duplicate)
    for held, train, d in dups[:20]:
        problems.append(
            f"near-duplicate across splits: {held} is within {d:.1f} grey levels of training frame "
            f"{train} (48x36 thumbnails; --near-duplicate sets the threshold)"
        )
    if len(dups) > 20:
        problems.append(f"... and {len(dups) - 20} more near-duplicate held-out frames ({len(dups)} in all)")

    def count(rs: Sequence[Record]) -> dict[str, dict[str, int]]:
        return {
            h: dict(Counter(c[r.labels.get(h, -1)] if r.labels.get(h, -1) >= 0 else "unknown" for r in rs))
            for h, c in heads.items()
        }

    labels = count(records)
    by_split = {  # an empty split is development data (train / validation / cross-validation), never test
        sp: count([r for r in records if (r.split or "development") == sp])
        for sp in sorted({r.split or "development" for r in records})
    }
    cov = np.array(coverage) if coverage else np.zeros(1)
    return {
        "records": len(records),
        "groups": len({r.group for r in records}),
        "patients": len({unit_of(r) for r in records}),
        "with_mask": len(coverage),
        "empty_masks": empty_masks,
        "mask_coverage_median": round(float(np.median(cov)), 4),
        "mask_coverage_range": [round(float(cov.min()), 4), round(float(cov.max()), 4)],
        "sizes": dict(sizes.most_common(5)),
        "labels": labels,
        "labels_by_split": by_split,
        "near_duplicates": len(dups),
        "problems": problems,
    }


def fold_table(
    records: Sequence[Record], folds: Sequence[int], heads: dict[str, Sequence[str]], k: int
) -> dict[int, dict[str, Any]]:
    """Per cross-validation fold: frames, cases and patients, and per head the labels counted by frame and by
    case (a case's label: its frames' most frequent known label)."""
    out: dict[int, dict[str, Any]] = {}
    for f in range(k):
        rs = [r for r, fi in zip(records, folds) if fi == f]
        by_case: dict[str, list[int]] = {}
        row: dict[str, Any] = {
            "frames": len(rs),
            "cases": len({r.group for r in rs}),
            "patients": len({unit_of(r) for r in rs}),
        }
        for h, classes in heads.items():
            by_case = {}
            for r in rs:
                if r.labels.get(h, -1) >= 0:
                    by_case.setdefault(r.group, []).append(r.labels[h])
            frames = Counter(classes[r.labels[h]] if r.labels.get(h, -1) >= 0 else "unknown" for r in rs)
            cases = Counter(classes[max(set(v), key=v.count)] for v in by_case.values())
            row[h] = {"frames": dict(frames), "cases": dict(cases)}
        out[f] = row
    return out


def heads_from_columns(manifest: Path, cases: str | None, covariates: Sequence[str]) -> dict[str, list[str]]:
    """Head columns of a manifest (and case table) when --heads is not given: every column that is not a known
    field, with its distinct values (sorted) as classes."""
    from data.manifest_tables import read_table

    known = {"image", "mask", "group", "split", "patient", "centre", *covariates}
    values: dict[str, set] = {}
    tables = [read_table(manifest)] + ([read_table(manifest.parent / cases)] if cases else [])
    for rows in tables:
        for row in rows:
            for k, v in row.items():
                if k not in known and v not in (None, ""):
                    values.setdefault(k, set()).add(str(v).strip())
    return {h: sorted(v) for h, v in values.items()}


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
    ap.add_argument("--repeat", type=int, default=0, help="repeat of a repeated cross-validation (data.cv.repeat)")
    ap.add_argument(
        "--group",
        choices=("column", "frame"),
        default="column",
        help="column: the manifest's group column names each frame's case (required); frame: every frame is its "
        "own case (data.group=frame)",
    )
    ap.add_argument(
        "--near-duplicate",
        type=float,
        default=10.0,
        help="grey-level threshold for near-duplicate frames across splits (0 = off)",
    )
    a = ap.parse_args(argv)
    label_problems: list[str] = []
    try:
        heads = {h: c.split(",") for h, c in (x.split("=", 1) for x in a.heads)}
        if a.manifest and not a.heads:
            heads = heads_from_columns(Path(a.manifest), a.cases, a.covariates)
        records = (
            manifest_records(
                a.manifest, heads=heads, cases=a.cases, covariates=a.covariates, errors=label_problems, group=a.group
            )
            if a.manifest
            else folder_records(a.root, groups_csv=a.groups_csv, split_file=a.split_file, require_masks=False)
        )
        folds = None
        if a.folds:  # the development records only, by the function train.py uses: the same folds
            dev = [r for r in records if r.split != "test"]
            folds = development_folds(dev, folds=a.folds, seed=a.seed, repeat=a.repeat, stratify_head=a.stratify)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    report = audit(records, heads, near_duplicate=a.near_duplicate)
    report["problems"] = label_problems + report["problems"]
    if folds is not None:
        report["labels_by_fold"] = fold_table(dev, folds, heads, a.folds)
    for p in report.pop("problems"):
        print(f"error: {p}", file=sys.stderr)
        report.setdefault("n_problems", 0)
        report["n_problems"] += 1
    for k, v in report.items():
        print(f"{k}: {v}")
    return 2 if report.get("n_problems") else 0


if __name__ == "__main__":
    sys.exit(main())
