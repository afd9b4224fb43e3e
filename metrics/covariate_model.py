"""The covariates-only comparison model a clinical paper's reviewer asks for ("does the image add anything over the
clinical variables?"): a logistic (nominal) or Frank & Hall ordinal logistic regression on each case's clinical
covariates, fitted out of fold so that nothing about a held-out fold leaks into its prediction. Plain numpy and
scikit-learn; tests/test_stats.py checks it against scikit-learn's cross_val_predict.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _training_part_design(train: np.ndarray, test: np.ndarray, flag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Median imputation + missing indicators (for the columns in ``flag``) + standardisation, every statistic
    taken from the training part only so that nothing about the held-out fold leaks into its prediction."""
    med = np.nanmedian(np.where(np.isnan(train).all(axis=0), 0.0, train), axis=0)  # all missing here: 0
    tr, te = (np.hstack([np.where(np.isnan(x), med, x), np.isnan(x[:, flag])]) for x in (train, test))
    mean, sd = tr.mean(axis=0), tr.std(axis=0)
    sd[sd == 0] = 1.0  # a constant column (e.g. an indicator with no missing value in this part) stays at 0
    return (tr - mean) / sd, (te - mean) / sd


def _fit_and_predict_classes(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, k: int) -> np.ndarray:
    """Multinomial L2 logistic regression (C = 1) -> len(xte) x k; a training part with one class predicts the
    training class frequencies (a degenerate learner), a class absent from the training part gets 0."""
    from sklearn.linear_model import LogisticRegression

    out = np.zeros((len(xte), k))
    present = np.unique(ytr)
    if len(present) < 2:
        out[:] = np.bincount(ytr, minlength=k)[:k] / len(ytr)
        return out
    model = LogisticRegression(C=1.0, max_iter=1000).fit(xtr, ytr)
    out[:, model.classes_] = model.predict_proba(xte)
    return out


def covariate_regression_oof(covariates: Any, labels: Any, folds: Any, *, kind: str, n_classes: int) -> np.ndarray:
    """Out-of-fold class probabilities (N x K) of a covariates-only logistic model, the comparison a reviewer asks
    for ("does the image add anything over the clinical variables?"). For each fold f the model is fitted on the
    cases whose fold != f and predicts the cases in f.

    covariates: N x M floats, NaN = missing (median-imputed, plus a missing-indicator column for each covariate with
    any missing value in the whole table, so that every fold has the same columns); labels: N ints in 0..K-1, -1 =
    unknown (not fitted on, still predicted); folds: N fold ids. kind "nominal": multinomial L2 logistic regression
    (C = 1). kind "ordinal": Frank & Hall (2001): K - 1 binary regressions of P(y > k), class probabilities as
    their differences, clipped to >= 0 and renormalised.
    """
    if kind not in ("nominal", "ordinal"):
        raise ValueError(f"kind must be 'nominal' or 'ordinal', got {kind!r}")
    x = np.asarray(covariates, dtype=np.float64).reshape(len(labels), -1)
    y, folds = np.asarray(labels, dtype=np.int64), np.asarray(folds)
    flag = np.isnan(x).any(axis=0)
    out = np.zeros((len(y), n_classes))
    for f in np.unique(folds):
        test, train = folds == f, (folds != f) & (y >= 0)
        if not train.any():
            raise ValueError(f"fold {f!r}: no labelled case outside it to fit on")
        xtr, xte = _training_part_design(x[train], x[test], flag)
        ytr = y[train]
        if kind == "nominal":
            out[test] = _fit_and_predict_classes(xtr, ytr, xte, n_classes)
            continue
        above = np.stack(
            [_fit_and_predict_classes(xtr, (ytr > k).astype(np.int64), xte, 2)[:, 1] for k in range(n_classes - 1)]
        )
        cum = np.vstack([np.ones(test.sum()), above, np.zeros(test.sum())])  # P(y > k) for k = -1 .. K-1
        p = np.clip(cum[:-1] - cum[1:], 0.0, None).T  # the K-1 fits are separate, so P(y > k) may not decrease
        out[test] = p / p.sum(axis=1, keepdims=True)
    return out
