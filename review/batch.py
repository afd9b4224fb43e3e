"""Reviewing an archive: one infer.py job per input, each into its own case folder ``OUT_ROOT/<case id>/``, run by
Hydra's launchers (hydra-submitit-launcher: ``submitit_local`` on one machine, ``submitit_slurm`` on a cluster).

python infer.py -m hydra/launcher=submitit_local input=a.mp4,b.mp4 out_root=DIR     # one job per input
python infer.py -m hydra/launcher=submitit_local inputs=SPEC out_root=DIR           # SPEC: folder, glob, manifest
python -m review.batch list SPEC                                                     # what inputs=SPEC reviews

SPEC is a folder of videos (``/archive/2024/``), a glob (``'/archive/*/*.mp4'``: videos, images or folders of
images) or a manifest CSV with an ``input`` column (paths relative to the manifest) and a ``case`` column (the case
id; empty = derived). ``infer.py -m inputs=SPEC`` expands SPEC once, before Hydra parses the command line
(sweep_arguments): the list is frozen into ``<sweep dir>/inputs.csv`` and the sweep is ``inputs_row=range(0,N)``,
so the command line stays short whatever the archive's size and a folder that changes while jobs wait in a queue
changes nothing.

A case id is the manifest's, or ``case=ID``, or derived from the input: its file stem made path-safe, or with
``review.anonymise_names=true`` its pseudonym (data.deid.pseudonym). A derived id belongs to the input that claimed
it first (``case.json`` records the input's path, or with anonymise_names a keyed hash of it): another input with
the same stem gets ``<stem>_2``, on this run and every later one.

Resume (``resume=true``, the default): a case is skipped when its folder holds a complete result of the same input
(SHA-256 of its content), model (the checkpoint card's save_id) and output settings (a digest of every setting but
the paths and the speed-only ones, PERFORMANCE_ONLY): ``case.json`` says done, summary.json is there, and the run's
listing (data/io.py RUN_OUTPUTS) is complete, with every file it names. Anything else is redone.

A failed input never stops the others: its folder gets ``errors.jsonl`` (the case index shows it as incomplete,
with the error), its ``case.json`` says failed, and ``OUT_ROOT/batch_failures.jsonl`` lists every case whose
latest attempt failed (updated by each job under a lock, ``OUT_ROOT/.batch/lock``). After each case the job
rebuilds the case index (review.index.build_index), outside the run's own output listing.
"""

from __future__ import annotations

import argparse
import csv
import glob
import hashlib
import hmac
import io
import json
import os
import re
import resource
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from core.errors import UserError
from core.files import RUN_JOURNAL, RUN_OUTPUTS, atomic_write, exclusive_lock, write_json_atomic, write_jsonl
from data.io import IMAGE_EXTS, VIDEO_EXTS

CASE_RECORD = "case.json"  # in a case folder: input, content hash, model, settings, status (not a run output)
FAILURES = "batch_failures.jsonl"  # in OUT_ROOT: the cases whose latest attempt failed
STATE = ".batch"  # in OUT_ROOT: the lock of FAILURES
OUTCOME = "outcome.json"  # in a job's Hydra output folder (<sweep dir>/<job number>/): what the job did
FROZEN = "inputs.csv"  # in the sweep folder: the list inputs=SPEC expanded to
RESERVED = ("index.html", "cases_summary.csv", FAILURES)  # files of OUT_ROOT that no case folder may be named
LOCAL_JOBS = 2  # submitit_local: inputs reviewed at a time unless hydra.sweeper.max_batch_size says otherwise
# settings that change how fast a case is reviewed, never what is written: a change of them redoes nothing
PERFORMANCE_ONLY = ("device", "review.batch_size", "review.queue_depth", "review.streaming", "review.png_level")
# settings that say where, not how: the input, the folders, the case id, resume itself, the checkpoint's path (the
# model is compared by its save_id)
WHERE_KEYS = ("input", "inputs", "inputs_row", "case", "out_dir", "out_root", "resume", "checkpoint")
JOB_KEYS = ("input", "inputs", "inputs_row", "case")  # what names a job's input: replaced in its case's config.yaml
ANONYMISED = "<anonymised>"
CASE_ID = re.compile(r"^\w[\w.-]{0,99}$")


@dataclass(frozen=True)
class Item:
    """One input of a batch: its path and its case id when given (a manifest's, case=ID), else None (derived)."""

    input: Path
    case: str | None = None


# --- case ids -------------------------------------------------------------------------------------------------------


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


