"""A converted dataset's files and rows, from the frames an export's reader yields (data.annotation_formats):
each frame's image (copied byte for byte) and mask (the union of its lesion objects), its manifest row (case id,
split, labels, covariates read from its fields and its objects' attributes), and the case rows of cases.csv. A
value that conflicts (two labels on one frame, two splits in one case) stops the conversion with a UserError.
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from core.errors import UserError
from data.annotation_frames import Frame
from data.manifest_tables import SPLITS, UNKNOWN_VALUES, parse_covariate


def field_text(v: Any) -> str:
    """An export field's value as stripped text (None: empty)."""
    return "" if v is None else str(v).strip()


def readable_covariate(text: str) -> bool:
    """Whether data.datasets can read ``text`` as a covariate: a number, yes/no (true/false, y/n), or unknown."""
    try:
        parse_covariate(text, "", "")
    except UserError:
        return False
    return True


def frame_value(f: Frame, attr: str, flag: str) -> str:
    """The value of ``attr`` on the frame or its objects (empty when none has it); two different values is an error."""
    values = sorted({field_text(a.get(attr)) for a in (f.attrs, *(s.attrs for s in f.shapes))} - {""})
    if len(values) > 1:
        raise UserError(
            f"{f.where}: conflicting '{attr}' values {values} ({flag}): one frame takes one value; fix the annotations"
        )
    return values[0] if values else ""


