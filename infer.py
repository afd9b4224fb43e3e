"""Run a checkpoint on images, folders and videos; write masks, probabilities, JSONL, overlays and a report.

python infer.py                                   # the shipped model on the bundled clip -> outputs/infer/
python infer.py input=path/to/video.mp4 out_dir=review/case12
python infer.py 'input=[a.jpg,frames/,clip.mp4]' out_dir=out    # one subfolder of out per input
python infer.py -m hydra/launcher=submitit_local input=a.mp4,b.mp4 out_root=archive   # one job, one case folder
python infer.py -m hydra/launcher=submitit_slurm inputs=cases.csv out_root=archive    #   per input (review/batch.py)
Exit codes: 0 all inputs processed (or, with out_root, skipped as complete); 2 a user error (bad path/file/setting)
or some inputs/frames failed (the rest were still written); 1 a bug.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from core.errors import UserError, guard_task, run_cli
from core.files import (
    atomic_write,
    clean_stale_partials,
    forget_previous_run,
    list_run_outputs,
    output_lock,
    recording_outputs,
    write_jsonl,
)
from core.settings import INFER, check_settings
from data.io import require_input

INFER_WHERE = "configs/infer.yaml"  # named in the message for an unknown setting

# torch, the model and the pipeline are imported once the settings have passed (main), so that a mistyped setting
# or path is answered in about a second, not after the five seconds those imports take.
if TYPE_CHECKING:
    from review.options import ReviewOptions


def unique_names(paths: list[Path]) -> list[str]:
    """Output subfolder per input: its stem, made unique when two inputs share one."""
    names, seen = [], {}
    for p in paths:
        stem = p.stem or p.name
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
@guard_task
def main(cfg: DictConfig) -> None:
    check_settings(OmegaConf.to_container(cfg, resolve=True), INFER, closed=True, where=INFER_WHERE)
    if cfg.out_root is not None:  # an archive: each input its own case folder (review/batch.py)
        review_archive(cfg)
        return
    for key in ("inputs", "inputs_row", "case"):
        if cfg[key] is not None:
            raise UserError(f"{key}= names the inputs or a case of an archive: give out_root=DIR too")
    inputs = cfg.input if OmegaConf.is_list(cfg.input) else [cfg.input]
    if not inputs or any(i is None or str(i) == "" for i in inputs):
        raise UserError("input is empty: give input=PATH (image, folder or video) or input=[A,B]")
    paths = [Path(str(i)) for i in inputs]
    if not any(p.exists() for p in paths):  # nothing to do: say so before loading torch and the model
        require_input(paths[0])
    from models.predictor import Predictor
    from review.options import ReviewOptions

    try:
        opts = ReviewOptions(**OmegaConf.to_container(cfg.review, resolve=True))
    except TypeError as e:
        raise UserError(f"unknown review setting: {e}") from None
    predictor = Predictor.from_checkpoint(
        cfg.checkpoint, device=cfg.device, precision=cfg.precision, tta=cfg.tta, backend=cfg.backend
    )
    from review.pipeline import covariate_row

    covariate_row(predictor, opts)  # covariates the model does not read: refused before anything is written
    failures = review_into(
        Path(cfg.out_dir), cfg=cfg, paths=paths, predictor=lambda: predictor, opts=opts, overrides=None
    )
    if failures:
        sys.exit(2)


def review_into(
    out_root: Path,
    *,
    cfg: DictConfig,
    paths: list[Path],
    predictor,
    opts: ReviewOptions,
    overrides: list[str] | None,
    list_failed: bool = False,
) -> list[str]:
    """The inputs into ``out_root`` under its lock: the previous run's files forgotten first, every file written
    journaled and listed at the end. ``predictor``: a function that returns the model (an archive's case loads it
    only when it has work to do). ``list_failed``: an input that fails writes errors.jsonl even when alone (an
    archive's case). Returns the error messages."""
    with output_lock(out_root):
        clean_stale_partials(out_root)
        forget_previous_run(out_root)  # an earlier run's files never mix with this one's
        with recording_outputs(journal=out_root) as written:
            write_run_config(out_root, cfg, overrides=overrides)
            try:
                try:
                    model = predictor()
                except UserError as e:  # the model failed to load: the case says why, like a failed input
                    if not list_failed:
                        raise
                    shown = ANONYMISED if opts.anonymise_names else str(paths[0])
                    write_jsonl(out_root / "errors.jsonl", [{"input": shown, "error": str(e)}])
                    print(f"error: {e}", file=sys.stderr)
                    return [str(e)]
                return run_inputs(
                    paths,
                    predictor=model,
                    out_root=out_root,
                    opts=opts,
                    frames_as_video=cfg.frames_as_video,
                    list_failed=list_failed,
                )
            finally:
                list_run_outputs(out_root, written)


def review_archive(cfg: DictConfig) -> None:
    """out_root=DIR: each input into DIR/<case id>/, skipping those with a complete result (resume=true), a failed
    input listed without stopping the others, the case index rebuilt after each (review/batch.py). In a sweep
    (infer.py -m) a job always returns, leaving its outcome for the sweep's summary and exit code
    (review.batch.BatchCallback); in one process, the exit code is infer.py's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from review import batch

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    given = {o.lstrip("+").split("=", 1)[0] for o in hydra_cfg.overrides.task}
    if "review.original_video" not in given:  # an archive's default: the review app's blind mode shows it, and
        cfg = OmegaConf.merge(cfg, {"review": {"original_video": True}})  # its export takes clean frames from it
    settings = OmegaConf.to_container(cfg, resolve=True)
    out_root = Path(cfg.out_root)
    try:
        items = batch.job_items(input=settings["input"], inputs=cfg.inputs, inputs_row=cfg.inputs_row, case=cfg.case)
        if cfg.inputs is not None and "input" in given:
            raise UserError("give the inputs either as input= or as inputs=SPEC (a folder, a glob, a manifest)")
        batch.check_out_root(out_root)
        out_root.mkdir(parents=True, exist_ok=True)
        save_id = batch.model_save_id(cfg.checkpoint)
    except UserError as e:
        if not multirun:
            raise
        print(f"error: {e}", file=sys.stderr)  # in a sweep: this job's outcome, never a dead job
        batch.write_outcomes(Path(hydra_cfg.runtime.output_dir), [batch.Outcome(None, "failed", [str(e)])])
        return
    from review.options import ReviewOptions

    opts = ReviewOptions(**settings["review"])
    loaded: list = []

    def predictor():
        if not loaded:  # once per process, and only when a case has work to do
            from models.predictor import Predictor
            from review.pipeline import covariate_row

            model = Predictor.from_checkpoint(
                cfg.checkpoint, device=cfg.device, precision=cfg.precision, tta=cfg.tta, backend=cfg.backend
            )
            covariate_row(model, opts)  # covariates the model does not read: refused before anything is written
            loaded.append(model)
        return loaded[0]

    def run(path: Path, folder: Path, case: str) -> list[str]:
        case_cfg = OmegaConf.merge(cfg, {"input": str(path), "case": case, "inputs": None, "inputs_row": None})
        keep = [o for o in hydra_cfg.overrides.task if o.lstrip("+").split("=", 1)[0] not in batch.JOB_KEYS]
        overrides = [*keep, f"input={path}", f"case={case}"]
        return review_into(
            folder, cfg=case_cfg, paths=[path], predictor=predictor, opts=opts, overrides=overrides, list_failed=True
        )

    digest = batch.settings_digest(settings)
    outcomes = [
        batch.review_case(
            item,
            out_root=out_root,
            resume=cfg.resume,
            save_id=save_id,
            settings=digest,
            anonymise=opts.anonymise_names,
            run=run,
        )
        for item in items
    ]
    if multirun:
        batch.write_outcomes(Path(hydra_cfg.runtime.output_dir), outcomes)
        return
    print(batch.describe(outcomes, out_root))
    if batch.exit_code(outcomes):
        sys.exit(batch.exit_code(outcomes))


ANONYMISED = "<anonymised>"  # what config.yaml says instead of the input paths with review.anonymise_names


def write_run_config(out_root: Path, cfg: DictConfig, *, overrides: list[str] | None = None) -> None:
    """config.yaml: the command line's overrides (``overrides``, else Hydra's) and the resolved settings this run
    used (with review.anonymise_names, without the input paths: a file name often holds the patient's name)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if overrides is None else list(overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resolved["review"].get("anonymise_names"):
        overrides = [f"input={ANONYMISED}" if o.lstrip("+").startswith("input=") else o for o in overrides]
        resolved["input"] = ANONYMISED
    command = shlex.join(["python", "infer.py", *overrides])
    text = f"# {command}\n" + OmegaConf.to_yaml(OmegaConf.create(resolved))
    with atomic_write(out_root / "config.yaml") as tmp:
        tmp.write_text(text)


def run_inputs(
    paths: list[Path],
    *,
    predictor,
    out_root: Path,
    opts: ReviewOptions,
    frames_as_video: bool,
    list_failed: bool = False,
) -> list[str]:
    """Process each input into its folder; one bad input never stops the others. Returns the error messages.
    ``list_failed``: a single input that fails is listed in errors.jsonl too (an archive's case folder)."""
    from review.pipeline import process_input

    failures: list[str] = []
    failed_inputs: list[dict[str, str]] = []
    names = unique_names(paths)
    if opts.anonymise_names:  # subfolders named by the inputs' pseudonyms, and no path in errors.jsonl
        from data.deid import pseudonym

        names = [pseudonym(p) if p.exists() else f"missing-{k + 1}" for k, p in enumerate(paths)]
    for path, name in zip(paths, names):
        out_dir = out_root if len(paths) == 1 else out_root / name
        t0 = time.perf_counter()
        try:
            summary = process_input(
                path, predictor=predictor, out_dir=out_dir, opts=opts, frames_as_video=frames_as_video
            )
        except UserError as e:
            failures.append(str(e))
            shown = (name, str(e).replace(str(path), name)) if opts.anonymise_names else (str(path), str(e))
            failed_inputs.append({"input": shown[0], "error": shown[1]})
            print(f"error: {e}", file=sys.stderr)
            continue
        dt = time.perf_counter() - t0
        print(
            f"{path}: {summary['frames']} frames in {dt:.1f}s ({summary['frames'] / max(dt, 1e-9):.1f} frames/s), "
            f"lesion in {summary['frames_with_lesion']} -> {out_dir}"
        )
        for err in summary["errors"]:
            failures.append(err["error"])
            print(f"error: {err['error']}", file=sys.stderr)
        deid = summary.get("deidentification")
        if deid and not deid["passed"] and opts.deid_check == "warn":
            print(
                f"warning: {out_dir}: text was still detected after redaction (review.deid_check=warn)", file=sys.stderr
            )
    if failed_inputs and (len(paths) > 1 or list_failed):  # the inputs that produced nothing, beside the others
        write_jsonl(out_root / "errors.jsonl", failed_inputs)
    return failures


if __name__ == "__main__":
    from review.batch import sweep_arguments

    run_cli(main, schema=INFER, where=INFER_WHERE, prepare=sweep_arguments)
