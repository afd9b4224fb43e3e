"""The endoscope's content area: the bright circular/octagonal field of view inside the black frame.

Scopes burn text, clocks and picture-in-picture boxes into the black border (see Kvasir-SEG); predictions there
are meaningless, so they are masked out, and ``deidentify`` can blur everything outside the field.
"""

from __future__ import annotations

import cv2
import numpy as np


def content_area(image: np.ndarray, *, threshold: int = 20, min_fraction: float = 0.2) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W uint8 0/1 mask of the field of view.

    The largest connected region brighter than ``threshold`` (after a blur, and an opening that detaches thin
    bridges to burned-in overlays), then its convex hull (the field is convex; dark lumen and shadows inside it
    stay in). Falls back to the whole frame when nothing plausible (< min_fraction of the frame) is found.
    """
    h, w = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (5, 5), 0)
    bright = (grey > threshold).astype(np.uint8)
    k = max(3, (min(h, w) // 40) | 1)
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return np.ones((h, w), np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_fraction * h * w:
        return np.ones((h, w), np.uint8)
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.concatenate(contours))
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [hull], 1)
    return out


def field_of_view(image: np.ndarray, enabled: bool = True) -> np.ndarray:
    """content_area, or the whole frame when scope masking is off (review.scope_mask=false)."""
    return content_area(image) if enabled else np.ones(image.shape[:2], np.uint8)


def deidentify(image: np.ndarray, area: np.ndarray, *, ksize: int = 51) -> np.ndarray:
    """Blur everything outside the field of view (burned-in names, dates, IDs)."""
    k = ksize | 1
    blurred = cv2.GaussianBlur(image, (k, k), 0)
    blurred = cv2.GaussianBlur(blurred, (k, k), 0)
    return np.where(area[:, :, None] > 0, image, blurred)
