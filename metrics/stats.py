"""The statistics a clinical paper's reviewer asks for: paired AUROC comparison (DeLong), decision curves,
calibration slope and intercept, a patient-level paired bootstrap, degenerate-predictor checks, ordinal grade
errors, and the table / figure files a manuscript takes (the covariates-only comparison model is
metrics.covariate_model's).

Plain numpy / scipy / scikit-learn (no torch), so every function runs from a notebook on saved predictions. Binary
functions take ``positive`` as N booleans (or 0/1) and risks as N floats in [0, 1]; an N x 2 probability array is
accepted too (column 1 is the positive class). Undefined results (one class, NaN input) are None, never an error,
so one bad subgroup does not stop an evaluation. tests/test_stats.py checks each against an independent computation.
"""

from __future__ import annotations

import csv
import io
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit, logit
from scipy.stats import norm, rankdata

from core.files import atomic_write
from metrics.grading import case_resamples, interval

Z95 = float(norm.ppf(0.975))
DCA_KEYS = ("threshold", "model", "treat_all", "treat_none")


def _risk(probs: Any) -> np.ndarray:
    """N risks from N floats or N x 2 class probabilities (column 1)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] != 2:
        raise ValueError(f"binary risks must be N or N x 2, got {p.shape}")
    return p[:, 1] if p.ndim == 2 else p.reshape(-1)


def _delong_components(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Sun & Xu (2014) midrank algorithm. scores: R x N (R classifiers on the same N cases). Returns the R AUROCs and
    the structural components V10 (R x m, one per positive case) and V01 (R x n, one per negative case); None when
    a class is missing or an input is not finite."""
    if scores.size == 0 or not np.isfinite(scores).all() or not np.isfinite(positive).all():
        return None
    pos = positive.astype(bool)
    m, n = int(pos.sum()), int((~pos).sum())
    if m == 0 or n == 0:
        return None
    x, y = scores[:, pos], scores[:, ~pos]
    tx, ty = rankdata(x, axis=1), rankdata(y, axis=1)  # midranks within each class
    tz = rankdata(np.concatenate([x, y], axis=1), axis=1)  # midranks over all cases
    auc = (tz[:, :m].sum(axis=1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # share of negatives each positive outranks (ties count half)
    v01 = 1.0 - (tz[:, m:] - ty) / m  # share of positives that outrank each negative
    return auc, v10, v01


def _delong_cov(v10: np.ndarray, v01: np.ndarray) -> np.ndarray:
    """R x R covariance of the AUROCs: S10 / m + S01 / n (sample covariances, ddof 1)."""
    s10 = np.atleast_2d(np.cov(v10)) if v10.shape[1] > 1 else np.zeros((len(v10), len(v10)))
    s01 = np.atleast_2d(np.cov(v01)) if v01.shape[1] > 1 else np.zeros((len(v01), len(v01)))
    return s10 / v10.shape[1] + s01 / v01.shape[1]


def delong_ci(scores: Any, positive: Any) -> dict[str, Any]:
    """AUROC of N scores against N binary labels with its DeLong standard error and 95% Wald interval (clipped to
    [0, 1]). Returns {"auc", "se", "ci95"}; all None when only one class is present or an input is NaN."""
    comp = _delong_components(_risk(scores)[None, :], np.asarray(positive, dtype=np.float64).reshape(-1))
    if comp is None:
        return {"auc": None, "se": None, "ci95": None}
    auc, v10, v01 = comp
    se = float(np.sqrt(max(0.0, _delong_cov(v10, v01)[0, 0])))
    a = float(auc[0])
    return {"auc": a, "se": se, "ci95": [max(0.0, a - Z95 * se), min(1.0, a + Z95 * se)]}


def delong_test(scores_a: Any, scores_b: Any, positive: Any) -> dict[str, Any]:
    """DeLong et al. (1988) test of two correlated AUROCs (two predictors scored on the same N cases).

    Returns {"auc_a", "auc_b", "diff" (a - b), "se" (of diff), "ci95" (of diff, Wald), "z", "p" (two-sided)}; all
    None when only one class is present or an input is NaN. When se is 0 (e.g. identical predictors) a zero
    difference gives z 0 and p 1, a non-zero one z None (infinite) and p 0.
    """
    a, b = _risk(scores_a), _risk(scores_b)
    comp = _delong_components(np.stack([a, b]), np.asarray(positive, dtype=np.float64).reshape(-1))
    keys = ("auc_a", "auc_b", "diff", "se", "ci95", "z", "p")
    if comp is None:
        return dict.fromkeys(keys)
    auc, v10, v01 = comp
    s = _delong_cov(v10, v01)
    diff = float(auc[0] - auc[1])
    se = float(np.sqrt(max(0.0, s[0, 0] + s[1, 1] - 2 * s[0, 1])))
    if se > 1e-12:
        z: float | None = diff / se
        p = float(2 * norm.sf(abs(z)))
    else:  # float noise in the variance would turn an exact tie into z = 0/0
        se, z, p = 0.0, (0.0 if diff == 0 else None), (1.0 if diff == 0 else 0.0)
    ci = [diff - Z95 * se, diff + Z95 * se]
    return dict(zip(keys, (float(auc[0]), float(auc[1]), diff, se, ci, z, p)))


def net_benefit(probs: Any, positive: Any, thresholds: Sequence[float]) -> list[dict[str, float]]:
    """Net benefit (Vickers & Elkin 2006) at each threshold probability pt in (0, 1): a case is treated when its risk
    is >= pt, and NB = TP/n - FP/n * pt/(1 - pt). One row per threshold: {"threshold", "model", "treat_all",
    "treat_none"} (treat all: every case treated; treat none: 0)."""
    p, y = _risk(probs), np.asarray(positive).reshape(-1).astype(bool)
    n, prevalence = len(y), float(y.mean()) if len(y) else 0.0
    rows = []
    for pt in np.asarray(thresholds, dtype=np.float64):
        if not 0 < pt < 1:
            raise ValueError(f"threshold probabilities must lie in (0, 1), got {pt}")
        odds, treat = pt / (1 - pt), p >= pt
        tp, fp = int((treat & y).sum()), int((treat & ~y).sum())
        model = (tp - fp * odds) / n if n else 0.0
        rows.append(dict(zip(DCA_KEYS, (float(pt), model, prevalence - (1 - prevalence) * odds, 0.0))))
    return rows


def decision_curve(
    probs: Any, positive: Any, thresholds: Sequence[float] = np.arange(0.01, 0.99, 0.01)
) -> dict[str, np.ndarray]:
    """net_benefit over a grid, as arrays for plotting: {"threshold", "model", "treat_all", "treat_none"}."""
    rows = net_benefit(probs, positive, thresholds)
    return {k: np.array([r[k] for r in rows]) for k in DCA_KEYS}


def _logistic_fit(x: np.ndarray, y: np.ndarray, offset: np.ndarray, max_iter: int = 100) -> np.ndarray | None:
    """Unpenalised logistic regression of y on the columns of x with a fixed offset, by Newton-Raphson with step
    halving. None when it does not converge (separation drives the coefficients to infinity) or x is singular."""
    if np.linalg.matrix_rank(x) < x.shape[1]:  # e.g. constant risks: slope and intercept not separable
        return None
    beta = np.zeros(x.shape[1])

    def loglik(b: np.ndarray) -> float:
        eta = x @ b + offset
        return float((y * eta - np.logaddexp(0, eta)).sum())

    ll = loglik(beta)
    for _ in range(max_iter):
        mu = expit(x @ beta + offset)
        hess = x.T @ (x * (mu * (1 - mu))[:, None])
        try:
            step = np.linalg.solve(hess, x.T @ (y - mu))
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):  # halve until the likelihood does not drop (Newton can overshoot far from the optimum)
            new_ll = loglik(beta + step)
            if new_ll >= ll - 1e-12:
                break
            step = step / 2
        beta, ll = beta + step, new_ll
        if np.abs(step).max() < 1e-9:
            return beta if np.isfinite(beta).all() and np.abs(beta).max() < 1e3 else None
    return None


def calibration_slope_intercept(probs: Any, positive: Any) -> dict[str, Any]:
    """Logistic recalibration of N risks against N binary outcomes (Cox 1958; Van Calster et al. 2016).

    slope: b in logit P(y) = a + b * logit(p) (1 is ideal; < 1: risks too extreme, over-fitted). intercept:
    calibration-in-the-large, a in logit P(y) = a + logit(p) (logit(p) as offset; 0 is ideal; > 0: risks too low).
    Risks are clipped to [1e-6, 1 - 1e-6]. Returns {"slope", "intercept", "n"}; None for a fit that is undefined
    (one class, constant risks for the slope, or a fit that does not converge).
    """
    lp = logit(np.clip(_risk(probs), 1e-6, 1 - 1e-6))
    y = np.asarray(positive, dtype=np.float64).reshape(-1)
    out: dict[str, Any] = {"slope": None, "intercept": None, "n": len(y)}
    if len(y) == 0 or not (np.isfinite(lp).all() and np.isfinite(y).all()) or y.min() == y.max():
        return out
    ones = np.ones((len(y), 1))
    coefficients = _logistic_fit(np.hstack([ones, lp[:, None]]), y, np.zeros(len(y)))
    out["slope"] = None if coefficients is None else float(coefficients[1])
    coefficients = _logistic_fit(ones, y, lp)
    out["intercept"] = None if coefficients is None else float(coefficients[0])
    return out


def paired_bootstrap_diff(
    metric: Callable[[np.ndarray, np.ndarray], float | None],
    a: Any,
    b: Any,
    labels: Any,
    groups: Sequence[Any],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """metric(a, labels) - metric(b, labels) for two predictions of the same N cases, with a 95% percentile interval
    over resamples of whole groups (patients) with replacement, both predictions resampled together (paired).

    a, b: N or N x K predictions; labels: N; groups: N group ids. A resample where either metric is undefined (None
    or NaN, e.g. one class) is skipped; ci95 is None when fewer than half the resamples are usable. Returns {"a",
    "b", "diff", "ci95", "n_boot" (usable resamples)}.
    """
    a, b, labels = np.asarray(a), np.asarray(b), np.asarray(labels)

    def value(pred: np.ndarray, y: np.ndarray) -> float | None:
        v = metric(pred, y)
        return None if v is None or not np.isfinite(v) else float(v)

    va, vb = value(a, labels), value(b, labels)
    diffs = []
    for pick in case_resamples(groups, n_boot, seed):
        ra, rb = value(a[pick], labels[pick]), value(b[pick], labels[pick])
        if ra is not None and rb is not None:
            diffs.append(ra - rb)
    diff = None if va is None or vb is None else va - vb
    return {"a": va, "b": vb, "diff": diff, "ci95": interval(diffs, n_boot), "n_boot": len(diffs)}


def degenerate(probs: Any) -> str | None:
    """Why an N x K (or N risks) predictor is degenerate: "constant output" when no class probability varies over
    cases (max std < 1e-6), "predicts one class only" when the argmax never changes; else None."""
    p = np.asarray(probs, dtype=np.float64)
    p = np.stack([1 - p.reshape(-1), p.reshape(-1)], axis=1) if p.ndim < 2 else p
    if len(p) == 0 or p.std(axis=0).max() < 1e-6:
        return "constant output"
    return "predicts one class only" if len(np.unique(p.argmax(axis=1))) == 1 else None


def _known(probs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    p, y = np.asarray(probs, dtype=np.float64), np.asarray(labels, dtype=np.int64).reshape(-1)
    return p[y >= 0], y[y >= 0]


def ordinal_mae(probs: Any, labels: Any) -> float | None:
    """Mean |argmax grade - true grade| (in grades) over N x K probabilities; labels -1 (unknown) skipped."""
    p, y = _known(probs, labels)
    return float(np.abs(p.argmax(axis=1) - y).mean()) if len(y) else None


def expected_grade_mae(probs: Any, labels: Any) -> float | None:
    """Mean |sum_k k * p_k - true grade| (in grades): the error of the expected grade; labels -1 skipped."""
    p, y = _known(probs, labels)
    return float(np.abs(p @ np.arange(p.shape[1]) - y).mean()) if len(y) else None


_LATEX = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}"}
_LATEX |= {"~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in one pass (so the braces of \\textbackslash{} stay unescaped)."""
    return re.sub(r"[&%$#_{}~^\\]", lambda m: _LATEX[m.group()], text)


def _cell(v: Any) -> str:
    """A value as table text: None / NaN empty, floats to 3 decimals (small ones in e-notation), lists bracketed."""
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return ""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    if isinstance(v, (float, np.floating)):
        return f"{v:.3f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.2e}"
    return str(v)


def _columns(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None) -> list[str]:
    return list(columns) if columns is not None else list(dict.fromkeys(k for r in rows for k in r))


def write_table(
    rows: list[dict[str, Any]], stem: Path, *, columns: list[str] | None = None, caption: str = ""
) -> list[Path]:
    """Write rows as stem.csv (UTF-8, full precision, empty cell for None) and stem.tex (a ``table`` with a plain
    ``tabular``, \\caption and \\label{tab:STEM}; every header, cell and the caption LaTeX-escaped). columns:
    order and subset (default: keys in first-seen order). Each file is written atomically. Returns both paths."""
    stem, cols = Path(stem), _columns(rows, columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: "" if r.get(c) is None else r[c] for c in cols} for r in rows)
    numeric = [all(isinstance(r.get(c), (int, float, np.number)) for r in rows if r.get(c) is not None) for c in cols]
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{tab:{stem.name}}}",
        r"\begin{tabular}{" + "".join("r" if num else "l" for num in numeric) + "}",
        r"\hline",
        " & ".join(latex_escape(c) for c in cols) + r" \\",
        r"\hline",
        *(" & ".join(latex_escape(_cell(r.get(c))) for c in cols) + r" \\" for r in rows),
        r"\hline",
        r"\end{tabular}",
        r"\end{table}",
    ]
    paths = []
    for path, text in ((stem.with_suffix(".csv"), buf.getvalue()), (stem.with_suffix(".tex"), "\n".join(lines) + "\n")):
        with atomic_write(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table ('|' in a cell escaped, newlines as spaces)."""
    cols = _columns(rows, columns)

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", r"\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(cols), line(["---"] * len(cols)), *(line([_cell(r.get(c)) for c in cols]) for r in rows)])


def save_figure(fig: Any, stem: Path) -> list[Path]:
    """Save a matplotlib figure as stem.png (150 dpi) and stem.svg (no date, so a rerun writes the same file), each
    atomically, then close it. Returns both paths."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:  # file-only Agg unless pyplot is up (a notebook keeps its backend)
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for path, meta in ((Path(stem).with_suffix(".png"), {}), (Path(stem).with_suffix(".svg"), {"Date": None})):
        with atomic_write(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", metadata=meta)
        paths.append(path)
    plt.close(fig)
    return paths
