"""After training: temperature scaling of each head on the validation split, recorded in the checkpoint's card.

Temperature scaling (Guo et al., 2017) divides a head's outputs by one number T > 0 chosen to minimise the
negative log-likelihood of the validation labels. It changes confidence, never the ranking (AUROC) or, for nominal
heads, the predicted class. For ordinal (CORN) heads the K-1 conditional logits are scaled alike. The card keeps T
(applied by models/predictor.py), the validation metrics before and after, and, for binary heads, the direction of
the lesion-area-only baseline, fitted here on validation so that test data never chooses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.heads import head_probabilities


def nll(logits: np.ndarray, labels: np.ndarray, kind: str, temperature: float) -> float:
    p = head_probabilities(torch.as_tensor(logits, dtype=torch.float64), kind, temperature).numpy()
    return float(-np.log(np.clip(p[np.arange(len(labels)), labels], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray, kind: str, *, lo: float = 0.05, hi: float = 20.0) -> float:
    """T minimising the NLL of ``labels`` (N, 0..K-1) under ``logits`` (N x m): a log-spaced grid, then a finer
    grid around the best point (the NLL is smooth and one-dimensional; no optimiser state to go wrong)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 1.0
    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 61))
    best = min(grid, key=lambda t: nll(logits, labels, kind, t))
    fine = best * np.exp(np.linspace(-0.1, 0.1, 41))
    return float(min(fine, key=lambda t: nll(logits, labels, kind, t)))


def calibrate_checkpoint(
    stem: Any,
    records: Sequence[Any],
    *,
    device: str = "auto",
    batch_size: int = 8,
    n_boot: int = 1000,
    min_frames: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit each head's temperature on ``records`` (the validation split) with the checkpoint at ``stem``, then
    rewrite its card with, per head: temperature, baseline direction (binary heads) and validation metrics
    (before and after scaling, with case-resampled 95% intervals). Returns the heads' validation results."""
    from metrics.heads import area_direction, score_heads
    from models.checkpoint import read_card, write_card
    from models.predictor import Predictor, predict_records

    pred = Predictor.from_checkpoint(stem, device=device)
    pred.temperatures = {h: 1.0 for h in pred.heads}
    rows = predict_records(pred, list(records), batch_size=batch_size, progress="calibrate" if progress else None)
    card = read_card(stem)
    for h, info in card.heads.items():
        known = [r for r in rows if r["labels"].get(h, -1) >= 0]
        info.temperature = 1.0  # never keep a temperature fitted on other data
        if len(set(r["labels"][h] for r in known)) < 2:
            continue  # one class (or none) cannot calibrate: the NLL would fall forever as T shrinks
        t = fit_temperature(
            np.array([r["logits"][h] for r in known]), np.array([r["labels"][h] for r in known]), info.kind
        )
        info.temperature = round(t, 4)
        if len(info.classes) == 2:
            info.baseline = {"feature": "predicted lesion area fraction", "direction": area_direction(rows, h)}
        for r in rows:
            r["probs"][h] = head_probabilities(torch.tensor([r["logits"][h]]), info.kind, t)[0].tolist()
    results = score_heads(rows, card.heads, n_boot=n_boot, min_frames=min_frames)
    for h, res in results.items():
        card.heads[h].validation = _compact(res)
    write_card(stem, card)
    return results


def _compact(res: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky parts (reliability bins) from a head's results for the card."""
    out = {k: v for k, v in res.items() if k not in ("classes", "kind", "temperature")}
    out["frame"] = {k: v for k, v in res["frame"].items() if k != "reliability"}
    return out


def finish_heads(
    stem: Any,
    val_records: Sequence[Any],
    heldout: Sequence[Any],
    *,
    oof: Any,
    fold: int,
    folds: int | None,
    variant: str,
    device: str = "auto",
    n_boot: int = 1000,
    min_frames: int = 3,
    progress: bool = False,
) -> None:
    """After training: calibrate the best checkpoint's heads on the validation records, then (in a
    cross-validation fold) predict the held-out records into ``oof`` for metrics.cv."""
    if val_records:
        calibrate_checkpoint(stem, val_records, device=device, n_boot=n_boot, min_frames=min_frames, progress=progress)
    if heldout:
        from metrics.cv import write_oof

        write_oof(oof, stem, heldout, fold=fold, folds=folds, variant=variant, device=device)
