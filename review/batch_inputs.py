"""The inputs of an archive's batch (review/batch.py): ``input=`` (a path or a list), ``inputs=SPEC`` (a folder of
videos, a glob, a manifest CSV with input and case columns) or one row of the list a sweep froze (``inputs_row``)."""

from __future__ import annotations

import csv
import glob
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import atomic_write
from data.io import IMAGE_EXTS, VIDEO_EXTS
from review.case_ids import check_case_id


@dataclass(frozen=True)
class Item:
    """One input of a batch: its path and its case id when given (a manifest's, case=ID), else None (derived)."""

    input: Path
    case: str | None = None


def read_manifest(path: Path) -> list[Item]:
    """A manifest CSV: an ``input`` column (paths relative to the manifest's folder) and optionally a ``case`` column
    (unique, path-safe ids; an empty cell: derived from the input). Other columns are ignored."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UserError(f"cannot read manifest {path} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(f"manifest {path} is not UTF-8 text: save it as CSV UTF-8") from None
    reader = csv.DictReader(io.StringIO(text))
    fields = [f.strip() for f in reader.fieldnames or []]
    if "input" not in fields:
        raise UserError(f"manifest {path} has no input column (a header line input,case and one row per input)")
    reader.fieldnames = fields
    items, cases, inputs = [], {}, {}
    for line, row in enumerate(reader, start=2):
        name = (row.get("input") or "").strip()
        if not name:
            raise UserError(f"{path}, line {line}: the input is empty")
        p = Path(name).expanduser()
        p = p if p.is_absolute() else path.absolute().parent / p
        case = (row.get("case") or "").strip() or None
        if case is not None:
            check_case_id(case, where=f"{path}, line {line}")
            if case in cases:
                raise UserError(f"{path}, lines {cases[case]} and {line}: case id {case} is given twice")
            cases[case] = line
        if p in inputs:
            raise UserError(f"{path}, lines {inputs[p]} and {line}: input {name} is listed twice")
        inputs[p] = line
        items.append(Item(p, case))
    if not items:
        raise UserError(f"manifest {path} lists no input")
    return items


def _reviewable(p: Path) -> bool:
    return p.is_dir() or (p.is_file() and p.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS)


def expand_inputs(spec: str) -> list[Item]:
    """The inputs that ``inputs=SPEC`` names, in name order: a manifest's rows (a .csv file), a folder's videos, or
    a glob's videos, images and folders (``**`` recurses)."""
    p = Path(spec).expanduser()
    if p.suffix.lower() == ".csv" and p.is_file():
        return read_manifest(p)
    if p.is_dir():
        videos = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_EXTS)
        if not videos:
            raise UserError(
                f"inputs={spec}: no videos ({', '.join(VIDEO_EXTS)}) in this folder (images: a glob, "
                f"inputs='{p}/*.jpg'; one case of images: input={p})"
            )
        return [Item(q.absolute()) for q in videos]
    if glob.has_magic(spec):
        found = sorted(Path(q) for q in glob.glob(str(p), recursive=True))
        items = [Item(q.absolute()) for q in found if _reviewable(q)]
        if not items:
            raise UserError(f"inputs={spec} matches no video, image or folder")
        return items
    raise UserError(f"inputs={spec} is not a folder, a glob (quote it: inputs='DIR/*.mp4') or a manifest .csv")


def write_frozen(path: Path, items: Sequence[Item]) -> None:
    """The list a sweep reviews, one row per job (inputs_row), in read_manifest's format with absolute paths."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["input", "case"])
    w.writerows([str(i.input), i.case or ""] for i in items)
    with atomic_write(path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8", errors="surrogateescape")


def job_items(*, input: Any, inputs: str | None, inputs_row: int | None, case: str | None) -> list[Item]:
    """The inputs of this process: one row of a frozen list (a job of ``infer.py -m inputs=...``), every input of
    ``inputs=SPEC`` (one process, one after the other), or ``input`` (a path or a list)."""
    if inputs_row is not None:
        if inputs is None:
            raise UserError("inputs_row is set by infer.py -m inputs=...: give inputs=SPEC, not inputs_row")
        items = read_manifest(Path(inputs))
        if not 0 <= inputs_row < len(items):
            raise UserError(f"inputs_row={inputs_row} is outside {inputs} ({len(items)} inputs)")
        items = [items[inputs_row]]
    elif inputs is not None:
        items = expand_inputs(inputs)
    else:
        listed = list(input) if isinstance(input, list | tuple) else [input]
        if not listed or any(i is None or str(i) == "" for i in listed):
            raise UserError("input is empty: give input=PATH, input=a,b with -m, or inputs=SPEC")
        items = [Item(Path(str(i)).absolute()) for i in listed]
    if case is not None:
        if len(items) != 1 or items[0].case is not None:
            raise UserError("case=ID names the case of one input: with several, give them in a manifest (inputs=)")
        items = [Item(items[0].input, check_case_id(case, where="case"))]
    return items
