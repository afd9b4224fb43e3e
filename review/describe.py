"""Turn a probability map into what a reviewer reads: lesions with boxes and contours.
(Frame quality, blur and glare, is in data/quality.py.)"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def lesions(prob: np.ndarray, mask: np.ndarray, *, max_points: int = 64) -> list[dict[str, Any]]:
    """Connected lesions of ``mask`` (H x W 0/1), largest first: bbox [x, y, w, h], area (px), mean and max
    probability, and the outer contour as at most ``max_points`` [x, y] points (input pixel coordinates)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    out = []
    for i in range(1, n):
        comp = labels == i
        contours, _ = cv2.findContours(comp.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        c = max(contours, key=cv2.contourArea)
        eps = 0.5
        while len(c) > max_points:
            c = cv2.approxPolyDP(c, eps, True)
            eps *= 1.5
        x, y, w, h, area = (int(v) for v in stats[i])
        out.append(
            {
                "bbox": [x, y, w, h],
                "area_px": area,
                "mean_prob": round(float(prob[comp].mean()), 4),
                "max_prob": round(float(prob[comp].max()), 4),
                "contour": c.reshape(-1, 2).tolist(),
            }
        )
    return sorted(out, key=lambda d: -d["area_px"])


def clean_mask(
    prob: np.ndarray, fov: np.ndarray, *, threshold: float = 0.5, min_area_fraction: float = 0.002
) -> np.ndarray:
    """Threshold inside the field of view ``fov`` and drop specks smaller than ``min_area_fraction`` of it."""
    mask = ((prob >= threshold) & (fov > 0)).astype(np.uint8)
    min_px = min_area_fraction * max(1, int(fov.sum()))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_px:
            mask[labels == i] = 0
    return mask
