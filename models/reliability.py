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
from typing import Any

import numpy as np

LOW_RELIABILITY = 0.7  # below this a frame is marked "low reliability: check by eye" (README "Reliability")
LOW_RELIABILITY_LINE = "low reliability: check by eye"  # the overlay's line on such a frame
RELIABILITY_VIEWS = ("flip",)  # the views Predictor(reliability=True) compares with the frame as is
SCALE_VIEW = 1.25  # the "scale" view: the frame at 1.25 x the model's input size


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


def frame_reliability(base: Any, views: Sequence[Any], threshold: float = 0.5) -> list[float]:
    """Per frame of a batch: the view agreement of ``base`` (B x 1 x S x S probabilities, a torch tensor or array)
    with each of ``views`` (the same shape, already on base's grid)."""
    to_np = lambda x: x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)  # noqa: E731
    b = to_np(base)[:, 0]
    vs = [to_np(v)[:, 0] for v in views]
    return [view_agreement([b[i], *(v[i] for v in vs)], threshold) for i in range(len(b))]


def reliability_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """A video's reliability from its predictions.jsonl records (None when none was scored): frames scored, mean and
    minimum agreement, and the frames below LOW_RELIABILITY (count, share, and their indices)."""
    scored = [r for r in records if r.get("reliability") is not None]
    if not scored:
        return None
    values = np.array([r["reliability"] for r in scored], dtype=float)
    low = [r["index"] for r in scored if r["reliability"] < LOW_RELIABILITY]
    return {
        "threshold": LOW_RELIABILITY,
        "frames_scored": len(scored),
        "mean": round(float(values.mean()), 4),
        "min": round(float(values.min()), 4),
        "low_frames": len(low),
        "low_fraction": round(len(low) / len(scored), 4),
        "low_frame_indices": low[:1000],
    }
