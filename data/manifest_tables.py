"""The tables a dataset is described by, read and checked: a manifest's or case table's rows (CSV or JSONL), its
``split`` column and which rows a requested split takes, ``cases.csv`` by group, and one label or covariate value
as data.datasets reads it (data.convert writes values these readers take).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError

SPLITS = ("train", "val", "test")  # a manifest's ``split`` column; empty = development (train / validation / CV)
DEVELOPMENT = (None, "train", "val")


def split_matches(row_split: str | None, wanted: str | None) -> bool:
    """Whether a row of split ``row_split`` belongs to the requested split ``wanted``.

    None wanted = every row. ``train`` = the development rows (train, val and unsplit: cross-validation and the
    validation carve happen inside them). ``val`` / ``test`` = exactly those rows. An unsplit row is development
    data and never part of a test set."""
    if wanted is None:
        return True
    if wanted == "train":
        return row_split in DEVELOPMENT
    return row_split == wanted


UNKNOWN_VALUES = ("", "na", "nan", "unknown")  # a covariate value (any case) that means unknown


def parse_label(value: Any, head: str, classes: Sequence[str] | None, where: str) -> int:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        return -1
    text = str(value).strip()
    if classes is not None and text in classes:
        return list(classes).index(text)
    try:
        idx = int(float(text))
    except ValueError:
        raise UserError(f"{where}: label '{text}' for head '{head}' is not one of {list(classes or [])}") from None
    n = len(classes) if classes is not None else None
    if idx < -1 or (n is not None and idx >= n):
        raise UserError(f"{where}: label {idx} for head '{head}' is outside 0..{(n or 1) - 1} (or -1/empty = unknown)")
    return idx


def label_or_report(value: Any, head: str, classes: Sequence[str] | None, where: str, errors: list[str] | None) -> int:
    try:
        return parse_label(value, head, classes, where)
    except UserError as e:
        if errors is None:
            raise
        errors.append(str(e))
        return -1


def parse_covariate(value: Any, column: str, where: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in UNKNOWN_VALUES):
        return float("nan")
    text = str(value).strip().lower()
    if text in ("yes", "true", "y"):
        return 1.0
    if text in ("no", "false", "n"):
        return 0.0
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{where}: covariate '{column}' = '{value}' is not a number, yes/no, or empty") from None


def read_table(path: Path) -> list[dict[str, Any]]:
    """Rows of a CSV (header line) or JSONL file, with errors that name the file and line."""
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix.lower() == ".jsonl":
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    elif path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: Excel's "CSV UTF-8" starts with a BOM
            rows = list(csv.DictReader(f))
    else:
        raise UserError(f"{path} must be .csv or .jsonl")
    return rows


def case_table(
    path: Path, *, heads: dict[str, Sequence[str]], covariates: Sequence[str]
) -> dict[str, tuple[dict[str, int], dict[str, float], dict[str, str]]]:
    """``cases.csv``: group -> (head labels, covariates, attributes). Columns: ``group`` + any head + any covariate,
    and optionally ``patient`` (several cases of one patient), ``centre`` and ``split``."""
    rows = read_table(path)
    if rows and "group" not in rows[0]:
        raise UserError(f"case table has no 'group' column: {path} (columns: {', '.join(rows[0])})")
    missing = [c for c in covariates if rows and c not in rows[0]]
    if missing:
        raise UserError(f"case table {path} has no column for covariates {missing} (model.covariates)")
    out = {}
    for i, row in enumerate(rows, 2 if path.suffix.lower() == ".csv" else 1):
        where = f"{path}:{i}"
        g = str(row["group"]).strip()
        if g in out:
            raise UserError(f"{where}: case '{g}' appears twice (one row per case)")
        out[g] = (
            {h: parse_label(row.get(h), h, c, where) for h, c in heads.items()},
            {c: parse_covariate(row.get(c), c, where) for c in covariates},
            {k: str(row[k]).strip() for k in ("patient", "centre", "split") if str(row.get(k) or "").strip()},
        )
    return out
