"""Temperature scaling of a head's outputs: the fit and its sanity flag (training/finish.py applies it after training).

Temperature scaling (Guo et al., 2017) divides a head's outputs by one number T > 0 chosen to minimise the
negative log-likelihood of the validation labels. It changes confidence, never the ranking (AUROC) or, for nominal
heads, the predicted class. For ordinal (CORN) heads the K-1 conditional logits are scaled alike. The card keeps T
(applied by models/predictor.py), the validation metrics before and after, and, for binary heads, the direction of
the lesion-area-only baseline, fitted on validation so that test data never chooses it.
"""

from __future__ import annotations

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
