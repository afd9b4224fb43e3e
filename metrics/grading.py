"""Metrics for attribute heads (fibrosis grade F0/F1/F2, lift quality): ordinal classes with calibrated
confidence. One stateful object; torchmetrics does the arithmetic.

accuracy, macro-F1, quadratic weighted kappa (ordinal agreement), one-vs-rest macro AUROC, expected calibration
error (15 equal-width bins of top-1 confidence, L1), the confusion matrix (rows = truth), and the reliability
diagram's bins. Samples with label -1 (unknown) are skipped and counted.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torchmetrics.functional import classification as C


class GradingMetrics:
    def __init__(self, classes: Sequence[str], *, n_bins: int = 15) -> None:
        self.classes = list(classes)
        self.n_bins = n_bins
        self.reset()

    def reset(self) -> None:
        self._probs: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        self.n_unknown = 0

    def update(self, probs: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor) -> None:
        """probs: N x K class probabilities (rows sum to 1); labels: N ints in 0..K-1, or -1 for unknown."""
        p = torch.as_tensor(np.asarray(probs), dtype=torch.float32).reshape(-1, len(self.classes))
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long).reshape(-1)
        known = y >= 0
        self.n_unknown += int((~known).sum())
        self._probs.append(p[known])
        self._labels.append(y[known])

    def compute(self) -> dict[str, Any]:
        p = torch.cat(self._probs) if self._probs else torch.zeros(0, len(self.classes))
        y = torch.cat(self._labels) if self._labels else torch.zeros(0, dtype=torch.long)
        k = len(self.classes)
        out: dict[str, Any] = {"n": int(len(y)), "n_unknown": self.n_unknown, "classes": self.classes}
        if len(y) == 0:
            return out
        out["accuracy"] = float(C.multiclass_accuracy(p, y, num_classes=k, average="micro"))
        out["macro_f1"] = float(C.multiclass_f1_score(p, y, num_classes=k, average="macro"))
        out["qwk"] = float(C.multiclass_cohen_kappa(p, y, num_classes=k, weights="quadratic"))
        present = torch.unique(y)
        # AUROC is undefined for a class with no positives; report it only when every class occurs
        out["auroc_ovr"] = float(C.multiclass_auroc(p, y, num_classes=k, average="macro")) \
            if len(present) == k else None
        out["ece"] = float(C.multiclass_calibration_error(p, y, num_classes=k, n_bins=self.n_bins, norm="l1"))
        out["confusion"] = C.multiclass_confusion_matrix(p, y, num_classes=k).tolist()
        out["reliability"] = reliability_bins(p, y, self.n_bins)
        return out


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> list[dict[str, float]]:
    """Per equal-width confidence bin: count, mean top-1 confidence, accuracy (the reliability diagram)."""
    conf, pred = probs.max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (conf > lo) & (conf <= hi)
        n = int(sel.sum())
        rows.append({"lo": float(lo), "hi": float(hi), "n": n,
                     "confidence": float(conf[sel].mean()) if n else None,
                     "accuracy": float((pred[sel] == labels[sel]).float().mean()) if n else None})
    return rows
