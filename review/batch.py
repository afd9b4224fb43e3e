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

Here: one process's or job's run (review_archive), the sweep's command line and summary; the inputs in
review/batch_inputs.py, case ids in review/case_ids.py, resume and each case in review/cases.py.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

from core.errors import UserError
from core.files import write_json_atomic
from models.predictor_settings import as_paths
from review.batch_inputs import expand_inputs, job_items, write_frozen
from review.case_ids import FAILURES, derived_case_id
from review.cases import Outcome, check_out_root, model_save_id, review_case, settings_digest
from review.options import InferSettings, read_infer_settings, settings_dict
from review.runs import setting_name

OUTCOME = "outcome.json"  # in a job's Hydra output folder (<sweep dir>/<job number>/): what the job did
FROZEN = "inputs.csv"  # in the sweep folder: the list inputs=SPEC expanded to
LOCAL_JOBS = 2  # submitit_local: inputs reviewed at a time unless hydra.sweeper.max_batch_size says otherwise
JOB_KEYS = ("input", "inputs", "inputs_row", "case")  # what names a job's input: replaced in its case's config.yaml


def review_archive(settings: InferSettings, *, overrides: Sequence[str], multirun: bool, job_dir: Path | None) -> int:
    """infer.py with out_root=DIR: each input into DIR/<case id>/, skipping those with a complete result
    (resume=true), a failed input listed without stopping the others, the case index rebuilt after each.
    ``overrides``: the command line's settings. In a sweep (``multirun``, infer.py -m) a job always returns 0,
    leaving its outcome in ``job_dir`` for the sweep's summary and exit code (BatchCallback); in one process, the
    exit code is returned (0, 1 a bug, 2 a failed input)."""
    from review.runs import load_predictor, review_into_folder  # torch: only once there is work to do

    given = {setting_name(o) for o in overrides}
    if "review.original_video" not in given:  # an archive's default: the review app's blind mode shows it, and
        settings = replace(settings, review=replace(settings.review, original_video=True))  # its export takes
    out_root = Path(settings.out_root)  # clean frames from it
    try:
        items = job_items(
            input=settings.input, inputs=settings.inputs, inputs_row=settings.inputs_row, case=settings.case
        )
        if settings.inputs is not None and "input" in given:
            raise UserError("give the inputs either as input= or as inputs=SPEC (a folder, a glob, a manifest)")
        check_out_root(out_root)
        out_root.mkdir(parents=True, exist_ok=True)
        # the model is the checkpoint and its ensemble members: a member retrained in place is a new model
        save_id = "+".join(model_save_id(c) for c in [settings.checkpoint, *as_paths(settings.ensemble)])
    except UserError as e:
        if not multirun:
            raise
        print(f"error: {e}", file=sys.stderr)  # in a sweep: this job's outcome, never a dead job
        write_outcomes(job_dir, [Outcome(None, "failed", [str(e)])])
        return 0
    opts = settings.review
    loaded: list = []

    def predictor():
        if not loaded:  # once per process, and only when a case has work to do
            loaded.append(load_predictor(settings))
        return loaded[0]

    def review_one_case(path: Path, folder: Path, case: str) -> list[str]:
        case_settings = replace(settings, input=str(path), case=case, inputs=None, inputs_row=None)
        shared = [o for o in overrides if setting_name(o) not in JOB_KEYS]
        return review_into_folder(
            folder,
            settings=case_settings,
            paths=[path],
            predictor=predictor,
            overrides=[*shared, f"input={path}", f"case={case}"],
            list_failed=True,
        )

    digest = settings_digest(settings_dict(settings))
    outcomes = [
        review_case(
            item,
            out_root=out_root,
            resume=settings.resume,
            save_id=save_id,
            settings=digest,
            anonymise=opts.anonymise_names,
            review_folder=review_one_case,
        )
        for item in items
    ]
    if multirun:
        write_outcomes(job_dir, outcomes)
        return 0
    print(outcome_line(outcomes, out_root))
    return exit_code(outcomes)


# --- the sweep --------------------------------------------------------------------------------------------------------


def write_outcomes(folder: Path, outcomes: Sequence[Outcome]) -> None:
    """What a job did, in its Hydra output folder, for the sweep's summary (BatchCallback)."""
    write_json_atomic(Path(folder) / OUTCOME, [o.__dict__ for o in outcomes])


def outcome_line(outcomes: Sequence[Outcome], out_root: Path) -> str:
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
        try:
            mine = OmegaConf.masked_copy(config, [k for k in config if k != "hydra"])
            settings = read_infer_settings(OmegaConf.to_container(mine, resolve=True))
            if settings.out_root is not None:
                check_out_root(Path(settings.out_root))
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
        print(f"batch: {outcome_line(outcomes, Path(str(config.out_root)))}; logs: {sweep}", flush=True)
        code = exit_code(outcomes)
        if code:
            sys.exit(code)


# --- the command line, before Hydra parses it -----------------------------------------------------------------------


def override_value(token: str) -> str:
    """A key=value token's value without the quotes Hydra's grammar reads."""
    v = token.split("=", 1)[1]
    if len(v) >= 2 and v[0] in "'\"" and v[-1] == v[0]:
        v = v[1:-1].replace("\\" + v[0], v[0])
    return v


def hydra_quoted_path(path: str) -> str:
    """A path as a Hydra override's value: as it is when plain, else quoted (one with quotes or backslashes is
    refused)."""
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
    out_root = override_value(given["out_root"]) if "out_root" in given else "null"
    if out_root in ("null", ""):
        raise UserError(
            "infer.py -m reviews an archive, one job per input: give out_root=DIR (each input gets DIR/<case id>/)"
        )
    check_out_root(Path(out_root))
    argv, extra = list(argv), []
    if "hydra.sweep.dir" in given:
        sweep = override_value(given["hydra.sweep.dir"])
    else:
        stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
        sweep = f"multirun/infer/{stamp}"
        k = 1
        while Path(sweep).exists():
            k += 1
            sweep = f"multirun/infer/{stamp}_{k}"
        extra.append(f"hydra.sweep.dir={hydra_quoted_path(sweep)}")
    spec = override_value(given["inputs"]) if "inputs" in given else "null"
    if spec not in ("null", ""):
        if "input" in given or "inputs_row" in given:
            raise UserError("give the inputs either as input=a,b or as inputs=SPEC (a folder, a glob, a manifest)")
        if "${" in sweep:
            raise UserError("hydra.sweep.dir with ${...} cannot hold the list of inputs=: give a plain folder")
        items = expand_inputs(spec)
        frozen = (Path(sweep) / FROZEN).absolute()  # the jobs read it wherever they run (a cluster's node)
        write_frozen(frozen, items)
        argv.remove(given["inputs"])
        extra += [f"inputs={hydra_quoted_path(str(frozen))}", f"inputs_row=range(0,{len(items)})"]
    launcher = override_value(given["hydra/launcher"]) if "hydra/launcher" in given else ""
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
