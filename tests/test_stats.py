"""metrics/stats.py against hand-computed values, brute force and scikit-learn."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from metrics.covariate_model import covariate_regression_oof
from metrics.grading import binary_auroc
from metrics.stats import (
    calibration_slope_intercept,
    decision_curve,
    degenerate,
    delong_ci,
    delong_test,
    expected_grade_mae,
    latex_escape,
    markdown_table,
    net_benefit,
    ordinal_mae,
    paired_bootstrap_diff,
    save_figure,
    write_table,
)


def brute_force_delong_cov(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """DeLong (1988) by definition: psi over every (positive, negative) pair, no ranks."""
    x, y = scores[:, positive], scores[:, ~positive]
    psi = (x[:, :, None] > y[:, None, :]) + 0.5 * (x[:, :, None] == y[:, None, :])  # R x m x n
    v10, v01 = psi.mean(axis=2), psi.mean(axis=1)
    return np.cov(v10) / x.shape[1] + np.cov(v01) / y.shape[1]


def small_example():
    rng = np.random.default_rng(3)
    positive = np.array([1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0, 1, 0, 0], bool)
    a = np.round(positive * 0.8 + rng.normal(0, 0.5, len(positive)), 1)  # rounded: ties within and across classes
    b = np.round(positive * 0.3 + rng.normal(0, 0.5, len(positive)), 1)
    return a, b, positive


def test_delong_aucs_match_sklearn_and_a_real_difference_is_significant():
    a, b, positive = small_example()
    r = delong_test(a, b, positive)
    assert r["auc_a"] == pytest.approx(roc_auc_score(positive, a))
    assert r["auc_b"] == pytest.approx(roc_auc_score(positive, b))
    assert r["diff"] == pytest.approx(r["auc_a"] - r["auc_b"])
    assert delong_ci(a, positive)["auc"] == pytest.approx(roc_auc_score(positive, a))
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.4
    good, noise = y + rng.normal(0, 0.7, 300), rng.normal(0, 1, 300)
    r = delong_test(good, noise, y)
    assert r["p"] < 1e-6 and r["z"] > 0 and r["ci95"][0] > 0
    assert delong_test(noise, good, y)["z"] == pytest.approx(-r["z"])


def test_delong_variance_equals_brute_force_structural_components():
    a, b, positive = small_example()
    s = brute_force_delong_cov(np.stack([a, b]), positive)
    r = delong_test(a, b, positive)
    se = np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    assert r["se"] == pytest.approx(se, rel=1e-12)
    assert r["ci95"] == pytest.approx([r["diff"] - 1.959964 * se, r["diff"] + 1.959964 * se], rel=1e-6)
    assert r["z"] == pytest.approx(r["diff"] / se)
    ci = delong_ci(b, positive)
    assert ci["se"] == pytest.approx(np.sqrt(s[1, 1]), rel=1e-12)
    assert ci["ci95"] == pytest.approx([ci["auc"] - 1.959964 * ci["se"], ci["auc"] + 1.959964 * ci["se"]], rel=1e-6)


def test_delong_identical_and_degenerate_inputs():
    a, _, positive = small_example()
    r = delong_test(a, a.copy(), positive)
    assert (r["diff"], r["se"], r["z"], r["p"], r["ci95"]) == (0.0, 0.0, 0.0, 1.0, [0.0, 0.0])
    one_class = delong_test(a, a, np.ones(len(a), bool))
    assert set(one_class) == {"auc_a", "auc_b", "diff", "se", "ci95", "z", "p"}
    assert all(v is None for v in one_class.values())
    with_nan = a.copy()
    with_nan[2] = np.nan
    assert all(v is None for v in delong_test(with_nan, a, positive).values())
    assert delong_ci(a, np.zeros(len(a), bool)) == {"auc": None, "se": None, "ci95": None}
    perfect, constant = positive.astype(float), np.full(len(a), 0.5)  # both variances 0, AUROCs 1 and 0.5
    r = delong_test(perfect, constant, positive)
    assert (r["diff"], r["se"], r["z"], r["p"]) == (0.5, 0.0, None, 0.0)


def test_net_benefit_by_hand():
    probs = np.array([0.9, 0.8, 0.6, 0.3, 0.2, 0.1])
    positive = np.array([1, 1, 0, 1, 0, 0], bool)
    rows = net_benefit(probs, positive, [0.25, 0.5, 0.6])
    # pt 0.25: treated 0.9 0.8 0.6 0.3 -> TP 3, FP 1, odds 1/3; treat all: prevalence 1/2 - 1/2 * 1/3
    assert rows[0] == pytest.approx(
        {"threshold": 0.25, "model": 3 / 6 - 1 / 6 / 3, "treat_all": 1 / 3, "treat_none": 0}
    )
    assert rows[1]["model"] == pytest.approx(2 / 6 - 1 / 6) and rows[1]["treat_all"] == pytest.approx(0)
    assert rows[2]["model"] == pytest.approx(2 / 6 - 1 / 6 * 1.5)  # risk == pt counts as treated
    curve = decision_curve(np.c_[1 - probs, probs], positive)  # N x 2 input: column 1
    assert len(curve["threshold"]) == 98 and curve["threshold"][0] == pytest.approx(0.01)
    i = int(np.argmin(np.abs(curve["threshold"] - 0.5)))
    assert curve["model"][i] == pytest.approx(1 / 6)
    assert np.all(curve["treat_none"] == 0)
    with pytest.raises(ValueError):
        net_benefit(probs, positive, [1.0])


def test_calibration_slope_and_intercept():
    rng = np.random.default_rng(0)
    p = expit(rng.normal(-0.5, 1.5, 20000))
    y = rng.random(20000) < p
    cal = calibration_slope_intercept(p, y)
    assert abs(cal["slope"] - 1) < 0.1 and abs(cal["intercept"]) < 0.1 and cal["n"] == 20000
    over = calibration_slope_intercept(expit(2 * logit(p)), y)  # over-confident: logit doubled
    assert abs(over["slope"] - 0.5) < 0.05
    too_low = calibration_slope_intercept(expit(logit(p) - 1), y)  # every risk too low by 1 on the logit scale
    assert abs(too_low["intercept"] - 1) < 0.1 and abs(too_low["slope"] - 1) < 0.1


def test_calibration_matches_sklearn_and_hand_values():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    p = expit(rng.normal(0, 2, 500))
    y = rng.random(500) < expit(0.3 + 0.7 * logit(p))
    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000).fit(logit(p)[:, None], y)
    assert calibration_slope_intercept(p, y)["slope"] == pytest.approx(ref.coef_[0, 0], abs=1e-5)
    # constant risk 0.2 with prevalence 1/2: intercept logit(1/2) - logit(0.2) by hand; no slope (logit(p) constant)
    const = calibration_slope_intercept(np.full(20, 0.2), np.arange(20) % 2)
    assert const["intercept"] == pytest.approx(np.log(4)) and const["slope"] is None
    assert calibration_slope_intercept([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])["slope"] is None  # separated
    assert calibration_slope_intercept([0.1, 0.2], [1, 1]) == {"slope": None, "intercept": None, "n": 2}


def auroc_metric(pred: np.ndarray, labels: np.ndarray) -> float | None:
    return binary_auroc(pred, labels.astype(bool))


def test_paired_bootstrap_identical_predictions_give_a_zero_interval():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.5
    a = y + rng.normal(0, 1, 60)
    r = paired_bootstrap_diff(auroc_metric, a, a.copy(), y, np.arange(60) // 3, n_boot=200)
    assert r["diff"] == 0 and r["ci95"] == [0.0, 0.0] and r["n_boot"] == 200
    assert r["a"] == pytest.approx(roc_auc_score(y, a))


def test_paired_bootstrap_by_group_is_wider_than_by_row_when_groups_repeat_rows():
    rng = np.random.default_rng(1)
    y = np.arange(40) % 2 == 0
    a, b = y + rng.normal(0, 1, 40), y + rng.normal(0, 2, 40)
    ya, aa, bb = np.repeat(y, 10), np.repeat(a, 10), np.repeat(b, 10)  # each case repeated 10 times
    by_group = paired_bootstrap_diff(auroc_metric, aa, bb, ya, np.repeat(np.arange(40), 10), n_boot=300)
    by_row = paired_bootstrap_diff(auroc_metric, aa, bb, ya, np.arange(400), n_boot=300)
    assert by_group["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))
    width = {k: r["ci95"][1] - r["ci95"][0] for k, r in (("group", by_group), ("row", by_row))}
    assert width["group"] > 2 * width["row"]  # about sqrt(10) wider: 40 independent cases, not 400


def test_paired_bootstrap_skips_resamples_where_the_metric_is_undefined():
    y = np.array([1, 1, 0, 0, 1, 1, 0, 0])  # groups of 2 with one class each: 1 resample in 8 has one class
    a, b = np.linspace(0, 1, 8), np.linspace(1, 0, 8)
    r = paired_bootstrap_diff(auroc_metric, a, b, y, np.arange(8) // 2, n_boot=400, seed=2)
    assert 300 < r["n_boot"] < 400 and r["ci95"] is not None
    assert r["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b))


def simulated_covariates(n: int = 300, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radiotherapy (binary) mostly means F2; age is noise with 15% missing; 5 shuffled folds."""
    rng = np.random.default_rng(seed)
    radiotherapy = rng.random(n) < 0.4
    f2 = rng.random(n) < np.where(radiotherapy, 0.85, 0.1)
    labels = np.where(f2, 2, rng.integers(0, 2, n))
    age = rng.normal(60, 10, n)
    age[rng.random(n) < 0.15] = np.nan
    return np.c_[radiotherapy, age], labels, rng.permutation(np.arange(n) % 5)


