"""Run a checkpoint on images, folders and videos; write masks, probabilities, JSONL, overlays and a report.

python infer.py                                   # the shipped model on the bundled clip -> outputs/infer/
python infer.py input=path/to/video.mp4 out_dir=review/case12
python infer.py 'input=[a.jpg,frames/,clip.mp4]' out_dir=out    # one subfolder of out per input
Exit codes: 0 all inputs processed; 2 a user error (bad path/file/setting) or some inputs/frames failed (the rest
were still written); 1 a bug.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import hydra
from omegaconf import DictConfig, OmegaConf

from data.errors import UserError, guard_task, run_cli
from data.io import (
    atomic_write,
    clean_stale_partials,
    forget_previous_run,
    list_run_outputs,
    output_lock,
    recording_outputs,
    require_input,
    write_jsonl,
)
from data.settings import INFER, check_settings

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
    check_settings(OmegaConf.to_container(cfg, resolve=True), INFER)
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
    out_root = Path(cfg.out_dir)
    with output_lock(out_root):
        clean_stale_partials(out_root)
        forget_previous_run(out_root)  # an earlier run's files never mix with this one's
        with recording_outputs() as written:
            write_run_config(out_root, cfg)
            try:
                failures = run_inputs(
                    paths, predictor=predictor, out_root=out_root, opts=opts, frames_as_video=cfg.frames_as_video
                )
            finally:
                list_run_outputs(out_root, written)
    if failures:
        sys.exit(2)


def write_run_config(out_root: Path, cfg: DictConfig) -> None:
    """config.yaml: the command line's overrides and the resolved settings this run used."""
    from hydra.core.hydra_config import HydraConfig

    command = shlex.join(["python", "infer.py", *HydraConfig.get().overrides.task])
    text = f"# {command}\n" + OmegaConf.to_yaml(cfg, resolve=True)
    with atomic_write(out_root / "config.yaml") as tmp:
        tmp.write_text(text)


def run_inputs(
    paths: list[Path], *, predictor, out_root: Path, opts: ReviewOptions, frames_as_video: bool
) -> list[str]:
    """Process each input into its folder; one bad input never stops the others. Returns the error messages."""
    from review.pipeline import process_input

    failures: list[str] = []
    failed_inputs: list[dict[str, str]] = []
    for path, name in zip(paths, unique_names(paths)):
        out_dir = out_root if len(paths) == 1 else out_root / name
        t0 = time.perf_counter()
        try:
            summary = process_input(
                path, predictor=predictor, out_dir=out_dir, opts=opts, frames_as_video=frames_as_video
            )
        except UserError as e:
            failures.append(str(e))
            failed_inputs.append({"input": str(path), "error": str(e)})
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
    if failed_inputs and len(paths) > 1:  # the inputs that produced no subfolder, beside those that did
        write_jsonl(out_root / "errors.jsonl", failed_inputs)
    return failures


if __name__ == "__main__":
    run_cli(main)
