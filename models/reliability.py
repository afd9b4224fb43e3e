"""Does the model know when it is lost? A per-frame reliability score from the model's own probability maps.

A segmenter can outline the wrong thing with 0.99 probability, so the probability itself is a poor warning. What
does warn is instability: a frame the model understands gives the same outline when the frame is mirrored or seen at
another scale; a frame from an unfamiliar processor, or an ambiguous view, often does not. The score here is the
agreement (Dice of the binarised maps) between the model's views of one frame, from 0 (the views disagree
completely) to 1 (identical outlines, or all views see no lesion). ``soft_confidence`` is a free single-view
alternative (mean certainty max(p, 1 - p) where the model is unsure), kept for comparison in
benchmarks/reliability.py, which measures how well each score separates frames the model got wrong (Dice < 0.5).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LOW_RELIABILITY = 0.7  # below this a frame is marked "low reliability: check by eye" (README "Reliability")


def mask_agreement(a: np.ndarray, b: np.ndarray, threshold: float = 0.5) -> float:
    """Dice between two probability maps binarised at ``threshold``; 1.0 when neither has a lesion pixel."""
    ma, mb = a >= threshold, b >= threshold
    total = int(ma.sum()) + int(mb.sum())
    return 1.0 if total == 0 else float(2 * np.logical_and(ma, mb).sum() / total)


def view_agreement(views: Sequence[np.ndarray], threshold: float = 0.5) -> float:
    """Mean pairwise mask agreement between probability maps of one frame seen several ways (same grid, already
    mapped back: a mirrored view un-mirrored, a rescaled one resized back)."""
    if len(views) < 2:
        raise ValueError("view_agreement needs at least two views of the frame")
    pairs = [mask_agreement(a, b, threshold) for i, a in enumerate(views) for b in views[i + 1 :]]
    return float(np.mean(pairs))


def soft_confidence(prob: np.ndarray, band: float = 0.05) -> float:
    """Mean certainty max(p, 1 - p) over the pixels where the model is not sure of the background (p >= band):
    1.0 for a crisp outline (or a frame it is sure holds no lesion), towards 0.5 for a fuzzy one."""
    region = prob >= band
    if not region.any():
        return 1.0
    p = prob[region]
    return float(np.maximum(p, 1 - p).mean())
