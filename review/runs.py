"""A run of infer.py into one output folder: the model loaded once the inputs are known to exist, the folder's lock,
the previous run's files forgotten, config.yaml, each input into its own subfolder (one bad input never stops the
others) and the list of every file written."""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf

from core.errors import UserError
from core.files import (
    atomic_write,
    clean_stale_partials,
    forget_previous_run,
    list_run_outputs,
    output_lock,
    recording_outputs,
    write_jsonl,
)
from data.io import require_input
from models.predictor_settings import PROFILE_KEYS, as_paths, profile_file, same_paths

# torch, the model and the pipeline are imported only when there is work to do, so that infer.py answers a
# mistyped setting or path in about a second, not after the five seconds those imports take.
if TYPE_CHECKING:
    from models.predictor import Predictor
    from review.options import InferSettings, ReviewOptions

ANONYMISED = "<anonymised>"  # what config.yaml and case.json say instead of input paths with review.anonymise_names


def setting_name(override: str) -> str:
    """The key a command-line override sets (``+key=value``: ``key``)."""
    return override.lstrip("+").split("=", 1)[0]


def load_predictor(settings: InferSettings) -> Predictor:
    """The model the settings name (checkpoint, device, precision, tta, backend, reliability, input size);
    covariates it does not read (review.covariates) are refused here, before anything is written."""
    from models.predictor import Predictor
    from models.predictor_settings import predictor_arguments
    from review.measure import covariate_row
    from review.options import settings_dict

    plain = settings_dict(settings)
    predictor = Predictor.from_checkpoint(**predictor_arguments(plain))
    predictor.profile = profile_label(settings.profile, plain)
    covariate_row(predictor, settings.review)
    return predictor


def settings_path(p: Path) -> Path:
    """``p`` relative to the working folder when under it (how a command line names it), else as is."""
    try:
        return p.relative_to(Path.cwd())
    except ValueError:
        return p


def profile_label(profile: str, settings: Mapping[str, Any]) -> str:
    """The profile's name, or 'accurate, modified: tta=False' when one of ``settings`` (PROFILE_KEYS) given on its
    own overrode the profile file's: the outputs say what ran, not only what was asked for."""
    chosen = profile_file(profile)
    if chosen is None:
        return str(profile)

    def paths(v: Any) -> list[Path]:
        return [Path(x).resolve() for x in as_paths(v)]

    def same(k: str) -> bool:  # both load relative to the working folder
        if k in ("checkpoint", "ensemble"):
            return same_paths(settings[k], chosen[k])
        return settings[k] == chosen[k]

    def shown(k: str) -> Any:
        if k == "checkpoint":
            return paths(settings[k])[0].name
        if k == "ensemble":
            return "[" + ",".join(str(settings_path(p)) for p in paths(settings[k])) + "]"
        return settings[k]

    changed = [f"{k}={shown(k)}" for k in PROFILE_KEYS if k in chosen and k in settings and not same(k)]
    return f"{profile}, modified: {', '.join(changed)}" if changed else str(profile)


def review_to_out_dir(settings: InferSettings, *, overrides: Sequence[str]) -> list[str]:
    """infer.py without out_root: ``input`` (a path or a list) into ``out_dir``, the model loaded only once some input
    exists. ``overrides``: the command line's settings, for config.yaml. Returns the error messages (exit code 2
    when there are any)."""
    for key in ("inputs", "inputs_row", "case"):
        if getattr(settings, key) is not None:
            raise UserError(f"{key}= names the inputs or a case of an archive: give out_root=DIR too")
    inputs = list(settings.input) if isinstance(settings.input, (list, tuple)) else [settings.input]
    if not inputs or any(i is None or str(i) == "" for i in inputs):
        raise UserError("input is empty: give input=PATH (image, folder or video) or input=[A,B]")
    paths = [Path(str(i)) for i in inputs]
    if not any(p.exists() for p in paths):  # nothing to do: say so before loading torch and the model
        require_input(paths[0])
    predictor = load_predictor(settings)
    return review_into_folder(
        Path(settings.out_dir), settings=settings, paths=paths, predictor=lambda: predictor, overrides=overrides
    )


