"""Lesion-segmentation metrics in two layers: ``image_scores`` scores one image, ``set_scores`` summarises a set of
scored images; ``SegmentationMetrics`` is the stateful object over both (``update`` per image, ``compute``,
``reset``).

The PraNet-protocol set follows PraNet's evaluation toolbox (eval/main.m) through PySODMetrics:
the probability map (0-255) is min-max normalised per image; the truth is ``gt > 128``; Dice and IoU are computed
at 256 thresholds, averaged over images, then ``mean_dice``/``mean_iou`` are the mean over thresholds (and
``max_*`` the max); weighted F-measure (Margolin et al. CVPR'14, beta^2 = 1), S-measure (Fan et al. ICCV'17,
alpha 0.5), E-measure (Fan et al. IJCAI'18; mean and max over thresholds) and MAE use the continuous map.
Alongside: Dice, IoU, precision and recall of the map thresholded at 0.5 (no normalisation), HD95 and NSD, and
lesion-level recall (metrics/lesions.py: each lesion found at IoU >= 0.3; small lesions under 2% of the image).
Every set value is a mean over images of a per-image value, taken the way PySODMetrics takes it (float64).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import py_sod_metrics as sod
import torch

from data.io import prob_to_uint8
from metrics.basic import dice_iou_per_image
from metrics.boundary import hd95, nsd
from metrics.lesions import frame_lesion_stats, lesion_recall


def _binary_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice/IoU (the one rule of metrics.basic: both empty is a perfect 1) plus precision/recall of boolean masks."""
    dice, iou = dice_iou_per_image(torch.from_numpy(pred[None]), torch.from_numpy(gt[None]))
    tp = float((pred & gt).sum())
    ps, gs = float(pred.sum()), float(gt.sum())
    return {
        "dice": float(dice[0]),
        "iou": float(iou[0]),
        "precision": tp / ps if ps else (1.0 if gs == 0 else 0.0),
        "recall": tp / gs if gs else 1.0,
    }


