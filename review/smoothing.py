"""Temporal smoothing so that contours do not flicker from frame to frame on real video."""

from __future__ import annotations

import numpy as np


class TemporalSmoother:
    """Exponential moving average of probability maps (and head probabilities) over consecutive frames.

    alpha: weight of the newest frame (1.0 = off). A scene cut (the frame size changes) restarts
    the average. Causal: frame t depends only on frames <= t, so it works on a live stream too.
    """

    def __init__(self, alpha: float = 0.6) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self._prob: np.ndarray | None = None
        self._heads: dict[str, np.ndarray] = {}

    def __call__(
        self, prob: np.ndarray, heads: dict[str, np.ndarray] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        heads = heads or {}
        if self._prob is None or self._prob.shape != prob.shape:
            self._prob, self._heads = prob.astype(np.float32), {k: v.astype(np.float32) for k, v in heads.items()}
        else:
            a = self.alpha
            self._prob = a * prob + (1 - a) * self._prob
            self._heads = {k: a * v + (1 - a) * self._heads.get(k, v) for k, v in heads.items()}
        return self._prob, dict(self._heads)
