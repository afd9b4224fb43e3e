"""One case of an archive (review/batch.py): whether its folder already holds a complete result (resume), reviewing
it into ``OUT_ROOT/<case id>/``, its case.json, the archive's list of failed cases and its case index."""

from __future__ import annotations

import hashlib
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import RUN_JOURNAL, RUN_OUTPUTS, exclusive_lock, write_json_atomic, write_jsonl
from data.io import IMAGE_EXTS
from review.batch_inputs import Item
from review.case_ids import CASE_RECORD, FAILURES, claim_case, derived_case_id, input_source, read_case_record
from review.index import build_index
from review.runs import ANONYMISED

STATE = ".batch"  # in OUT_ROOT: the lock of FAILURES
# settings that change how fast a case is reviewed, never what is written: a change of them redoes nothing
PERFORMANCE_ONLY = ("device", "review.batch_size", "review.queue_depth", "review.streaming", "review.png_level")
# settings that say where, not how: the input, the folders, the case id, resume itself, the checkpoint's and the
# ensemble members' paths (the models are compared by their save_ids: review.batch's save_id holds them all)
WHERE_KEYS = ("input", "inputs", "inputs_row", "case", "out_dir", "out_root", "resume", "checkpoint", "ensemble")


def content_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """SHA-256 of an input's content, streamed: a file's bytes; a folder's images by name (name and bytes of each,
    so a renamed, added or changed frame changes it)."""
    path = Path(path)
    h = hashlib.sha256()
    files = (
        sorted(q for q in path.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_EXTS) if path.is_dir() else [path]
    )
    for f in files:
        if path.is_dir():
            h.update(f.name.encode("utf-8", "surrogateescape") + b"\0")
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                h.update(block)
        h.update(b"\0")
    return h.hexdigest()


def model_save_id(checkpoint: str | Path) -> str:
    """The checkpoint's save_id (models/checkpoint.py stamps one into each save), read from its card without loading
    torch (a skipped case costs no model load); a card without one is identified by its SHA-256."""
    p = Path(checkpoint)
    for suffix in (".safetensors", ".json"):
        if p.name.endswith(suffix):
            p = p.with_name(p.name[: -len(suffix)])
    card = p.with_name(p.name + ".json")
    try:
        raw = card.read_bytes()
    except OSError:
        raise UserError(f"checkpoint card not found: {card} (a checkpoint is NAME.safetensors + NAME.json)") from None
    try:
        save_id = json.loads(raw).get("save_id")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        save_id = None
    return str(save_id) if save_id else "sha256:" + hashlib.sha256(raw).hexdigest()