def map_and_truth(prob: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """(map as uint8 0-255, truth as uint8 0/255, whether the map was resized): prob H x W uint8 or float in
    [0, 1], gt nonzero/255 = lesion. A map of another size is resized (bilinear) to the truth's, as PraNet's
    toolbox does."""
    if prob.dtype != np.uint8:
        prob = prob_to_uint8(prob)
    gt_u8 = gt.astype(np.uint8)
    if gt_u8.max() <= 1:
        gt_u8 = gt_u8 * 255
    resized = prob.shape != gt_u8.shape
    if resized:
        prob = cv2.resize(prob, (gt_u8.shape[1], gt_u8.shape[0]), interpolation=cv2.INTER_LINEAR)
    return prob, gt_u8, resized


@dataclass
class ImageScores:
    """One image's scores: ``row`` (its per_image.csv row) and the protocol's per-image values that only a set
    summary reports (weighted F-measure and the 256-threshold curves, in PySODMetrics' order, 255 down to 0)."""

    row: dict[str, Any]
    weighted_f: float
    dice_curve: np.ndarray
    iou_curve: np.ndarray
    e_curve: np.ndarray


def image_scores(
    prob: np.ndarray, gt: np.ndarray, name: str = "", *, nsd_tolerance: float = 2.0, boundary: bool = True
) -> ImageScores:
    """Every metric of one image: prob H x W uint8 (0-255), gt H x W uint8 0/255, the same size (map_and_truth)."""
    sm, wf, em, mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()
    fm = sod.FmeasureV2(
        metric_handlers={
            "dice": sod.DICEHandler(with_dynamic=True, with_adaptive=False),
            "iou": sod.IOUHandler(with_dynamic=True, with_adaptive=False),
        }
    )
    for m in (sm, wf, em, mae, fm):
        m.step(pred=prob, gt=gt)
    pred_b, gt_b = prob >= 128, gt > 128  # 0.5 on the raw map (128/255 = 0.502)
    row: dict[str, Any] = {
        "name": name,
        **_binary_scores(pred_b, gt_b),
        "s_measure": float(sm.get_results()["sm"]),
        "mae": float(mae.get_results()["mae"]),
        "gt_fraction": float(gt_b.mean()),
        "pred_fraction": float(pred_b.mean()),
        **frame_lesion_stats(pred_b, gt_b),
    }
    if boundary:
        row["hd95"] = hd95(pred_b, gt_b)
        row[f"nsd@{nsd_tolerance:g}"] = nsd(pred_b, gt_b, nsd_tolerance)
    curves = fm.get_results()
    return ImageScores(
        row,
        weighted_f=wf.get_results()["wfm"],
        dice_curve=curves["dice"]["dynamic"],
        iou_curve=curves["iou"]["dynamic"],
        e_curve=em.get_results()["em"]["curve"],
    )


def _mean(values: Sequence[Any]) -> Any:
    """Mean over images (axis 0 for curves), in float64 as PySODMetrics averages."""
    return np.mean(np.array(values, dtype=np.float64), axis=0)


def set_scores(images: Sequence[ImageScores], *, n_resized: int = 0, nsd_tolerance: float = 2.0) -> dict[str, Any]:
    """A set's summary from its scored images: the PraNet-protocol metrics, the means of the per-image rows at 0.5,
    and the mean Dice at each threshold (``dice_curve``, ascending)."""
    if not images:
        raise ValueError("no images were scored")
    rows = [s.row for s in images]
    dice_curve, iou_curve = _mean([s.dice_curve for s in images]), _mean([s.iou_curve for s in images])
    e_curve = _mean([s.e_curve for s in images])
    out: dict[str, Any] = {
        "n_images": len(rows),
        "mean_dice": float(np.mean(dice_curve)),
        "mean_iou": float(np.mean(iou_curve)),
        "max_dice": float(np.max(dice_curve)),
        "max_iou": float(np.max(iou_curve)),
        "weighted_f": float(_mean([s.weighted_f for s in images])),
        "s_measure": float(_mean([r["s_measure"] for r in rows])),
        "max_e_measure": float(np.max(e_curve)),
        "mean_e_measure": float(np.mean(e_curve)),
        "mae": float(_mean([r["mae"] for r in rows])),
        "n_resized": n_resized,
    }
    for key in ("dice", "iou", "precision", "recall", "hd95", f"nsd@{nsd_tolerance:g}"):
        if key in rows[0]:
            out[f"{key}@0.5" if key in ("dice", "iou", "precision", "recall") else key] = float(
                np.mean([r[key] for r in rows])
            )
    for key, small in (("lesion_recall", False), ("small_lesion_recall", True)):
        recall, total = lesion_recall(rows, small=small)
        out[key], out[f"n_{key.removesuffix('_recall')}s"] = (recall if total else None), total
    # pysodmetrics' 256 thresholds run from 255 down to 0; store them ascending with their threshold
    out["dice_curve"] = [float(v) for v in np.asarray(dice_curve)[::-1]]
    return out


class SegmentationMetrics:
    """update(prob, gt, name): prob H x W uint8 (0-255) or float in [0, 1]; gt H x W, nonzero/255 = lesion.

    A prob of another size is resized (bilinear) to the truth's size, as PraNet's toolbox does; the number of
    resized maps is reported as ``n_resized``.
    """

    def __init__(self, *, nsd_tolerance: float = 2.0, boundary: bool = True) -> None:
        self.nsd_tolerance = nsd_tolerance
        self.boundary = boundary
        self.reset()

    def reset(self) -> None:
        self.images: list[ImageScores] = []
        self.per_image: list[dict[str, Any]] = []
        self.n_resized = 0

    def update(self, prob: np.ndarray, gt: np.ndarray, name: str = "") -> dict[str, Any]:
        prob, gt_u8, resized = map_and_truth(prob, gt)
        self.n_resized += resized
        scored = image_scores(prob, gt_u8, name, nsd_tolerance=self.nsd_tolerance, boundary=self.boundary)
        self.images.append(scored)
        self.per_image.append(scored.row)
        return scored.row

    def compute(self) -> dict[str, Any]:
        return set_scores(self.images, n_resized=self.n_resized, nsd_tolerance=self.nsd_tolerance)
