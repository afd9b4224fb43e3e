"""Turn a probability map into what a reviewer reads: lesions with boxes and contours, and frame quality."""
from __future__ import annotations

from typing import Any

import cv2
import numpy as np


def frame_quality(image: np.ndarray, area: np.ndarray, *, blur_threshold: float = 60.0,
                  overexposed_threshold: float = 0.08) -> dict[str, Any]:
    """Blur (variance of the Laplacian inside the field; low = blurry) and over-exposure (fraction of the field's
    pixels with all channels >= 250, i.e. specular glare or a lens against the wall)."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    inside = area > 0
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    sharpness = float(lap[inside].var()) if inside.any() else 0.0
    over = float((image.min(axis=2)[inside] >= 250).mean()) if inside.any() else 0.0
    return {"sharpness": round(sharpness, 1), "blurry": sharpness < blur_threshold,
            "overexposed_fraction": round(over, 4), "overexposed": over > overexposed_threshold}


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
        out.append({"bbox": [x, y, w, h], "area_px": area, "mean_prob": round(float(prob[comp].mean()), 4),
                    "max_prob": round(float(prob[comp].max()), 4), "contour": c.reshape(-1, 2).tolist()})
    return sorted(out, key=lambda d: -d["area_px"])


def clean_mask(prob: np.ndarray, area: np.ndarray, *, threshold: float = 0.5, min_area_fraction: float = 0.002
               ) -> np.ndarray:
    """Threshold inside the field of view and drop specks smaller than ``min_area_fraction`` of the field."""
    mask = ((prob >= threshold) & (area > 0)).astype(np.uint8)
    min_px = min_area_fraction * max(1, int(area.sum()))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    for i in range(1, n):
        if stats[i, cv2.CC_STAT_AREA] < min_px:
            mask[labels == i] = 0
    return mask