def test_covariate_model_matches_sklearn_cross_val_predict():
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import PredefinedSplit, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, folds = simulated_covariates()
    probs = covariate_regression_oof(x, y, folds, kind="nominal", n_classes=3)
    auc = roc_auc_score(y == 2, probs[:, 2])
    assert auc > 0.8
    pipe = make_pipeline(
        SimpleImputer(strategy="median", add_indicator=True), StandardScaler(), LogisticRegression(max_iter=1000)
    )
    ref = cross_val_predict(pipe, x, y, cv=PredefinedSplit(folds), method="predict_proba")
    assert abs(auc - roc_auc_score(y == 2, ref[:, 2])) < 0.05
    assert np.abs(probs - ref).max() < 1e-3  # same model, same preprocessing: the same probabilities

    ordinal = covariate_regression_oof(x, y, folds, kind="ordinal", n_classes=3)
    assert np.all(ordinal >= 0) and np.allclose(ordinal.sum(axis=1), 1)
    assert roc_auc_score(y == 2, ordinal[:, 2]) > 0.8
    binary = (y == 2).astype(int)  # with two classes Frank & Hall is one binary regression: the nominal model
    np.testing.assert_allclose(
        covariate_regression_oof(x, binary, folds, kind="ordinal", n_classes=2),
        covariate_regression_oof(x, binary, folds, kind="nominal", n_classes=2),
    )


