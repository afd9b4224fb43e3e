"""What is measured on one frame once the model has run: the cleaned mask, its lesions, the frame's quality, the
estimates of the heads (on informative frames only) and the predictions.jsonl line that holds them."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np

from core.errors import UserError
from data.quality import frame_quality, is_informative
from data.video import Frame
from models.card import ModelCard
from models.predictor import Predictor
from review.describe import clean_mask, lesions
from review.options import ReviewOptions
from review.summary import head_caption


def covariate_row(predictor: Predictor, opts: ReviewOptions) -> np.ndarray | None:
    """1 x n covariates of the case (opts.covariates, NaN where not given) for models that read them; covariates the
    model does not read are refused."""
    unknown = sorted(set(opts.covariates or {}) - set(predictor.covariates))
    if unknown:
        raise UserError(f"review.covariates {unknown} are not read by this model (it reads {predictor.covariates})")
    if not predictor.covariates:
        return None
    return np.array([[float((opts.covariates or {}).get(c, np.nan)) for c in predictor.covariates]], np.float32)


def head_estimates(
    card: ModelCard, probs: dict[str, np.ndarray], *, passed: Collection[str], research_heads: bool
) -> dict[str, dict[str, Any]]:
    """One informative frame's estimates: ``heads`` for the heads the display gate passed (``passed``), and with
    ``research_heads`` a ``research_only`` entry for the others, which are otherwise dropped here, before any output
    can see them."""
    out: dict[str, dict[str, Any]] = {"heads": {}, **({"research_only": {}} if research_heads else {})}
    for h, p in probs.items():
        if h not in passed and not research_heads:
            continue
        classes = card.heads[h].classes
        k = int(np.argmax(p))
        est = {
            "estimate": classes[k],
            "confidence": round(float(p[k]), 4),
            "probs": {c: round(float(v), 4) for c, v in zip(classes, p)},
        }
        if h in passed:
            out["heads"][h] = est | {"clinically_validated": True}  # the old field, kept; refused heads are absent
        else:
            out["research_only"][h] = est
    return out


def scale_lesions(found: list[dict[str, Any]], sx: float, sy: float) -> list[dict[str, Any]]:
    """Lesions measured on the model's S x S grid -> the frame's pixel coordinates (boxes, areas, contours)."""
    for d in found:
        x, y, w, h = d["bbox"]
        d["bbox"] = [round(x * sx), round(y * sy), max(1, round(w * sx)), max(1, round(h * sy))]
        d["area_px"] = int(round(d["area_px"] * sx * sy))
        d["contour"] = [[round(px * sx), round(py * sy)] for px, py in d["contour"]]
    return found


def frame_record(
    name: str,
    f: Frame,
    prob: np.ndarray,
    mask: np.ndarray,
    fov: np.ndarray,
    found: list[dict[str, Any]],
    est: dict[str, dict[str, Any]],
    quality: dict[str, Any],
    informative: bool,
) -> dict[str, Any]:
    """One predictions.jsonl line (prob, mask, field of view ``fov`` at any one resolution; ``found`` in frame pixels;
    ``est`` from head_estimates: its ``heads`` and, with review.research_heads, ``research_only``; ``informative``:
    whether the frame counts for the heads)."""
    return {
        "name": name,
        "index": f.index,
        **({"time": round(f.time, 4)} if f.time is not None else {}),  # still images have no time
        "lesion_probability": round(float(prob.max()) if prob.size else 0.0, 4),
        "area_fraction": round(float(mask.sum()) / max(1, int(fov.sum())), 5),
        "lesions": found,
        **est,
        "quality": quality,
        "informative": informative,
    }


def measure_frame(
    f: Frame,
    prob: np.ndarray,
    head_probs: dict[str, np.ndarray],
    fov: np.ndarray,
    *,
    name: str,
    card: ModelCard,
    passed: Collection[str],
    opts: ReviewOptions,
    analysis_image: np.ndarray,
    quality_fov: np.ndarray,
) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Everything measured on one frame, at the resolution of ``prob`` (the frame's, or the model's grid; lesions
    are reported in frame pixels either way): the cleaned mask, lesions, head estimates, quality (of
    ``analysis_image`` inside ``quality_fov``: data/quality.py's grid, the same whatever the frame's resolution) ->
    (predictions.jsonl record, mask, overlay lines of the heads the display gate passed, ``passed``). Heads are
    estimated on informative frames only (data.quality.is_informative, at the lesion threshold the checkpoint's
    training used, from its card: the rule of training, calibration and evaluation): on a frame without a lesion in
    view (or too blurry or bright to grade one) a head's output is about nothing, so no record, line or plot may
    carry it. The lesion's share is the cleaned mask's share of the frame's pixels."""
    mask = clean_mask(prob, fov, threshold=opts.threshold, min_area_fraction=opts.min_area_fraction)
    h, w = f.image.shape[:2]
    found = lesions(prob, mask)
    if prob.shape != (h, w):
        found = scale_lesions(found, w / prob.shape[1], h / prob.shape[0])
    quality = frame_quality(analysis_image, quality_fov)
    counted = is_informative(float(mask.mean()), quality, min_lesion_fraction=card.min_lesion_fraction)
    est = head_estimates(card, head_probs if counted else {}, passed=passed, research_heads=opts.research_heads)
    rec = frame_record(name, f, prob, mask, fov, found, est, quality, counted)
    lines = [
        head_caption(head=hd, estimate=e["estimate"], confidence=e["confidence"]) for hd, e in est["heads"].items()
    ]
    return rec, mask, lines
