"""The endoscope's content area: the bright circular/octagonal field of view inside the black frame.

Scopes burn text, clocks and picture-in-picture boxes into the black border (see Kvasir-SEG); predictions there
are meaningless, so they are masked out, and ``deidentify`` fills everything outside the field (data/deid.py finds
the text inside it).
"""

from __future__ import annotations

import cv2
import numpy as np


def border_level(grey: np.ndarray, *, ring: float = 0.02) -> float:
    """The surround's grey level: a low percentile of the frame's outer ring (the field of view rarely fills the
    whole ring, and text there is a small share of it). 0-5 for a black surround, 15-30 for the grey ones some
    processors draw."""
    h, w = grey.shape
    r = max(2, int(round(min(h, w) * ring)))
    band = np.concatenate([grey[:r].ravel(), grey[-r:].ravel(), grey[:, :r].ravel(), grey[:, -r:].ravel()])
    return float(np.percentile(band, 25))


def content_area(
    image: np.ndarray, *, threshold: int | None = None, min_fraction: float = 0.2, margin: int = 10
) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W uint8 0/1 mask of the field of view.

    The largest connected region brighter than the surround (``threshold``, by default the surround's own level
    plus ``margin``, at least 20: black and grey surrounds alike), after a blur and an opening that detaches thin
    bridges to burned-in overlays. Its holes are filled (dark lumen and shadows stay in); its convex hull is taken
    when the region is nearly convex, as a scope's field is (vignetting darkens the rim, the hull restores it), and
    otherwise the region itself, closed, so that a hull never swallows text or a picture-in-picture box attached
    to the field. Falls back to the whole frame when nothing plausible (< min_fraction of the frame) is found.
    """
    h, w = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (5, 5), 0)
    thr = threshold if threshold is not None else int(min(60.0, max(20.0, border_level(grey) + margin)))
    bright = (grey > thr).astype(np.uint8)
    k = max(3, (min(h, w) // 40) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return np.ones((h, w), np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_fraction * h * w:
        return np.ones((h, w), np.uint8)
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, contours, 1)  # holes filled
    hull = cv2.convexHull(np.concatenate(contours))
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [hull], 1)
    if region.sum() >= 0.93 * out.sum():
        return out
    return cv2.morphologyEx(region, cv2.MORPH_CLOSE, kernel)


def field_of_view(image: np.ndarray, enabled: bool = True) -> np.ndarray:
    """content_area, or the whole frame when scope masking is off (review.scope_mask=false)."""
    return content_area(image) if enabled else np.ones(image.shape[:2], np.uint8)


def deidentify(image: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Fill everything outside the field of view with solid black (burned-in names, dates, IDs in the surround).
    Not a blur: blurred large text can stay legible. Text over the tissue needs data.deid, which infer.py's
    review.deidentify uses."""
    return np.where(area[:, :, None] > 0, image, np.zeros_like(image))