def flat_settings(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of nested settings; the covariates mapping is one value."""
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "covariates":
            yield from flat_settings(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def settings_digest(settings: dict[str, Any]) -> str:
    """A digest of the settings that change what a case's outputs hold (all but WHERE_KEYS and PERFORMANCE_ONLY)."""
    ignored = WHERE_KEYS + PERFORMANCE_ONLY
    kept = {k: v for k, v in flat_settings(settings) if k not in ignored and not k.startswith("hydra")}
    if not kept.get("tta"):  # which flips TTA would average changes nothing while it is off
        kept.pop("tta_views", None)
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def listing_complete(folder: Path) -> bool:
    """The last run into ``folder`` ended and listed its outputs (RUN_OUTPUTS, no journal left), and every file it
    listed is still there."""
    folder = Path(folder)
    if (folder / RUN_JOURNAL).exists() or (folder / ".endolift.lock").exists():
        return False
    try:
        names = json.loads((folder / RUN_OUTPUTS).read_text(encoding="utf-8"))["files"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
        return False
    return isinstance(names, list) and all(isinstance(n, str) and (folder / n).is_file() for n in names)


def is_complete(folder: Path, *, sha256: str | None, save_id: str, settings: str) -> bool:
    """Whether ``folder`` holds a finished review of this input (content hash), model and settings."""
    rec = read_case_record(folder)
    return (
        sha256 is not None
        and rec is not None
        and rec.get("status") == "done"
        and rec.get("sha256") == sha256
        and rec.get("save_id") == save_id
        and rec.get("settings") == settings
        and (Path(folder) / "summary.json").is_file()
        and listing_complete(folder)
    )


# --- one case -------------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: str | None
    status: str  # done | skipped | failed
    errors: list[str]
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    bug: bool = False


def failures_lock(out_root: Path):
    return exclusive_lock(Path(out_root) / STATE)


def update_failures(out_root: Path, *, case: str, failure: dict[str, Any] | None) -> None:
    """OUT_ROOT/batch_failures.jsonl: this case's line replaced by ``failure`` (or removed when it succeeded), under
    a lock, so that jobs finishing together each keep the others' lines. Removed when no case has failed."""
    path = Path(out_root) / FAILURES
    with failures_lock(out_root):
        rows = []
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("case") != case:
                    rows.append(row)
        if failure is not None:
            rows.append(failure)
        if rows:
            write_jsonl(path, rows)
        else:
            path.unlink(missing_ok=True)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def review_case(
    item: Item,
    *,
    out_root: Path,
    resume: bool,
    save_id: str,
    settings: str,
    anonymise: bool,
    review_folder: Callable[[Path, Path, str], list[str]],
    index: bool = True,
) -> Outcome:
    """Review one input into ``out_root/<case id>/`` unless a complete result is there (``resume``).
    ``review_folder(input, folder, case)`` reviews it (review.runs.review_into_folder: the folder's lock, the
    previous run's files forgotten, the outputs listed) and returns the error messages (none: done). Then case.json,
    batch_failures.jsonl and the case index."""
    t0 = time.perf_counter()
    path = item.input
    if item.case is not None:
        case = item.case
    else:
        if anonymise:
            from data.deid import pseudonym

            base = pseudonym(path) if path.exists() else "missing-" + input_source(path, anonymise=True)[-16:]
        else:
            base = derived_case_id(path)
        case = claim_case(out_root, base=base, source=input_source(path, anonymise=anonymise))
    folder = Path(out_root) / case
    shown = ANONYMISED if anonymise else str(path)
    try:
        sha256 = content_sha256(path)
    except OSError:
        sha256 = None  # missing or unreadable: the run below says why
    if resume and is_complete(folder, sha256=sha256, save_id=save_id, settings=settings):
        print(f"{case}: skipped, a complete result of the same input, model and settings is there")
        return Outcome(case, "skipped", [], round(time.perf_counter() - t0, 3), peak_rss_mb())
    bug = False
    try:
        errors = review_folder(path, folder, case)
    except UserError as e:  # the folder is another process's, ...
        errors = [str(e)]
    except Exception as e:  # a bug: listed like a failure (the other inputs go on), the traceback in the job's log
        import traceback

        traceback.print_exc()
        errors, bug = [f"bug: {type(e).__name__}: {e}"], True
    if anonymise:
        errors = [e.replace(str(path), case).replace(path.name, case) for e in errors]
    wall = round(time.perf_counter() - t0, 3)
    status = "failed" if errors else "done"
    record = {
        "case": case,
        "input": shown,
        "source": input_source(path, anonymise=anonymise),
        "sha256": sha256,
        "save_id": save_id,
        "settings": settings,
        "status": status,
        "errors": errors,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_s": wall,
        "peak_rss_mb": peak_rss_mb(),
    }
    write_json_atomic(folder / CASE_RECORD, record)
    failure = None
    if errors:
        failure = {"case": case, "input": shown, "error": errors[0], "errors": len(errors), "at": record["finished"]}
    update_failures(out_root, case=case, failure=failure)
    if index:
        rebuild_index(out_root)
    return Outcome(case, status, errors, wall, record["peak_rss_mb"], bug)


def rebuild_index(out_root: Path) -> None:
    """The case index of OUT_ROOT (review/index.py); a failure to write it is a warning, never the case's failure."""
    try:
        build_index(root=out_root)
    except (UserError, OSError) as e:
        print(f"warning: the case index of {out_root} was not rebuilt ({e})", file=sys.stderr)


def check_out_root(out_root: Path) -> None:
    """OUT_ROOT must be a folder of case folders, not one case's outputs."""
    if (Path(out_root) / "summary.json").is_file():
        raise UserError(
            f"out_root={out_root} holds one review's outputs (summary.json): give a folder for the archive, whose "
            "subfolders will be the cases"
        )
