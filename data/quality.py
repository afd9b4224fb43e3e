"""Frame quality: is a frame informative enough to grade? Blur and over-exposure inside the field of view, and the
one informative-frame rule (``is_informative``: a lesion in view, the frame neither blurry nor over-exposed).

Used when training heads on case-level labels (uninformative frames are down-weighted), when calibrating and
evaluating them, when aggregating frame estimates into a case estimate, and in the per-frame JSONL.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

ANALYSIS_SIZE = 352  # quality is measured on the frame resized to this square, whatever its resolution
# a frame shows a lesion when the lesion covers at least this share of it (data.min_lesion_fraction, is_informative)
MIN_LESION_FRACTION = 0.002


def frame_quality(
    image: np.ndarray, area: np.ndarray, *, blur_threshold: float = 60.0, overexposed_threshold: float = 0.08
) -> dict[str, Any]:
    """Blur (variance of the Laplacian inside the field; low = blurry) and over-exposure (fraction of the field's
    pixels with all channels >= 250, i.e. specular glare or a lens against the wall).

    Measured at ANALYSIS_SIZE x ANALYSIS_SIZE (a fixed grid, whatever the model's input), so the same frame gets the
    same sharpness from a 384x288 clip or a 1080p recording. ``area``, the field of view, is best found on that grid
    too (data.scope.field_of_view of analysis_view's output): the step from tissue to the scope's black surround is
    a large share of the Laplacian's variance, so a rim found at another resolution moves the figure by up to 10%."""
    a = ANALYSIS_SIZE
    image = analysis_view(image)
    if area.shape[:2] != (a, a):
        area = cv2.resize(area.astype(np.uint8), (a, a), interpolation=cv2.INTER_NEAREST)
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    inside = (area > 0).astype(np.uint8)
    n = cv2.countNonZero(inside)
    sharpness = over = 0.0
    if n:  # OpenCV's masked statistics: about 10x faster than numpy's boolean indexing (once per video frame)
        _, sd = cv2.meanStdDev(cv2.Laplacian(grey, cv2.CV_32F), mask=inside)
        sharpness = float(sd[0, 0]) ** 2
        glare = cv2.inRange(image, (250, 250, 250), (255, 255, 255))  # 255 where every channel >= 250
        over = cv2.countNonZero(cv2.bitwise_and(glare, glare, mask=inside)) / n
    return {
        "sharpness": round(sharpness, 1),
        "blurry": sharpness < blur_threshold,
        "overexposed_fraction": round(over, 4),
        "overexposed": over > overexposed_threshold,
    }


def analysis_view(image: np.ndarray) -> np.ndarray:
    """The frame on the ANALYSIS_SIZE grid that quality is measured on (area-averaged, as every path resizes it)."""
    a = ANALYSIS_SIZE
    return image if image.shape[:2] == (a, a) else cv2.resize(image, (a, a), interpolation=cv2.INTER_AREA)


def poor_quality(image: np.ndarray) -> bool:
    """True when the frame is blurry or over-exposed inside its field of view (data/scope.py)."""
    from data.scope import field_of_view

    view = analysis_view(image)
    q = frame_quality(view, field_of_view(view))
    return bool(q["blurry"] or q["overexposed"])


def is_informative(lesion_fraction: Any, poor: Any, *, min_lesion_fraction: float = MIN_LESION_FRACTION) -> Any:
    """Whether a frame counts for the heads: a lesion in view (its area >= ``min_lesion_fraction`` of the frame) and
    the frame neither blurry nor over-exposed. The one rule for training (the head losses' frame weights), for
    calibration and evaluation (models.predictor.predict_records) and for the report (review/): a checkpoint's card
    records the threshold its training used (data.min_lesion_fraction) and every later step reads it from there.

    lesion_fraction: the lesion's share of the frame's pixels (annotated, else predicted), one number or a batch
    (a numpy array or torch tensor, then the answer is one too). poor: frame_quality()'s dict, poor_quality()'s bool,
    or a batch of bools."""
    if isinstance(poor, dict):
        poor = bool(poor["blurry"] or poor["overexposed"])
    visible = lesion_fraction >= min_lesion_fraction
    if getattr(visible, "ndim", 0) == 0:
        return bool(visible) and not bool(poor)
    return visible & ~poor
