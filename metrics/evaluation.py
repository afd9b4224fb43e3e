"""Scoring a model on test sets, in layers as nnU-Net v2 evaluates (one image, then a set, then files).

- per image: ``metrics.segmentation.image_scores``, every segmentation metric of one map against its mask;
- per case: ``metrics.heads``, a case's frames aggregated by the rule infer.py displays (``case_estimates``) and
  scored per frame and per case (``score_heads``);
- per set: ``score_records`` (a checkpoint's predictions on one set's records) and ``score_prediction_folder``
  (saved probability maps against a folder of masks, paired by ``pair_prediction_files``), each -> ``SetResult``;
- files: ``write_set_files`` (per_image.csv, table.md, figures), ``write_head_files`` (reliability diagrams, the
  head tables, head_predictions.jsonl) and ``write_run_files`` (metrics.json, results.md).

evaluate.py is the command line around these: settings, loading the predictor, finding each set's records.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import atomic_write, write_csv_atomic
from core.settings import Free, Num, Text, rules_of, setting
from data.datasets import Record, load_raw
from data.io import list_images, prob_to_uint8, read_image, read_mask
from metrics.heads import heads_markdown, score_heads
from metrics.plots import dice_histogram, reliability_diagram, threshold_curve, worst_gallery
from metrics.segmentation import SegmentationMetrics
from models.predictor import predict_records
from models.predictor_settings import PredictorSettings

TABLE_KEYS = ("mean_dice", "mean_iou", "weighted_f", "s_measure", "max_e_measure", "mae", "dice@0.5", "hd95")


@dataclass(kw_only=True)
class EvaluateSettings(PredictorSettings):
    """evaluate.py's settings (configs/evaluate.yaml holds the defaults): the checkpoint's (PredictorSettings), the
    folder mode's, and the scoring's. Closed but for ``data`` (the data config, of which evaluate.py reads only the
    test sets, the user's names and sources) and ``paths``."""

    pred_dir: str | None = setting(Text(nullable=True))
    gt_dir: str | None = setting(Text(nullable=True))
    gt_list: str | None = setting(Text(nullable=True))
    name: str = setting(Text())
    sets: list[str] | str | None = setting(Free())  # names of data.test_sets, checked by evaluate.py
    out_dir: str = setting(Text())
    batch_size: int = setting(Num(1, 1024, integer=True))
    nsd_tolerance: float = setting(Num(0, lo_open=True))
    gallery: int = setting(Num(0, 100, integer=True))
    n_boot: int = setting(Num(0, 100000, integer=True))
    case_min_frames: int = setting(Num(1, integer=True))
    case_min_confidence: float = setting(Num(0, 1))
    data: dict[str, Any] = setting(Free(open_keys=True))
    paths: dict[str, Any] = setting(Free(open_keys=True))


EVALUATE = rules_of(EvaluateSettings)
EVALUATE_WHERE = "configs/evaluate.yaml"  # named in the message for an unknown setting


@dataclass
class SetResult:
    """One set's scores. ``segmentation``: metrics.segmentation.set_scores (None when no frame has a mask);
    ``heads``: metrics.heads.score_heads; ``per_image``: the per-image rows; ``load(name)`` -> (image H x W x 3
    uint8, truth H x W bool, map H x W uint8) for the worst-image gallery; ``head_rows``: the per-frame prediction
    rows the heads were scored on (checkpoint mode)."""

    segmentation: dict[str, Any] | None
    heads: dict[str, Any]
    per_image: list[dict[str, Any]]
    load: Callable[[str], tuple]
    head_rows: list[dict[str, Any]] = field(default_factory=list)


# --- per set -------------------------------------------------------------------------------------------------------


def score_records(
    predictor: Any,
    records: Sequence[Record],
    *,
    name: str,
    batch_size: int = 8,
    nsd_tolerance: float = 2.0,
    n_boot: int = 1000,
    min_frames: int = 3,
    min_confidence: float = 0.0,
) -> SetResult:
    """A models.predictor.Predictor on one set's records, in one pass: segmentation scored on frames with a mask,
    heads on frames with a label (per frame, and per case where a case has several frames)."""
    seg = SegmentationMetrics(nsd_tolerance=nsd_tolerance)
    probs: dict[str, np.ndarray] = {}

    def on_frame(record: Record, sample: dict, p) -> None:
        prob = prob_to_uint8(p.prob)
        probs[record.id] = prob
        if "mask" in sample:
            row = seg.update(prob, sample["mask"], record.id)
            if p.reliability is not None:  # a predictor with reliability=True: the frame's score beside its Dice
                row["reliability"] = round(p.reliability, 4)

    rows = predict_records(predictor, records, batch_size=batch_size, progress=name, on_frame=on_frame)
    heads = score_heads(rows, predictor.card.heads, n_boot=n_boot, min_frames=min_frames, min_confidence=min_confidence)
    by_id = {r.id: r for r in records}

    def load(image_id: str):
        raw = load_raw(by_id[image_id])
        return raw["image"], raw["mask"].astype(bool), probs[image_id]

    return SetResult(seg.compute() if seg.per_image else None, heads, seg.per_image, load, rows)


def pair_prediction_files(
    pred_dir: Path, gt_dir: Path, gt_list: str | Path | None = None
) -> tuple[list[str], dict[str, Path], dict[str, Path]]:
    """(names to score, name -> probability map, name -> mask), paired by file stem. With ``gt_list`` every listed
    mask must exist and have a map; without it the masks that have a map are scored (a note says how many have
    none)."""
    for d, key in ((pred_dir, "pred_dir"), (gt_dir, "gt_dir")):
        if not d.is_dir():
            raise UserError(f"{key} is not a folder: {d}")
    gts, preds = list_images(gt_dir), list_images(pred_dir)
    if not gts:
        raise UserError(f"no masks in gt_dir {gt_dir}")
    if not preds:
        raise UserError(f"no probability maps in pred_dir {pred_dir}")
    if gt_list:  # every listed mask must have a prediction
        listed = [Path(x.strip()).stem for x in Path(gt_list).read_text().splitlines() if x.strip()]
        for s in listed:
            if s not in gts:
                raise UserError(f"{s} is listed in gt_list {gt_list} but has no mask in {gt_dir}")
            if s not in preds:
                raise UserError(f"mask {gts[s]} has no prediction in {pred_dir} (expected {s}.png)")
        return listed, preds, gts
    common = [s for s in gts if s in preds]
    if not common:
        raise UserError(f"no prediction in {pred_dir} is named like a mask in {gt_dir}")
    if len(common) < len(gts):
        print(
            f"note: scoring the {len(common)} masks that have a prediction; {len(gts) - len(common)} masks in "
            f"{gt_dir} have none (set gt_list=FILE to require a prediction for each listed mask)"
        )
    return common, preds, gts


def score_prediction_folder(
    pred_dir: str | Path,
    gt_dir: str | Path,
    *,
    gt_list: str | Path | None = None,
    name: str = "predictions",
    nsd_tolerance: float = 2.0,
) -> SetResult:
    """Any model's saved probability maps (grey PNGs, 0-255) against a folder of masks (pair_prediction_files)."""
    import cv2
    from tqdm import tqdm

    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir or "")
    names, preds, gts = pair_prediction_files(pred_dir, gt_dir, gt_list)
    seg = SegmentationMetrics(nsd_tolerance=nsd_tolerance)
    for s in tqdm(names, desc=name, leave=False):
        prob = cv2.imread(str(preds[s]), cv2.IMREAD_GRAYSCALE)
        if prob is None:
            raise UserError(f"cannot decode prediction {preds[s]}")
        seg.update(prob, read_mask(gts[s]), s)
    if seg.n_resized:
        print(
            f"note: {seg.n_resized} maps differed in size from their mask and were resized (bilinear) to it, "
            "as PraNet's toolbox does"
        )

    def load(image_name: str):
        image_dir = gt_dir.parent / "images"
        found = image_dir.glob(f"{image_name}.*") if image_dir.is_dir() else ()
        image = next((read_image(p) for p in found), None)
        gt = read_mask(gts[image_name]).astype(bool)
        prob = cv2.resize(cv2.imread(str(preds[image_name]), cv2.IMREAD_GRAYSCALE), (gt.shape[1], gt.shape[0]))
        return (image if image is not None else np.repeat(prob[:, :, None], 3, 2)), gt, prob

    return SetResult(seg.compute(), {}, seg.per_image, load)


