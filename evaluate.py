"""Score a checkpoint on test sets, or a folder of probability maps against a folder of masks.

python evaluate.py                                    # shipped model on the PraNet-protocol test sets
python evaluate.py checkpoint=outputs/x/checkpoints/best sets=[kvasir] tta=true
python evaluate.py pred_dir=MAPS gt_dir=$ENDOLIFT_DATA/kvasir-seg/masks   # any model's saved probability maps
Writes metrics.json, results.md and per set: per_image.csv, table.md, dice_hist.png, threshold_dice.png, worst.png.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core.errors import UserError, guard_task, run_cli
from core.files import atomic_write, write_csv_atomic
from core.settings import EVALUATE, check_settings
from data.datasets import Record, load_raw, records_from_sources
from data.io import list_images, prob_to_uint8, read_image, read_mask
from metrics.heads import heads_markdown, score_heads
from metrics.plots import dice_histogram, reliability_diagram, threshold_curve, worst_gallery
from metrics.segmentation import SegmentationMetrics
from models.predictor import Predictor, predict_records

TABLE_KEYS = ("mean_dice", "mean_iou", "weighted_f", "s_measure", "max_e_measure", "mae", "dice@0.5", "hd95")


def head_tables(set_dir: Path, rows: list[dict], heads: dict, results: dict, cfg: DictConfig) -> None:
    """A paper's tables of the heads on one set, as CSV + LaTeX (metrics.stats.write_table): the per-level summary
    with calibration and degenerate flags, the per-centre breakdown when the manifest has ``centre``, and decision
    curves (PNG + SVG, net benefit table) of the decisive class."""
    from metrics.cv import summary_rows
    from metrics.plots import decision_curves
    from metrics.stats import write_table
    from metrics.study import centre_rows, decision_curve_table

    rule = dict(min_frames=cfg.case_min_frames, min_confidence=cfg.case_min_confidence)
    write_table(summary_rows({"checkpoint": results}), set_dir / "table_heads", caption=f"Heads: {set_dir.name}")
    centres, net = [], []
    for h in results:
        centres += centre_rows(rows, h, heads[h], n_boot=cfg.n_boot, **rule)
        curves, table = decision_curve_table({"checkpoint": rows}, h, **rule)
        if curves:
            decision_curves(set_dir / f"decision_curve_{h}.png", curves, f"{h}: {set_dir.name}")
            net += table
    if centres:
        write_table(centres, set_dir / "table_centres", caption=f"Heads per centre: {set_dir.name}")
    if net:
        write_table(net, set_dir / "table_decision_curve", caption=f"Net benefit: {set_dir.name}")


def score_checkpoint(cfg: DictConfig, pred, records: list[Record], set_dir: Path) -> tuple[dict, dict, Any]:
    """pred: a models.predictor.Predictor, loaded once for all sets. Segmentation is scored on frames with a mask,
    heads on frames with a label (per frame, and per case where a case has several frames)."""
    seg = SegmentationMetrics(nsd_tolerance=cfg.nsd_tolerance)
    probs: dict[str, np.ndarray] = {}

    def on_frame(record: Record, sample: dict, p) -> None:
        prob = prob_to_uint8(p.prob)
        probs[record.id] = prob
        if "mask" in sample:
            seg.update(prob, sample["mask"], record.id)

    rows = predict_records(pred, records, batch_size=cfg.batch_size, progress=set_dir.name, on_frame=on_frame)
    head_results = score_heads(
        rows, pred.card.heads, n_boot=cfg.n_boot, min_frames=cfg.case_min_frames, min_confidence=cfg.case_min_confidence
    )
    if head_results:
        set_dir.mkdir(parents=True, exist_ok=True)
        for h, r in head_results.items():
            reliability_diagram(
                set_dir / f"reliability_{h}.png",
                {"frames": r["frame"]["reliability"]},
                f"{h}: {set_dir.name}",
                svg=True,
            )
        head_tables(set_dir, rows, pred.card.heads, head_results, cfg)
        with atomic_write(set_dir / "head_predictions.jsonl") as tmp:
            tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    by_id = {r.id: r for r in records}

    def load(name: str):
        raw = load_raw(by_id[name])
        return raw["image"], raw["mask"].astype(bool), probs[name]

    return (seg.compute() if seg.per_image else None), head_results, (seg.per_image, load)


def score_folders(cfg: DictConfig) -> tuple[dict, dict, Any]:
    pred_dir, gt_dir = Path(cfg.pred_dir), Path(cfg.gt_dir or "")
    for d, key in ((pred_dir, "pred_dir"), (gt_dir, "gt_dir")):
        if not d.is_dir():
            raise UserError(f"{key} is not a folder: {d}")
    gts, preds = list_images(gt_dir), list_images(pred_dir)
    if not gts:
        raise UserError(f"no masks in gt_dir {gt_dir}")
    if not preds:
        raise UserError(f"no probability maps in pred_dir {pred_dir}")
    if cfg.gt_list:  # every listed mask must have a prediction
        listed = [Path(x.strip()).stem for x in Path(cfg.gt_list).read_text().splitlines() if x.strip()]
        for s in listed:
            if s not in gts:
                raise UserError(f"{s} is listed in gt_list {cfg.gt_list} but has no mask in {gt_dir}")
            if s not in preds:
                raise UserError(f"mask {gts[s]} has no prediction in {pred_dir} (expected {s}.png)")
        common = listed
    else:
        common = [s for s in gts if s in preds]
        if not common:
            raise UserError(f"no prediction in {pred_dir} is named like a mask in {gt_dir}")
        if len(common) < len(gts):
            print(
                f"note: scoring the {len(common)} masks that have a prediction; {len(gts) - len(common)} masks in "
                f"{gt_dir} have none (set gt_list=FILE to require a prediction for each listed mask)"
            )
    seg = SegmentationMetrics(nsd_tolerance=cfg.nsd_tolerance)
    import cv2

    for s in tqdm(common, desc=cfg.name, leave=False):
        prob = cv2.imread(str(preds[s]), cv2.IMREAD_GRAYSCALE)
        if prob is None:
            raise UserError(f"cannot decode prediction {preds[s]}")
        seg.update(prob, read_mask(gts[s]), s)
    if seg.n_resized:
        print(
            f"note: {seg.n_resized} maps differed in size from their mask and were resized (bilinear) to it, "
            "as PraNet's toolbox does"
        )

    def load(name: str):
        image_dir = gt_dir.parent / "images"
        image = next((read_image(p) for p in image_dir.glob(f"{name}.*")), None) if image_dir.is_dir() else None
        gt = read_mask(gts[name]).astype(bool)
        prob = cv2.resize(cv2.imread(str(preds[name]), cv2.IMREAD_GRAYSCALE), (gt.shape[1], gt.shape[0]))
        return (image if image is not None else np.repeat(prob[:, :, None], 3, 2)), gt, prob

    return seg.compute(), {}, (seg.per_image, load)


def write_set(set_dir: Path, name: str, seg: dict, per_image: list[dict], load, gallery: int) -> None:
    set_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(set_dir / "per_image.csv", per_image)
    with atomic_write(set_dir / "table.md") as tmp:
        tmp.write_text(markdown_table({name: seg}))
    dice_histogram(set_dir / "dice_hist.png", per_image, name)
    threshold_curve(set_dir / "threshold_dice.png", seg["dice_curve"], name)
    if gallery:
        worst_gallery(set_dir / "worst.png", per_image, load, n=gallery, title=name)


def locked_test_source(source: dict[str, Any]) -> bool:
    """A test-set source that nothing in training chose from: manifest rows with split=test, or a folder's
    test list. Everything else (e.g. held-out validation sequences, which chose the epoch) is not locked."""
    if source.get("kind") == "manifest":
        return source.get("split") == "test"
    return source.get("kind", "folder") == "folder" and "test" in Path(str(source.get("split_file") or "")).name


def markdown_table(results: dict[str, dict]) -> str:
    head = "| set | n | " + " | ".join(TABLE_KEYS) + " |\n|" + "---|" * (len(TABLE_KEYS) + 2) + "\n"
    return head + "".join(
        f"| {k} | {v['n_images']} | " + " | ".join(f"{v[m]:.3f}" for m in TABLE_KEYS) + " |\n"
        for k, v in results.items()
    )


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
@guard_task
def main(cfg: DictConfig) -> dict:
    check_settings(OmegaConf.to_container(cfg, resolve=True), EVALUATE)
    out_dir = Path(cfg.out_dir)
    results: dict[str, Any] = {}
    if cfg.pred_dir:
        seg, head_results, (per_image, load) = score_folders(cfg)
        write_set(out_dir / cfg.name, cfg.name, seg, per_image, load, cfg.gallery)
        results[cfg.name] = {"segmentation": seg, "heads": head_results}
    else:
        test_sets = OmegaConf.to_container(cfg.data.test_sets, resolve=True)
        wanted = [cfg.sets] if isinstance(cfg.sets, str) else list(cfg.sets) if cfg.sets else list(test_sets)
        unknown = [s for s in wanted if s not in test_sets]
        if unknown:
            raise UserError(f"sets {unknown} are not in data.test_sets ({list(test_sets)})")
        pred = Predictor.from_checkpoint(
            cfg.checkpoint, device=cfg.device, precision=cfg.precision, tta=cfg.tta, backend=cfg.backend
        )
        classes = {h: v.classes for h, v in pred.card.heads.items()}
        # every set's files are found before any is scored: a missing dataset stops the run before it writes
        records = {n: records_from_sources(test_sets[n], heads=classes, covariates=pred.covariates) for n in wanted}
        for name in wanted:
            seg, head_results, (per_image, load) = score_checkpoint(cfg, pred, records[name], out_dir / name)
            if seg is not None:
                write_set(out_dir / name, name, seg, per_image, load, cfg.gallery)
            results[name] = {"segmentation": seg, "heads": head_results}
    doc: dict[str, Any] = {"config": OmegaConf.to_container(cfg, resolve=True), "results": results}
    if not cfg.pred_dir:  # what models.approve needs to accept these results as a locked test split's evidence
        doc["checkpoint"] = {
            "name": pred.card.name,
            "save_id": pred.card.save_id,
            "locked_test_sets": [n for n in wanted if all(locked_test_source(s) for s in test_sets[n])],
        }
    with atomic_write(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    table = markdown_table({k: v["segmentation"] for k, v in results.items() if v["segmentation"]})
    table += "".join("\n" + heads_markdown(v["heads"], title=f"Heads: {k}") for k, v in results.items() if v["heads"])
    with atomic_write(out_dir / "results.md") as tmp:
        tmp.write_text(table)
    print(table + f"\nwritten to {out_dir}")
    return results


if __name__ == "__main__":
    run_cli(main)