def review_into_folder(
    out_root: Path,
    *,
    settings: InferSettings,
    paths: list[Path],
    predictor: Callable[[], Predictor],
    overrides: Sequence[str],
    list_failed: bool = False,
) -> list[str]:
    """The inputs into ``out_root`` under its lock: the previous run's files forgotten first, every file written
    journaled and listed at the end. ``predictor``: a function that returns the model (an archive's case loads it
    only when it has work to do). ``list_failed``: an input that fails writes errors.jsonl even when alone (an
    archive's case). Returns the error messages."""
    opts = settings.review
    with output_lock(out_root):
        clean_stale_partials(out_root)
        forget_previous_run(out_root)  # an earlier run's files never mix with this one's
        with recording_outputs(journal=out_root) as written:
            write_run_config(out_root, settings, overrides=overrides)
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
                return review_inputs(
                    paths,
                    predictor=model,
                    out_root=out_root,
                    opts=opts,
                    frames_as_video=settings.frames_as_video,
                    list_failed=list_failed,
                )
            finally:
                list_run_outputs(out_root, written)


def write_run_config(out_root: Path, settings: InferSettings, *, overrides: Sequence[str]) -> None:
    """config.yaml: the command line's overrides and the resolved settings this run used (with
    review.anonymise_names, without the input paths: a file name often holds the patient's name)."""
    overrides = list(overrides)
    from review.options import settings_dict

    resolved = settings_dict(settings)
    if resolved["review"].get("anonymise_names"):
        overrides = [f"input={ANONYMISED}" if setting_name(o) == "input" else o for o in overrides]
        resolved["input"] = ANONYMISED
    command = shlex.join(["python", "infer.py", *overrides])
    text = f"# {command}\n" + OmegaConf.to_yaml(OmegaConf.create(resolved))
    with atomic_write(out_root / "config.yaml") as tmp:
        tmp.write_text(text)


def subfolder_names(paths: list[Path]) -> list[str]:
    """Output subfolder per input: its stem, made unique when two inputs share one."""
    names, seen = [], {}
    for p in paths:
        stem = p.stem or p.name
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}_{seen[stem]}")
    return names


def review_inputs(
    paths: list[Path],
    *,
    predictor: Predictor,
    out_root: Path,
    opts: ReviewOptions,
    frames_as_video: bool,
    list_failed: bool = False,
) -> list[str]:
    """Process each input into its folder (``out_root`` itself for one input); one bad input never stops the others.
    Returns the error messages. ``list_failed``: a single input that fails is listed in errors.jsonl too (an
    archive's case folder)."""
    from review.pipeline import process_input

    failures: list[str] = []
    failed_inputs: list[dict[str, str]] = []
    names = subfolder_names(paths)
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
        failures += report_input(path, out_dir, summary, seconds=time.perf_counter() - t0, opts=opts)
    if failed_inputs and (len(paths) > 1 or list_failed):  # the inputs that produced nothing, beside the others
        write_jsonl(out_root / "errors.jsonl", failed_inputs)
    return failures


def report_input(path: Path, out_dir: Path, summary: dict[str, Any], *, seconds: float, opts: ReviewOptions) -> list:
    """What the terminal is told of a processed input: one line of frames and speed, its frames' errors and a failed
    de-identification check under review.deid_check=warn. Returns the errors' messages."""
    print(
        f"{path}: {summary['frames']} frames in {seconds:.1f}s ({summary['frames'] / max(seconds, 1e-9):.1f} "
        f"frames/s), lesion in {summary['frames_with_lesion']} -> {out_dir}"
    )
    for err in summary["errors"]:
        print(f"error: {err['error']}", file=sys.stderr)
    deid = summary.get("deidentification")
    if deid and not deid["passed"] and opts.deid_check == "warn":
        print(f"warning: {out_dir}: text was still detected after redaction (review.deid_check=warn)", file=sys.stderr)
    return [err["error"] for err in summary["errors"]]
