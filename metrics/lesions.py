"""Lesion-level scoring: was each lesion found, and how do small lesions fare?

A frame's Dice says how well the lesion pixels were covered on average; it hides a small polyp missed beside a large
one, and small lesions weigh little in a mean over frames. Here every ground-truth lesion (a connected component of
the mask, 8-connected) is scored on its own:

- ``found``: the IoU between the lesion and the predicted components that touch it is at least ``min_iou`` (0.3, a
  common detection criterion for polyps: the outline may be loose, the lesion must be there);
- ``small``: the lesion covers less than ``small_fraction`` (2%) of the image.

Components under ``MIN_FRACTION`` (0.05%) of the image are not lesions but annotation noise: Kvasir-SEG's JPEG masks
carry 143 specks of under 5 pixels (CVC-ClinicDB 23), and no real lesion of either set is that small (the next
smallest is over 100 pixels). Counted that way Kvasir-SEG has 72 small lesions and CVC-ClinicDB 100.

``lesion_rows`` gives one row per lesion; ``frame_lesion_stats`` the per-frame counts that evaluate.py adds to each
image's row (so lesion recall can be resampled by sequence like any per-image metric); ``lesion_recall`` a set's.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

SMALL_FRACTION = 0.02  # a lesion under 2% of the image area is "small"
MIN_FRACTION = 0.0005  # smaller ground-truth components are annotation noise, not lesions
MIN_IOU = 0.3  # a lesion is found when its IoU with the predicted components touching it reaches this


def components(mask: np.ndarray) -> tuple[int, np.ndarray]:
    """Number of connected components (8-connected) of a binary mask and their label image (0 = background)."""
    n, labels = cv2.connectedComponents(np.ascontiguousarray(mask, dtype=np.uint8), connectivity=8)
    return n - 1, labels


def lesion_rows(
    pred: np.ndarray, truth: np.ndarray, *, min_iou: float = MIN_IOU, small_fraction: float = SMALL_FRACTION
) -> list[dict[str, Any]]:
    """One row per ground-truth lesion: its area fraction of the image, ``small``, the IoU with the union of the
    predicted components that overlap it (0 when none does), and ``found``. pred, truth: H x W binary masks."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and mask {truth.shape} differ in size")
    n_true, true_labels = components(truth)
    _, pred_labels = components(pred)
    total = truth.size
    rows = []
    for k in range(1, n_true + 1):
        lesion = true_labels == k
        if lesion.sum() < MIN_FRACTION * total:
            continue
        touching = np.unique(pred_labels[lesion])
        touching = touching[touching > 0]
        covered = np.isin(pred_labels, touching) if touching.size else np.zeros_like(lesion)
        inter = np.logical_and(lesion, covered).sum()
        union = np.logical_or(lesion, covered).sum()
        iou = float(inter / union) if union else 0.0
        frac = float(lesion.sum() / total)
        rows.append({"area_fraction": frac, "small": frac < small_fraction, "iou": iou, "found": iou >= min_iou})
    return rows


def frame_lesion_stats(
    pred: np.ndarray, truth: np.ndarray, *, min_iou: float = MIN_IOU, small_fraction: float = SMALL_FRACTION
) -> dict[str, Any]:
    """Per-frame lesion counts for a per-image table (metrics.segmentation.image_scores): lesions, lesions found,
    small lesions, small lesions found."""
    rows = lesion_rows(pred, truth, min_iou=min_iou, small_fraction=small_fraction)
    small = [r for r in rows if r["small"]]
    return {
        "lesions": len(rows),
        "lesions_found": sum(r["found"] for r in rows),
        "small_lesions": len(small),
        "small_found": sum(r["found"] for r in small),
    }


def lesion_recall(per_image: list[dict[str, Any]], *, small: bool = False) -> tuple[float, int]:
    """Recall of lesions (or of small lesions) over a set's per-image rows: found / total, and the total."""
    key, hit = ("small_lesions", "small_found") if small else ("lesions", "lesions_found")
    total = sum(int(r[key]) for r in per_image)
    return (sum(int(r[hit]) for r in per_image) / total if total else float("nan")), total