def read_record(folder: Path) -> dict[str, Any] | None:
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
    from review.index import is_case_folder

    for k in range(1, 100_000):
        case = base if k == 1 else f"{base}_{k}"
        folder = Path(out_root) / case
        rec = read_record(folder)
        if rec is not None:
            if rec.get("source") == source:
                return case
            continue
        if is_case_folder(folder):  # outputs of a run that did not claim it (a plain infer.py out_dir=...): not ours
            continue
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f"case.partial-{os.getpid()}.json"
        tmp.write_text(json.dumps({"case": case, "source": source, "status": "claimed"}), encoding="utf-8")
        try:
            os.link(tmp, folder / CASE_RECORD)
        except FileExistsError:
            rec = read_record(folder)
            if rec is not None and rec.get("source") == source:
                return case
            continue
        finally:
            tmp.unlink(missing_ok=True)
        return case
    raise UserError(f"no free case folder for {base} under {out_root}")


# --- the inputs of a batch ------------------------------------------------------------------------------------------


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


# --- what makes a case complete -------------------------------------------------------------------------------------


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


def _flatten(d: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for k, v in d.items():
        if isinstance(v, dict) and v and k != "covariates":
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def settings_digest(settings: dict[str, Any]) -> str:
    """A digest of the settings that change what a case's outputs hold (all but WHERE_KEYS and PERFORMANCE_ONLY)."""
    kept = {k: v for k, v in _flatten(settings) if k not in WHERE_KEYS + PERFORMANCE_ONLY and not k.startswith("hydra")}
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
    rec = read_record(folder)
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


def _state_lock(out_root: Path):
    return exclusive_lock(Path(out_root) / STATE)


def update_failures(out_root: Path, *, case: str, failure: dict[str, Any] | None) -> None:
    """OUT_ROOT/batch_failures.jsonl: this case's line replaced by ``failure`` (or removed when it succeeded), under
    a lock, so that jobs finishing together each keep the others' lines. Removed when no case has failed."""
    path = Path(out_root) / FAILURES
    with _state_lock(out_root):
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
    run: Callable[[Path, Path, str], list[str]],
    index: bool = True,
) -> Outcome:
    """Review one input into ``out_root/<case id>/`` unless a complete result is there (``resume``). ``run(input,
    folder, case)`` reviews it (infer.py: the folder's lock, the previous run's files forgotten, the outputs listed)
    and returns the error messages (none: done). Then case.json, batch_failures.jsonl and the case index."""
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
        errors = run(path, folder, case)
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
    from review.index import build_index

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


# --- the sweep --------------------------------------------------------------------------------------------------------


def write_outcomes(folder: Path, outcomes: Sequence[Outcome]) -> None:
    """What a job did, in its Hydra output folder, for the sweep's summary (BatchCallback)."""
    write_json_atomic(Path(folder) / OUTCOME, [o.__dict__ for o in outcomes])


def describe(outcomes: Sequence[Outcome], out_root: Path) -> str:
    """One line: how many inputs were reviewed, skipped and failed, and where to look."""
    n = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    text = f"{len(outcomes)} inputs -> {out_root}: {n['done']} reviewed, {n['skipped']} skipped (complete)"
    if n["failed"]:
        text += f", {n['failed']} failed (listed in {Path(out_root) / FAILURES})"
    return text + f"; index: {Path(out_root) / 'index.html'}"


def exit_code(outcomes: Sequence[Outcome]) -> int:
    """0 every input done or skipped; 1 an input hit a bug; 2 an input failed (infer.py's exit codes)."""
    if any(o.bug for o in outcomes):
        return 1
    return 2 if any(o.status == "failed" for o in outcomes) else 0


class BatchCallback(Callback):
    """Hydra callback of infer.py (configs/infer.yaml hydra.callbacks): before a sweep, the settings are checked
    once (not in every job); after it, one line sums up the jobs' outcomes and the exit code is infer.py's (2 when
    an input failed)."""

    def on_multirun_start(self, config, **kwargs: Any) -> None:
        from omegaconf import OmegaConf

        from core.settings import INFER, check_settings

        try:
            mine = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            plain = OmegaConf.to_container(mine, resolve=True)
            check_settings(plain, INFER, closed=True, where="configs/infer.yaml")
            if plain.get("out_root") is not None:
                check_out_root(Path(plain["out_root"]))
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    def on_multirun_end(self, config, **kwargs: Any) -> None:
        if config.get("out_root") is None:
            return
        sweep = Path(str(config.hydra.sweep.dir))
        outcomes: list[Outcome] = []
        for p in sorted(sweep.glob(f"*/{OUTCOME}")):
            try:
                outcomes += [Outcome(**o) for o in json.loads(p.read_text(encoding="utf-8"))]
            except (OSError, json.JSONDecodeError, TypeError) as e:
                outcomes.append(Outcome(None, "failed", [f"{p} is unreadable ({e})"]))
        for error in dict.fromkeys(e for o in outcomes if o.case is None for e in o.errors):  # before any case
            print(f"error: {error}", file=sys.stderr)
        print(f"batch: {describe(outcomes, Path(str(config.out_root)))}; logs: {sweep}", flush=True)
        code = exit_code(outcomes)
        if code:
            sys.exit(code)