def test_covariate_model_on_noise_and_on_a_single_class_training_part():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 2000)
    # folds stratified by label: otherwise a fold's prevalence shifts the intercept fitted without it the other way,
    # and pooled out-of-fold AUROC of pure noise falls well below 0.5 (0.40 at n = 400 here)
    folds = np.empty(2000, int)
    for c in (0, 1):
        folds[y == c] = rng.permutation(np.arange((y == c).sum()) % 5)
    noise = covariate_regression_oof(rng.normal(0, 1, (2000, 3)), y, folds, kind="nominal", n_classes=2)
    assert abs(roc_auc_score(y, noise[:, 1]) - 0.5) < 0.05
    x = rng.normal(0, 1, (20, 2))
    y = np.r_[np.arange(10) % 3, np.full(10, 2)]  # fold 1 holds class 2 only: fold 0 is predicted from it
    folds = np.repeat([0, 1], 10)
    for kind in ("nominal", "ordinal"):
        probs = covariate_regression_oof(x, y, folds, kind=kind, n_classes=3)
        np.testing.assert_allclose(probs[:10], np.tile([0.0, 0.0, 1.0], (10, 1)))
        assert np.allclose(probs[10:].sum(axis=1), 1) and probs[10:, 0].std() > 0
    with pytest.raises(ValueError):
        covariate_regression_oof(x, y, folds, kind="cumulative", n_classes=3)


def test_degenerate():
    assert degenerate(np.tile([0.2, 0.3, 0.5], (10, 1))) == "constant output"
    rng = np.random.default_rng(0)
    always_first = np.c_[0.6 + 0.1 * rng.random(10), np.zeros(10)]
    always_first[:, 1] = 1 - always_first[:, 0]
    assert degenerate(always_first) == "predicts one class only"
    assert degenerate(np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])) is None
    assert degenerate(np.array([0.1, 0.7, 0.4])) is None  # N risks of the positive class


