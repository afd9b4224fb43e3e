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

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from core.cli import run_cli
from core.errors import guard_task
from review.options import INFER, INFER_WHERE, read_infer_settings


@hydra.main(version_base="1.3", config_path="configs", config_name="infer")
@guard_task
def main(cfg: DictConfig) -> None:
    """Check the settings and build them typed (review/options.py InferSettings, all the review code takes), then
    review into out_dir (review/runs.py) or, with out_root, an archive of case folders (review/batch.py). torch and
    the model are imported only once the settings have passed, so that a mistyped setting is answered in about a
    second."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    settings = read_infer_settings(OmegaConf.to_container(cfg, resolve=True))
    hydra_cfg = HydraConfig.get()
    overrides = list(hydra_cfg.overrides.task)
    if settings.out_root is not None:
        from review.batch import review_archive

        multirun = hydra_cfg.mode == RunMode.MULTIRUN
        code = review_archive(
            settings, overrides=overrides, multirun=multirun, job_dir=Path(hydra_cfg.runtime.output_dir)
        )
    else:
        from review.runs import review_to_out_dir

        code = 2 if review_to_out_dir(settings, overrides=overrides) else 0
    if code:
        sys.exit(code)


if __name__ == "__main__":
    from review.batch import sweep_arguments

    run_cli(main, schema=INFER, where=INFER_WHERE, prepare=sweep_arguments)