# --- the command line, before Hydra parses it -----------------------------------------------------------------------


def _value(token: str) -> str:
    """A key=value token's value without the quotes Hydra's grammar reads."""
    v = token.split("=", 1)[1]
    if len(v) >= 2 and v[0] in "'\"" and v[-1] == v[0]:
        v = v[1:-1].replace("\\" + v[0], v[0])
    return v


def _hydra_path(path: str) -> str:
    if re.fullmatch(r"[\w./-]+", path) and path.isascii():
        return path
    if "'" in path or "\\" in path:
        raise UserError(f"{path}: a folder for the sweep's list must not contain quotes or backslashes")
    return f"'{path}'"


def sweep_arguments(argv: list[str], *, now: datetime | None = None) -> list[str]:
    """``infer.py -m``'s command line made ready for Hydra: out_root is required (each input a case folder of it);
    the sweep folder (Hydra's logs, submitit's files, each job's outcome) is fixed here unless given; inputs=SPEC is
    expanded and frozen into ``<sweep folder>/inputs.csv``, the sweep being ``inputs_row=range(0,N)``; submitit_local
    reviews LOCAL_JOBS inputs at a time unless hydra.sweeper.max_batch_size is given. Without -m: unchanged."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    given = {a.split("=", 1)[0].lstrip("+"): a for a in argv if "=" in a and not a.startswith("-")}
    out_root = _value(given["out_root"]) if "out_root" in given else "null"
    if out_root in ("null", ""):
        raise UserError(
            "infer.py -m reviews an archive, one job per input: give out_root=DIR (each input gets DIR/<case id>/)"
        )
    check_out_root(Path(out_root))
    argv, extra = list(argv), []
    if "hydra.sweep.dir" in given:
        sweep = _value(given["hydra.sweep.dir"])
    else:
        stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
        sweep = f"multirun/infer/{stamp}"
        k = 1
        while Path(sweep).exists():
            k += 1
            sweep = f"multirun/infer/{stamp}_{k}"
        extra.append(f"hydra.sweep.dir={_hydra_path(sweep)}")
    spec = _value(given["inputs"]) if "inputs" in given else "null"
    if spec not in ("null", ""):
        if "input" in given or "inputs_row" in given:
            raise UserError("give the inputs either as input=a,b or as inputs=SPEC (a folder, a glob, a manifest)")
        if "${" in sweep:
            raise UserError("hydra.sweep.dir with ${...} cannot hold the list of inputs=: give a plain folder")
        items = expand_inputs(spec)
        frozen = (Path(sweep) / FROZEN).absolute()  # the jobs read it wherever they run (a cluster's node)
        write_frozen(frozen, items)
        argv.remove(given["inputs"])
        extra += [f"inputs={_hydra_path(str(frozen))}", f"inputs_row=range(0,{len(items)})"]
    launcher = _value(given["hydra/launcher"]) if "hydra/launcher" in given else ""
    if launcher == "submitit_local" and "hydra.sweeper.max_batch_size" not in given:
        extra.append(f"hydra.sweeper.max_batch_size={LOCAL_JOBS}")
    # after the last setting: Hydra's flags (--cfg hydra, --package ...) may follow the settings, not precede more
    last = max((k for k, a in enumerate(argv) if "=" in a and not a.startswith("-")), default=len(argv) - 1)
    return argv[: last + 1] + extra + argv[last + 1 :]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The inputs that infer.py -m inputs=SPEC would review, one a line.")
    sub = ap.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="print each input of SPEC (a folder, a glob, a manifest) with its case id")
    ls.add_argument("spec", help="a folder of videos, a glob (quoted) or a manifest .csv (input,case)")
    a = ap.parse_args(argv)
    try:
        items = expand_inputs(a.spec)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for i in items:
        print(f"{i.case or derived_case_id(i.input) + ' (derived)'}\t{i.input}")
    print(f"{len(items)} inputs", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