def write_frames(
    frames: Iterable[Frame],
    stage: Path,
    *,
    is_lesion: Callable[[tuple[str, ...]], bool],
    group_of: Callable[[Frame], str],
    split_of: Callable[[Frame], str] | None = None,
    labels: Mapping[str, str],
    covariates: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Write images/ and masks/ under ``stage``; return the manifest rows (with the covariates, which only
    cases.csv takes) and what was counted."""
    rows, seen, attrs_seen, fields_seen = [], {}, set(), set()
    objects, ignored, empty, bare = 0, Counter(), 0, []
    for f in frames:
        stem = PurePosixPath(f.name).with_suffix("").as_posix()
        if stem in seen:
            raise UserError(f"{f.where}: '{f.name}' gives the same output name as {seen[stem]} (rename one)")
        seen[stem] = f.where
        img = cv2.imread(str(f.image), cv2.IMREAD_UNCHANGED)
        if img is None or img.size == 0:
            raise UserError(f"{f.image}: cannot read image (listed in {f.where}): replace the file or remove it")
        h, w = img.shape[:2]
        if f.size is not None and tuple(f.size) != (h, w):
            raise UserError(
                f"{f.where}: the export says {f.size[1]}x{f.size[0]} but {f.image} is {w}x{h} "
                "(export the annotations for these very images)"
            )
        mask = np.zeros((h, w), bool)
        for s in f.shapes:
            drawn = s.to_mask(h, w)
            if is_lesion(s.categories):
                mask |= drawn
                objects += 1
            else:
                ignored.update(s.categories)
        empty += not mask.any()
        if not f.shapes:
            bare.append(f.name)
        row = {"image": f"images/{f.name}", "mask": f"masks/{stem}.png", "group": group_of(f)}
        if split_of is not None:
            row["split"] = split_of(f)
        fields_seen.update(f.attrs)
        attrs_seen.update(f.attrs, *(s.attrs for s in f.shapes))
        for head, attr in labels.items():
            row[head] = frame_value(f, attr, f"--label {head}={attr}")
        for name, attr in (covariates or {}).items():
            value = frame_value(f, attr, f"--covariate {name}={attr}")
            if not readable_covariate(value):
                raise UserError(
                    f"{f.where}: '{attr}' = '{value}' (--covariate {name}={attr}) is not a number, yes/no, or "
                    "empty (unknown): fix the annotations"
                )
            row[name] = "" if value.lower() in UNKNOWN_VALUES else value
        (stage / "images" / f.name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f.image, stage / "images" / f.name)
        (stage / "masks" / stem).parent.mkdir(parents=True, exist_ok=True)
        (stage / "masks" / f"{stem}.png").write_bytes(cv2.imencode(".png", mask.astype(np.uint8) * 255)[1].tobytes())
        rows.append(row)
    return {
        "rows": rows,
        "objects": objects,
        "ignored": ignored,
        "empty": empty,
        "bare": bare,
        "attrs_seen": attrs_seen,
        "fields_seen": fields_seen,
    }


def write_csv(path: Path, rows: list[dict[str, str]], columns: Sequence[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def check_group_splits(rows: list[dict[str, str]], src: Path, split_column: str) -> None:
    """Every frame of a group in one split (empty, development data, counts as a split of its own)."""
    first: dict[str, dict[str, str]] = {}
    for r in rows:
        f = first.setdefault(r["group"], r)
        if r["split"] != f["split"]:
            a, b = (f"'{x['split']}'" if x["split"] else "empty (development data)" for x in (f, r))
            raise UserError(
                f"{src}: group '{r['group']}' has frames in split {a} ({f['image']}) and {b} ({r['image']}) "
                f"(--split-column {split_column}): a patient's frames must all be in one split, or they leak "
                "between them; fix the export"
            )


def case_rows(
    rows: list[dict[str, str]], heads: Sequence[str], src: Path, *, covariates: Mapping[str, str] | None = None
) -> list[dict[str, str]]:
    """One row per group (with its split when the rows have one); a group whose frames carry two different labels
    for a head, or two different values of a covariate, is an error (an empty value is unknown, not a conflict)."""
    covariates = dict(covariates or {})
    cases: dict[str, dict[str, str]] = {}
    origin: dict[tuple[str, str], str] = {}
    for r in rows:
        case = cases.setdefault(r["group"], {"group": r["group"], **({"split": r["split"]} if "split" in r else {})})
        for h in [*heads, *covariates]:
            case.setdefault(h, "")
            if r[h] and case[h] and r[h] != case[h]:
                why = (
                    f"--covariate {h}={covariates[h]}: one value per case; fix the annotations"
                    if h in covariates
                    else "--case-labels: one label per case; fix the annotations or drop --case-labels"
                )
                raise UserError(
                    f"{src}: case '{r['group']}' has conflicting '{h}' {'values' if h in covariates else 'labels'} "
                    f"'{case[h]}' ({origin[r['group'], h]}) and '{r[h]}' ({r['image']}) ({why})"
                )
            if r[h] and not case[h]:
                case[h], origin[r["group"], h] = r[h], r["image"]
    return [cases[g] for g in sorted(cases)]


def case_id_reader(pattern: re.Pattern | None, group_column: str | None) -> Callable[[Frame], str]:
    """How each frame's case id is read: the first capture group of ``pattern`` (--group) in its name, else its
    ``group_column`` field (--group-column), else its own name (each image its own group)."""

    def group_of(f: Frame) -> str:
        if pattern is not None:
            m = pattern.search(f.name)
            if not m or not m.group(1):
                raise UserError(
                    f"{f.where}: --group '{pattern.pattern}' does not match {f.name!r} (adjust the pattern)"
                )
            return m.group(1)
        if group_column:
            value = field_text(f.attrs.get(group_column))
            if not value:
                raise UserError(f"{f.where}: no '{group_column}' value (--group-column): add it to every image")
            return value
        return PurePosixPath(f.name).with_suffix("").as_posix()

    return group_of


def split_reader(split_column: str) -> Callable[[Frame], str]:
    """How each frame's split is read: its ``split_column`` field (--split-column), one of SPLITS or empty."""

    def split_of(f: Frame) -> str:
        value = field_text(f.attrs.get(split_column))
        if value not in ("", *SPLITS):
            raise UserError(
                f"{f.where}: split '{value}' (--split-column {split_column}) is not one of {', '.join(SPLITS)} "
                "or empty (development data: train / validation / cross-validation): fix it in the export"
            )
        return value

    return split_of
