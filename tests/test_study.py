"""The reviewer's tables (metrics/study.py) on hand-made out-of-fold rows: a covariates-only regression on the same
folds, paired comparisons, decision curves, per-centre results, the patient flow, the spread over repeats, and
evaluation's head tables (metrics.evaluation) as CSV + LaTeX + SVG."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from metrics.heads import score_heads
from metrics.study import (
    centre_rows,
    covariate_rows,
    decision_curve_table,
    flow_rows,
    paired_comparisons,
    repeat_rows,
)
from models.card import HeadCard

HEAD = {"x": HeadCard(classes=["no", "yes"], kind="nominal")}


def study_rows(seed: int = 0, n_cases: int = 80, signal: float = 2.0) -> list[dict]:
    """Binary cases of 3 frames, 4 folds, 2 centres; the image probability follows the label with ``signal``, and
    the covariate ``rt`` is the label 80% of the time (missing for 10% of cases)."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_cases):
        y = int(rng.random() < 0.4)
        rt = float(y if rng.random() < 0.8 else 1 - y) if rng.random() > 0.1 else None
        for f in range(3):
            z = signal * (y - 0.5) + rng.normal(0, 1)
            p = 1 / (1 + np.exp(-z))
            rows.append(
                {"id": f"c{c}_{f}", "group": f"c{c}", "patient": f"p{c // 2}", "centre": "A" if c % 2 else "B",
                 "fold": (c // 2) % 4, "labels": {"x": y}, "probs": {"x": [1 - p, p]}, "logits": {},
                 "area_fraction": 0.1, "informative": True, "covariates": {"rt": rt}}
            )  # fmt: skip
    return rows


def test_covariates_only_regression_is_fitted_out_of_fold_per_case():
    rows = study_rows()
    pseudo = covariate_rows(rows, HEAD, ["rt"])
    assert len(pseudo) == 80 and {r["fold"] for r in pseudo} == {0, 1, 2, 3}
    res = score_heads(pseudo, HEAD, n_boot=50, with_baseline=False)["x"]
    assert res["frame"]["n"] == 80 and 0.65 < res["frame"]["auroc"] < 0.95  # rt agrees with the label 80% of cases
    assert covariate_rows(rows, HEAD, []) == []


def test_paired_comparison_finds_the_better_input_and_delong_agrees():
    strong, weak = study_rows(signal=3.0), study_rows(signal=0.2)
    out = paired_comparisons(
        {"image": strong, "noise": weak}, "x", "nominal", min_frames=3, min_confidence=0, n_boot=200
    )
    (row,) = out
    assert row["a"] == "image" and row["cases"] == 80 and row["value a"] > row["value b"]
    lo = float(row["a - b [95% CI]"].split("[")[1].split(",")[0])
    assert lo > 0 and row["DeLong p"] < 0.01
    same = paired_comparisons({"a": strong, "b": strong}, "x", "nominal", min_frames=3, min_confidence=0, n_boot=50)
    assert same[0]["DeLong p"] == pytest.approx(1.0) and same[0]["a - b [95% CI]"] == "0.000 [0.000, 0.000]"


def test_decision_curve_and_centres_and_flow_and_repeats():
    rows = study_rows()
    curves, table = decision_curve_table({"image": rows}, "x", min_frames=3, min_confidence=0)
    assert set(curves) == {"image"} and {r["threshold"] for r in table} == {0.1, 0.2, 0.3, 0.4, 0.5}
    prevalence = np.mean([r["labels"]["x"] for r in rows[::3]])
    assert table[0]["treat_all"] == pytest.approx(prevalence - (1 - prevalence) * 0.1 / 0.9, abs=1e-3)
    centres = centre_rows(rows, "x", HEAD["x"], min_frames=3, min_confidence=0, n_boot=30)
    assert [c["centre"] for c in centres] == ["A", "B"] and all(c["n"] == 40 for c in centres)
    counts = {f: {"train": {"patients": 30, "cases": 60, "frames": 180}, "heldout": {"patients": 10}} for f in range(4)}
    rows[0]["labels"] = {}  # one frame unlabelled: its case still has 2 labelled frames, so it abstains (< 3)
    flow = flow_rows(counts, rows, ["x"], min_frames=3, min_confidence=0)
    scored = [r for r in flow if r["part"] == "heldout scored"]
    assert sum(r["cases"] for r in scored) == 79 and "1 abstained: too few informative frames" in scored[0]["excluded"]
    res = {0: {"image": {"x": {"case": {"auroc": 0.8}, "frame": {}}}}, 1: {"image": {"x": {"case": {"auroc": 0.9}}}}}
    (spread,) = [r for r in repeat_rows(res) if r["metric"] == "case AUROC"]
    assert (
        spread["repeats"] == 2 and spread["mean"] == pytest.approx(0.85) and spread["sd"] == pytest.approx(0.0707, 1e-3)
    )


def test_evaluate_writes_head_tables_as_csv_latex_and_svg(tmp_path):
    from metrics.evaluation import write_head_tables

    rows = study_rows()
    results = score_heads(rows, HEAD, n_boot=30, min_frames=3)
    write_head_tables(tmp_path, rows, HEAD, results, n_boot=30, min_frames=3, min_confidence=0.0)
    with (tmp_path / "table_heads.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["level"] for r in table] == ["frame", "case"] and "\\begin{tabular}" in (
        tmp_path / "table_heads.tex"
    ).read_text()
    assert (tmp_path / "table_centres.csv").is_file() and (tmp_path / "decision_curve_x.svg").is_file()