# --- files ---------------------------------------------------------------------------------------------------------


def segmentation_markdown(results: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per set (set name -> segmentation summary) of the headline segmentation metrics."""
    head = "| set | n | " + " | ".join(TABLE_KEYS) + " |\n|" + "---|" * (len(TABLE_KEYS) + 2) + "\n"
    return head + "".join(
        f"| {k} | {v['n_images']} | " + " | ".join(f"{v[m]:.3f}" for m in TABLE_KEYS) + " |\n"
        for k, v in results.items()
    )


def write_set_files(set_dir: Path, name: str, result: SetResult, gallery: int) -> None:
    """A set's segmentation files: per_image.csv, table.md, dice_hist.png, threshold_dice.png and, with
    ``gallery`` > 0, worst.png (the ``gallery`` lowest-Dice images)."""
    set_dir.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(set_dir / "per_image.csv", result.per_image)
    with atomic_write(set_dir / "table.md") as tmp:
        tmp.write_text(segmentation_markdown({name: result.segmentation}))
    dice_histogram(set_dir / "dice_hist.png", result.per_image, name)
    threshold_curve(set_dir / "threshold_dice.png", result.segmentation["dice_curve"], name)
    if gallery:
        worst_gallery(set_dir / "worst.png", result.per_image, result.load, n=gallery, title=name)


def write_head_tables(
    set_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    heads: Mapping[str, Any],
    results: Mapping[str, Any],
    *,
    n_boot: int,
    min_frames: int,
    min_confidence: float,
) -> None:
    """A paper's tables of the heads on one set, as CSV + LaTeX (metrics.stats.write_table): the per-level summary
    with calibration and degenerate flags, the per-centre breakdown when the manifest has ``centre``, and decision
    curves (PNG + SVG, net benefit table) of the decisive class."""
    from metrics.cv import summary_rows
    from metrics.plots import decision_curves
    from metrics.stats import write_table
    from metrics.study import centre_rows, decision_curve_table

    rule = dict(min_frames=min_frames, min_confidence=min_confidence)
    write_table(summary_rows({"checkpoint": results}), set_dir / "table_heads", caption=f"Heads: {set_dir.name}")
    centres, net = [], []
    for h in results:
        centres += centre_rows(rows, h, heads[h], n_boot=n_boot, **rule)
        curves, table = decision_curve_table({"checkpoint": rows}, h, **rule)
        if curves:
            decision_curves(set_dir / f"decision_curve_{h}.png", curves, f"{h}: {set_dir.name}")
            net += table
    if centres:
        write_table(centres, set_dir / "table_centres", caption=f"Heads per centre: {set_dir.name}")
    if net:
        write_table(net, set_dir / "table_decision_curve", caption=f"Net benefit: {set_dir.name}")


def write_head_files(
    set_dir: Path, result: SetResult, heads: Mapping[str, Any], *, n_boot: int, min_frames: int, min_confidence: float
) -> None:
    """A set's head files: a reliability diagram per head (PNG + SVG), the head tables (write_head_tables) and
    head_predictions.jsonl (the rows the heads were scored on)."""
    set_dir.mkdir(parents=True, exist_ok=True)
    for h, r in result.heads.items():
        reliability_diagram(
            set_dir / f"reliability_{h}.png", {"frames": r["frame"]["reliability"]}, f"{h}: {set_dir.name}", svg=True
        )
    write_head_tables(
        set_dir,
        result.head_rows,
        heads,
        result.heads,
        n_boot=n_boot,
        min_frames=min_frames,
        min_confidence=min_confidence,
    )
    with atomic_write(set_dir / "head_predictions.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in result.head_rows))


def write_run_files(out_dir: Path, doc: Mapping[str, Any]) -> str:
    """A run's metrics.json (``doc``: its settings, ``results``: set -> {"segmentation", "heads"}, and what a
    checkpoint run records) and results.md (the segmentation table, then each set's head tables); returns the
    results.md text."""
    with atomic_write(out_dir / "metrics.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2))
    results = doc["results"]
    table = segmentation_markdown({k: v["segmentation"] for k, v in results.items() if v["segmentation"]})
    table += "".join("\n" + heads_markdown(v["heads"], title=f"Heads: {k}") for k, v in results.items() if v["heads"])
    with atomic_write(out_dir / "results.md") as tmp:
        tmp.write_text(table)
    return table
