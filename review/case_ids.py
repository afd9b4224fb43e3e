"""The case ids of an archive (review/batch.py): a manifest's or case=ID, checked as given, or derived from the input
and claimed, by creating the case folder's case.json, so that an id stays with the input that took it first."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from core.errors import UserError
from data.io import IMAGE_EXTS, VIDEO_EXTS
from review.case_rows import is_case_folder

CASE_RECORD = "case.json"  # in a case folder: input, content hash, model, settings, status (not a run output)
FAILURES = "batch_failures.jsonl"  # in OUT_ROOT: the cases whose latest attempt failed
RESERVED = ("index.html", "cases_summary.csv", FAILURES)  # files of OUT_ROOT that no case folder may be named
CASE_ID = re.compile(r"^\w[\w.-]{0,99}$")


def derived_case_id(path: Path) -> str:
    """A path-safe case id from an input's file stem: letters, digits, _ . - kept, anything else (a slash, a space, a
    quote, bytes that are not UTF-8) becomes _, no leading dot (the case index skips hidden folders), at most 100
    characters, never the name of one of OUT_ROOT's own files."""
    stem = path.stem if path.suffix.lower() in VIDEO_EXTS + IMAGE_EXTS else path.name
    case = re.sub(r"[^\w.-]+", "_", stem).lstrip(".")[:100] or "case"
    return case + "_case" if case in RESERVED else case


def check_case_id(case: str, *, where: str) -> str:
    """A case id given by the user (manifest, case=): refused unless it is path-safe as it stands (it names the case
    folder and links the outputs to the hospital's records, so it is never silently changed)."""
    if not CASE_ID.match(case) or case in RESERVED:
        raise UserError(
            f"{where}: case id {case!r} is not usable as a folder name (1-100 letters, digits, _ . -, not starting "
            f"with . or -, not {', '.join(RESERVED)})"
        )
    return case


def input_source(path: Path, *, anonymise: bool) -> str:
    """Who owns a derived case id: the input's absolute path, or with anonymise_names a keyed hash of it (the key of
    data.deid's pseudonyms), so that case.json names no file."""
    text = str(path.absolute())
    if not anonymise:
        return text
    from data.deid import name_key

    return "hmac-sha256:" + hmac.new(name_key(), text.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()


def read_case_record(folder: Path) -> dict[str, Any] | None:
    """A case folder's case.json, or None when absent or unreadable."""
    try:
        rec = json.loads((Path(folder) / CASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return rec if isinstance(rec, dict) else None


def claim_case(out_root: Path, *, base: str, source: str) -> str:
    """The case id of an input whose id is derived: ``base``, ``base_2``, ... the first folder that is this input's
    (its case.json names ``source``) or free. A free folder is claimed by creating its case.json with a hard link,
    which fails when another job got there first, so two parallel jobs never take one folder."""
    for k in range(1, 100_000):
        case = base if k == 1 else f"{base}_{k}"
        folder = Path(out_root) / case
        rec = read_case_record(folder)
        if rec is not None:
            if rec.get("source") == source:
                return case
            continue
        if is_case_folder(folder):  # outputs of a run that did not claim it (a plain infer.py out_dir=...): not ours
            continue
        folder.mkdir(parents=True, exist_ok=True)
        # one per claim (threads share a pid); the pid lets core.files.clean_stale_partials remove a crashed one's
        tmp = folder / f"case.partial-{os.getpid()}.{uuid.uuid4().hex}.json"
        tmp.write_text(json.dumps({"case": case, "source": source, "status": "claimed"}), encoding="utf-8")
        try:
            os.link(tmp, folder / CASE_RECORD)
        except FileExistsError:
            rec = read_case_record(folder)
            if rec is not None and rec.get("source") == source:
                return case
            continue
        finally:
            tmp.unlink(missing_ok=True)
        return case
    raise UserError(f"no free case folder for {base} under {out_root}")
