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


T_BOUNDS = (0.25, 4.0)  # the fit never leaves this range
T_SANE = (1 / 3, 3.0)  # a temperature outside this is flagged: the head is badly over- or under-confident
PRIOR_SD = 0.5  # Gaussian prior on log T (MAP fit): with few cases the fit stays near T = 1


def case_nll(logits: np.ndarray, labels: np.ndarray, cases: np.ndarray, kind: str, temperature: float) -> float:
    """Mean NLL of each case's label under the mean of its frames' probabilities (the displayed case estimate,
    models.heads.aggregate_case). logits: N x m informative frames; labels, cases: N (a case's frames share a
    label: the first is taken)."""
    p = head_probabilities(torch.as_tensor(logits, dtype=torch.float64), kind, temperature).numpy()
    uniq, inv = np.unique(cases, return_inverse=True)
    sums = np.zeros((len(uniq), p.shape[1]))
    np.add.at(sums, inv, p)
    mean = sums / np.bincount(inv, minlength=len(uniq))[:, None]
    first = np.zeros(len(uniq), np.int64)
    first[inv[::-1]] = np.arange(len(inv))[::-1]
    return float(-np.log(np.clip(mean[np.arange(len(uniq)), labels[first]], 1e-12, None)).mean())


def fit_temperature(
    logits: np.ndarray,
    labels: np.ndarray,
    kind: str,
    *,
    cases: np.ndarray | None = None,
    lo: float = T_BOUNDS[0],
    hi: float = T_BOUNDS[1],
    prior_sd: float | None = PRIOR_SD,
) -> float:
    """T minimising the NLL of ``labels`` (N, 0..K-1) under ``logits`` (N x m), plus a Gaussian prior on log T
    (sd ``prior_sd``, None = none) scaled per case, within [lo, hi]. With ``cases`` (N case ids) the NLL is the
    case-level one (``case_nll``): T is fitted at the level that is displayed. A log-spaced grid, then a finer
    grid around the best point (the objective is smooth and one-dimensional; no optimiser state to go wrong)."""
    logits, labels = np.asarray(logits, np.float64), np.asarray(labels, np.int64)
    if len(labels) == 0:
        return 1.0
    n = len(np.unique(cases)) if cases is not None else len(labels)

    def objective(t: float) -> float:
        fit = (
            case_nll(logits, labels, np.asarray(cases), kind, t) if cases is not None else nll(logits, labels, kind, t)
        )
        return fit + (0.0 if prior_sd is None else float(np.log(t)) ** 2 / (2 * prior_sd**2 * n))

    grid = np.exp(np.linspace(np.log(lo), np.log(hi), 61))
    best = min(grid, key=objective)
    fine = np.clip(best * np.exp(np.linspace(-0.1, 0.1, 41)), lo, hi)
    return float(min(fine, key=objective))


def temperature_flag(t: float) -> str | None:
    lo, hi = T_SANE
    if t < lo or t > hi:
        return f"temperature {t:.2f} outside [{lo:.2f}, {hi:.2f}]: the head was badly mis-calibrated on validation"
    return None


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
        # informative frames only (a lesion in view, not blurry / over-exposed): the frames a case estimate uses
        known = [r for r in rows if r["labels"].get(h, -1) >= 0 and r["informative"]]
        info.temperature = 1.0  # never keep a temperature fitted on other data
        if len(set(r["labels"][h] for r in known)) < 2:
            continue  # one class (or none) cannot calibrate: the NLL would fall forever as T shrinks
        cases = np.array([r["group"] for r in known])
        case_level = len(set(cases)) < len(cases)  # some case has several frames: fit where it is displayed
        t = fit_temperature(
            np.array([r["logits"][h] for r in known]),
            np.array([r["labels"][h] for r in known]),
            info.kind,
            cases=cases if case_level else None,
        )
        info.temperature = round(t, 4)
        info.training = dict(
            info.training or {},
            temperature_fit={
                "level": "case" if case_level else "frame",
                "frames": len(known),
                "cases": len(set(cases)),
                "informative_only": True,
                "bounds": list(T_BOUNDS),
                "prior_sd_log_t": PRIOR_SD,
                "flag": temperature_flag(t),
            },
        )
        if len(info.classes) == 2 or info.kind == "ordinal":  # the area baseline ranks binary and graded heads
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
    splits: dict[str, Any] | None = None,
    cv: dict[str, Any] | None = None,
    group_unit: str = "patient",
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

        write_oof(
            oof,
            stem,
            heldout,
            fold=fold,
            folds=folds,
            variant=variant,
            device=device,
            splits=splits,
            cv=cv,
            group_unit=group_unit,
        )