def test_ordinal_errors_by_hand():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.2, 0.5, 0.3], [0.3, 0.3, 0.4]])
    labels = np.array([2, 2, 0, -1])  # the last is unknown: skipped
    assert ordinal_mae(probs, labels) == pytest.approx((2 + 0 + 1) / 3)  # argmax 0, 2, 1
    assert expected_grade_mae(probs, labels) == pytest.approx((1.6 + 0.5 + 1.1) / 3)  # expected 0.4, 1.5, 1.1
    assert ordinal_mae(probs, np.full(4, -1)) is None


def test_write_table_escapes_latex_and_round_trips_csv(tmp_path):
    assert latex_escape("a_b & 50%") == r"a\_b \& 50\%"
    assert latex_escape("$#{}~^\\") == r"\$\#\{\}\textasciitilde{}\textasciicircum{}\textbackslash{}"
    rows = [
        {"model": "a_b & 50%", "auc": 0.91234, "ci95": [0.8, 0.95], "n": 12, "note": None},
        {"model": "x", "auc": 0.00001, "ci95": None, "n": 3, "note": "p_value #1"},
    ]
    paths = write_table(rows, tmp_path / "auc_table", caption="AUROC_by model")
    assert paths == [tmp_path / "auc_table.csv", tmp_path / "auc_table.tex"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["auc_table.csv", "auc_table.tex"]  # no temp file left
    tex = paths[1].read_text(encoding="utf-8")
    assert r"a\_b \& 50\%" in tex and r"p\_value \#1" in tex and r"\caption{AUROC\_by model}" in tex
    assert r"\begin{tabular}{lrlrl}" in tex and r"model & auc & ci95 & n & note \\" in tex
    assert r"a\_b \& 50\% & 0.912 & [0.800, 0.950] & 12 &  \\" in tex and "1.00e-05" in tex
    with paths[0].open(encoding="utf-8", newline="") as f:
        back = list(csv.DictReader(f))
    assert [r["model"] for r in back] == ["a_b & 50%", "x"]
    assert float(back[0]["auc"]) == 0.91234 and back[0]["note"] == "" and back[1]["n"] == "3"
    write_table(rows, tmp_path / "subset", columns=["n", "model"])
    assert (tmp_path / "subset.csv").read_text(encoding="utf-8").splitlines()[0] == "n,model"


def test_markdown_table():
    text = markdown_table([{"model": "a|b", "auc": 0.5}, {"model": "c"}], ["model", "auc"])
    assert text == "| model | auc |\n| --- | --- |\n| a\\|b | 0.500 |\n| c |  |"


def test_save_figure(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    paths = save_figure(fig, tmp_path / "roc")
    assert paths == [tmp_path / "roc.png", tmp_path / "roc.svg"]
    assert paths[0].read_bytes().startswith(b"\x89PNG")
    svg = paths[1].read_text(encoding="utf-8")
    assert svg.startswith("<?xml") and "<svg" in svg
    assert not plt.fignum_exists(fig.number)


def test_net_benefit_matches_the_dcurves_reference_implementation():
    """Our decision curve against dcurves (Sjoberg's reference implementation of Vickers & Elkin's DCA), model and
    treat-all curves, on data with ties at thresholds."""
    pd = pytest.importorskip("pandas", reason="dcurves (dev extra) brings pandas")
    dca = pytest.importorskip("dcurves", reason="dcurves is in the dev extra: pip install '.[dev]'").dca
    from metrics.stats import net_benefit

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(int)
    p = np.round(np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.15, 300), 0.01, 0.99), 2)  # ties on the grid
    thresholds = np.round(np.arange(0.05, 0.95, 0.05), 2)
    ref = dca(data=pd.DataFrame({"y": y, "p": p}), outcome="y", modelnames=["p"], thresholds=thresholds)
    ours = net_benefit(p, y, thresholds)
    for name, key in (("p", "model"), ("all", "treat_all")):
        expected = ref[ref.model == name].sort_values("threshold")["net_benefit"].to_numpy()
        np.testing.assert_allclose([r[key] for r in ours], expected, atol=1e-9)
