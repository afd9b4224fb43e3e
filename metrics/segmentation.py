"""Lesion-segmentation metrics as one stateful object: ``update`` per image, ``compute`` for the set, ``reset``.

The PraNet-protocol set follows PraNet's evaluation toolbox (eval/main.m) through PySODMetrics:
the probability map (0-255) is min-max normalised per image; the truth is ``gt > 128``; Dice and IoU are computed
at 256 thresholds, averaged over images, then ``mean_dice``/``mean_iou`` are the mean over thresholds (and
``max_*`` the max); weighted F-measure (Margolin et al. CVPR'14, beta^2 = 1), S-measure (Fan et al. ICCV'17,
alpha 0.5), E-measure (Fan et al. IJCAI'18; mean and max over thresholds) and MAE use the continuous map.
Alongside: Dice, IoU, precision and recall of the map thresholded at 0.5 (no normalisation), HD95 and NSD.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import py_sod_metrics as sod
import torch

from data.io import prob_to_uint8
from metrics.basic import dice_iou_per_image
from metrics.boundary import hd95, nsd


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
        self._sm, self._wf, self._em, self._mae = sod.Smeasure(), sod.WeightedFmeasure(), sod.Emeasure(), sod.MAE()
        self._fm = sod.FmeasureV2(
            metric_handlers={
                "dice": sod.DICEHandler(with_dynamic=True, with_adaptive=False),
                "iou": sod.IOUHandler(with_dynamic=True, with_adaptive=False),
            }
        )
        self.per_image: list[dict[str, Any]] = []
        self.n_resized = 0

    def update(self, prob: np.ndarray, gt: np.ndarray, name: str = "") -> dict[str, Any]:
        if prob.dtype != np.uint8:
            prob = prob_to_uint8(prob)
        gt_u8 = gt.astype(np.uint8)
        if gt_u8.max() <= 1:
            gt_u8 = gt_u8 * 255
        if prob.shape != gt_u8.shape:
            prob = cv2.resize(prob, (gt_u8.shape[1], gt_u8.shape[0]), interpolation=cv2.INTER_LINEAR)
            self.n_resized += 1
        for m in (self._sm, self._wf, self._em, self._mae, self._fm):
            m.step(pred=prob, gt=gt_u8)
        pred_b, gt_b = prob >= 128, gt_u8 > 128  # 0.5 on the raw map (128/255 = 0.502)
        row: dict[str, Any] = {
            "name": name,
            **_binary_scores(pred_b, gt_b),
            "s_measure": float(self._sm.sms[-1]),
            "mae": float(self._mae.maes[-1]),
            "gt_fraction": float(gt_b.mean()),
            "pred_fraction": float(pred_b.mean()),
        }
        if self.boundary:
            row["hd95"] = hd95(pred_b, gt_b)
            row[f"nsd@{self.nsd_tolerance:g}"] = nsd(pred_b, gt_b, self.nsd_tolerance)
        self.per_image.append(row)
        return row

    def compute(self) -> dict[str, Any]:
        if not self.per_image:
            raise ValueError("no images were scored")
        fm = self._fm.get_results()
        em = self._em.get_results()["em"]["curve"]
        dice_curve, iou_curve = fm["dice"]["dynamic"], fm["iou"]["dynamic"]
        out: dict[str, Any] = {
            "n_images": len(self.per_image),
            "mean_dice": float(np.mean(dice_curve)),
            "mean_iou": float(np.mean(iou_curve)),
            "max_dice": float(np.max(dice_curve)),
            "max_iou": float(np.max(iou_curve)),
            "weighted_f": float(self._wf.get_results()["wfm"]),
            "s_measure": float(self._sm.get_results()["sm"]),
            "max_e_measure": float(np.max(em)),
            "mean_e_measure": float(np.mean(em)),
            "mae": float(self._mae.get_results()["mae"]),
            "n_resized": self.n_resized,
        }
        for key in ("dice", "iou", "precision", "recall", "hd95", f"nsd@{self.nsd_tolerance:g}"):
            if key in self.per_image[0]:
                out[f"{key}@0.5" if key in ("dice", "iou", "precision", "recall") else key] = float(
                    np.mean([r[key] for r in self.per_image])
                )
        # pysodmetrics' 256 thresholds run from 255 down to 0; store them ascending with their threshold
        out["dice_curve"] = [float(v) for v in np.asarray(dice_curve)[::-1]]
        return out
