"""Metrics for attribute heads (fibrosis grade F0/F1/F2, lift quality, binary proxies): ordinal classes with
calibrated confidence, and bootstrap intervals resampled by case.

accuracy, balanced accuracy (mean recall over classes), macro-F1, quadratic weighted kappa (ordinal agreement),
AUROC (binary: of the positive class's probability; more classes: one-vs-rest macro), expected calibration error
(15 equal-width bins of top-1 confidence, L1), the confusion matrix (rows = truth) and the reliability diagram's
bins. Samples with label -1 (unknown) are skipped and counted. The arithmetic is plain numpy so that a bootstrap of
1000 resamples takes about a second; tests/test_metrics.py checks it against torchmetrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from scipy.stats import rankdata

POINT_METRICS = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "auroc", "ece")


def confusion(labels: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    return np.bincount(labels * k + pred, minlength=k * k).reshape(k, k)


def binary_auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    """Mann-Whitney AUROC (ties count half); None when only one class is present."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def c_index(score: np.ndarray, labels: np.ndarray) -> float | None:
    """Ordinal concordance (Harrell's C for a graded outcome): over every pair of samples with different grades,
    the fraction whose scores are ordered like their grades (ties count half). Equals the AUROC for two grades;
    threshold-free, so a baseline score (e.g. lesion area) needs no cut-points fitted. None with one grade."""
    score, labels = np.asarray(score, np.float64), np.asarray(labels)
    grades = np.unique(labels)
    if len(grades) < 2:
        return None
    num = den = 0.0
    for i, lo in enumerate(grades):
        for hi in grades[i + 1 :]:
            sel = (labels == lo) | (labels == hi)
            pairs = float((labels == lo).sum() * (labels == hi).sum())
            num += binary_auroc(score[sel], labels[sel] == hi) * pairs
            den += pairs
    return num / den


def auroc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """Binary: AUROC of P(class 1). K > 2: macro one-vs-rest over classes; None unless every class occurs."""
    k = probs.shape[1]
    if k == 2:
        return binary_auroc(probs[:, 1], labels == 1)
    per = [binary_auroc(probs[:, c], labels == c) for c in range(k)]
    return None if any(v is None for v in per) else float(np.mean(per))


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)  # (lo, hi] bins
    total = 0.0
    for b in np.unique(bins):
        sel = bins == b
        total += sel.sum() * abs(float((pred[sel] == labels[sel]).mean()) - float(conf[sel].mean()))
    return total / max(1, len(labels))


def scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Every point metric for N x K probabilities and N labels in 0..K-1 (no unknowns)."""
    k = probs.shape[1]
    pred = probs.argmax(axis=1)
    cm = confusion(labels, pred, k).astype(np.float64)
    support, predicted, tp = cm.sum(1), cm.sum(0), np.diag(cm)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(k), where=(precision + recall) > 0)
    idx = np.arange(k)
    w = (idx[:, None] - idx[None, :]) ** 2 / max(1, (k - 1) ** 2)
    expected = np.outer(support, predicted) / max(1.0, cm.sum())
    denom = (w * expected).sum()
    return {
        "accuracy": float(tp.sum() / max(1.0, cm.sum())),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else None,
        "macro_f1": float(f1[present | (predicted > 0)].mean()),
        "qwk": float(1 - (w * cm).sum() / denom) if denom > 0 else None,
        "auroc": auroc(probs, labels),
        "ece": ece(probs, labels, n_bins),
        "confusion": cm.astype(int).tolist(),
    }


def case_resamples(groups: Sequence[str], n_boot: int, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` index sets, each drawing whole cases (groups) with replacement: frames of a patient move together."""
    uniq, inverse = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inverse == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def interval(values: Sequence[float], n_boot: int, level: float = 0.95) -> list[float] | None:
    """Percentile interval, or None when fewer than half the resamples defined the metric."""
    a = (1 - level) / 2
    return (
        [float(np.quantile(values, a)), float(np.quantile(values, 1 - a))]
        if values and len(values) >= n_boot // 2
        else None
    )


def bootstrap(
    probs: np.ndarray,
    labels: np.ndarray,
    groups: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, list[float] | None]:
    """Percentile intervals of every point metric over case resamples. A resample where a metric is undefined
    (e.g. AUROC with one class) is left out of that metric's interval."""
    samples: dict[str, list[float]] = {m: [] for m in POINT_METRICS}
    for pick in case_resamples(groups, n_boot, seed):
        s = scores(probs[pick], labels[pick])
        for m in POINT_METRICS:
            if s[m] is not None:
                samples[m].append(s[m])
    return {m: interval(v, n_boot, level) for m, v in samples.items()}


def paired_bootstrap(
    metric: Callable[[np.ndarray], float | None], groups: Sequence[str], *, n_boot: int = 1000, seed: int = 0
) -> list[float] | None:
    """Interval of ``metric(indices)`` over case-resampled index sets (e.g. a difference of two AUROCs)."""
    vals = [v for v in (metric(pick) for pick in case_resamples(groups, n_boot, seed)) if v is not None]
    return interval(vals, n_boot)


class GradingMetrics:
    """update / compute / reset over batches of (probabilities, labels); see the module doc."""

    def __init__(self, classes: Sequence[str], *, n_bins: int = 15) -> None:
        self.classes = list(classes)
        self.n_bins = n_bins
        self.reset()

    def reset(self) -> None:
        self._probs: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []
        self.n_unknown = 0

    def update(self, probs: np.ndarray, labels: np.ndarray) -> None:
        """probs: N x K class probabilities (rows sum to 1); labels: N ints in 0..K-1, or -1 for unknown."""
        p = np.asarray(probs, dtype=np.float64).reshape(-1, len(self.classes))
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
        known = y >= 0
        self.n_unknown += int((~known).sum())
        self._probs.append(p[known])
        self._labels.append(y[known])

    def compute(self) -> dict[str, Any]:
        p = np.concatenate(self._probs) if self._probs else np.zeros((0, len(self.classes)))
        y = np.concatenate(self._labels) if self._labels else np.zeros(0, dtype=np.int64)
        out: dict[str, Any] = {"n": int(len(y)), "n_unknown": self.n_unknown, "classes": self.classes}
        if len(y) == 0:
            return out
        out.update(scores(p, y, self.n_bins))
        out["reliability"] = reliability_bins(p, y, self.n_bins)
        return out


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> list[dict[str, Any]]:
    """Per equal-width confidence bin: count, mean top-1 confidence, accuracy (the reliability diagram)."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0, 1, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        n = int(sel.sum())
        rows.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": n,
                "confidence": float(conf[sel].mean()) if n else None,
                "accuracy": float((pred[sel] == labels[sel]).mean()) if n else None,
            }
        )
    return rows
