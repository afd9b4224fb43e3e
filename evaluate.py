"""Score a checkpoint on test sets, or a folder of probability maps against a folder of masks.

python evaluate.py                                    # shipped model on the PraNet-protocol test sets
python evaluate.py checkpoint=outputs/x/checkpoints/best sets=[kvasir] tta=true
python evaluate.py pred_dir=MAPS gt_dir=$ENDOLIFT_DATA/kvasir-seg/masks   # any model's saved probability maps
Writes metrics.json, results.md and per set: per_image.csv, table.md, dice_hist.png, threshold_dice.png, worst.png.
The scoring itself is metrics.evaluation's (per image, per case, per set, files); this is its command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from core.cli import config_groups, run_cli
from core.errors import UserError, guard_task
from core.settings import check_settings
from data.datasets import records_from_sources
from metrics.evaluation import (
    EVALUATE,
    EVALUATE_WHERE,
    score_prediction_folder,
    score_records,
    write_head_files,
    write_run_files,
    write_set_files,
)
from models.predictor import Predictor
from models.predictor_settings import partnered_ensemble, predictor_arguments


def locked_test_source(source: dict[str, Any]) -> bool:
    """A test-set source that nothing in training chose from: manifest rows with split=test, or a folder's
    test list. Everything else (e.g. held-out validation sequences, which chose the epoch) is not locked."""
    if source.get("kind") == "manifest":
        return source.get("split") == "test"
    return source.get("kind", "folder") == "folder" and "test" in Path(str(source.get("split_file") or "")).name


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """The run evaluate.py makes of its settings: score the folder (pred_dir) or the checkpoint on each wanted
    test set, write every set's files and the run's; returns set -> {"segmentation", "heads"}."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    check_settings(resolved, EVALUATE, closed=True, where=EVALUATE_WHERE)
    out_dir = Path(cfg.out_dir)
    results: dict[str, Any] = {}
    # the settings that ran: another checkpoint or backend runs without the profile's ensemble
    settings = partnered_ensemble(resolved)
    doc: dict[str, Any] = {"config": settings, "results": results}
    if cfg.pred_dir:
        result = score_prediction_folder(
            cfg.pred_dir, cfg.gt_dir, gt_list=cfg.gt_list, name=cfg.name, nsd_tolerance=cfg.nsd_tolerance
        )
        write_set_files(out_dir / cfg.name, cfg.name, result, cfg.gallery)
        results[cfg.name] = {"segmentation": result.segmentation, "heads": result.heads}
    else:
        test_sets = OmegaConf.to_container(cfg.data.test_sets, resolve=True)
        wanted = [cfg.sets] if isinstance(cfg.sets, str) else list(cfg.sets) if cfg.sets else list(test_sets)
        unknown = [s for s in wanted if s not in test_sets]
        if unknown:
            raise UserError(f"sets {unknown} are not in data.test_sets ({list(test_sets)})")
        pred = Predictor.from_checkpoint(**predictor_arguments(settings))
        classes = {h: v.classes for h, v in pred.card.heads.items()}
        # every set's files are found before any is scored: a missing dataset stops the run before it writes
        records = {n: records_from_sources(test_sets[n], heads=classes, covariates=pred.covariates) for n in wanted}
        rule = dict(n_boot=cfg.n_boot, min_frames=cfg.case_min_frames, min_confidence=cfg.case_min_confidence)
        for name in wanted:
            result = score_records(
                pred, records[name], name=name, batch_size=cfg.batch_size, nsd_tolerance=cfg.nsd_tolerance, **rule
            )
            if result.heads:
                write_head_files(out_dir / name, result, pred.card.heads, **rule)
            if result.segmentation is not None:
                write_set_files(out_dir / name, name, result, cfg.gallery)
            results[name] = {"segmentation": result.segmentation, "heads": result.heads}
        # what models.approve needs to accept these results as a locked test split's evidence
        run = pred.run_settings()
        doc["checkpoint"] = {
            "name": pred.card.name,
            "save_id": pred.card.save_id,
            "ensemble": run["ensemble"],  # members averaged in: not this checkpoint's evidence
            "tta": run["tta"],
            "tta_views": run["tta_views"],
            "locked_test_sets": [n for n in wanted if all(locked_test_source(s) for s in test_sets[n])],
        }
    table = write_run_files(out_dir, doc)
    print(table + f"\nwritten to {out_dir}")
    return results


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@guard_task
def main(cfg: DictConfig) -> dict:
    return evaluate(cfg)


if __name__ == "__main__":
    run_cli(main, schema=EVALUATE, where=EVALUATE_WHERE, groups=config_groups(Path(__file__).parent / "configs"))
