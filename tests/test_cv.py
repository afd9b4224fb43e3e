"""Case-level labels, the dataset audit's leak check, and patient-level cross-validation end to end."""

from __future__ import annotations

import csv
import json
import math

import cv2
import numpy as np
import pytest

from core.errors import UserError
from data.check import main as check_main
from data.datasets import manifest_records
from data.synthetic import COVARIATES, ensure_synthetic_dataset
from metrics.cv import main as pool_folds
from tests.conftest import SHARED_DATA, needs_shared_data, run_script

HEADS = {"fibrosis": ["F0", "F1", "F2"], "lift": ["adequate", "partial", "non-lifting"]}


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _tiny_frames(root, names):
    (root / "f").mkdir(parents=True, exist_ok=True)
    for n in names:
        cv2.imwrite(str(root / "f" / f"{n}.png"), np.full((32, 32, 3), 120, np.uint8))


def test_case_labels_fill_frames_and_a_frames_own_label_wins(tmp_path):
    _tiny_frames(tmp_path, ["a1", "a2", "b1", "c1"])
    _write_csv(
        tmp_path / "frames.csv",
        [
            {"image": "f/a1.png", "group": "A", "fibrosis": ""},
            {"image": "f/a2.png", "group": "A", "fibrosis": "F0"},
            {"image": "f/b1.png", "group": "B", "fibrosis": ""},
            {"image": "f/c1.png", "group": "C", "fibrosis": ""},
        ],
    )
    _write_csv(
        tmp_path / "cases.csv",
        [
            {"group": "A", "fibrosis": "F2", "lift": "non-lifting", "prior_radiotherapy": "yes", "weeks": "12"},
            {"group": "B", "fibrosis": "", "lift": "adequate", "prior_radiotherapy": "no", "weeks": ""},
        ],
    )
    recs = {
        r.id: r
        for r in manifest_records(
            tmp_path / "frames.csv", heads=HEADS, cases="cases.csv", covariates=["prior_radiotherapy", "weeks"]
        )
    }
    assert recs["f/a1"].labels == {"fibrosis": 2, "lift": 2}  # from the case
    assert recs["f/a2"].labels == {"fibrosis": 0, "lift": 2}  # the frame's own label wins
    assert recs["f/b1"].labels == {"fibrosis": -1, "lift": 0}  # unknown stays unknown
    assert recs["f/a1"].covariates == {"prior_radiotherapy": 1.0, "weeks": 12.0}
    assert math.isnan(recs["f/b1"].covariates["weeks"]) and recs["f/b1"].covariates["prior_radiotherapy"] == 0.0
    assert recs["f/c1"].labels["fibrosis"] == -1 and math.isnan(recs["f/c1"].covariates["weeks"])  # case not listed

    _write_csv(tmp_path / "bad.csv", [{"group": "A", "fibrosis": "F2", "weeks": "twelve"}])
    with pytest.raises(UserError, match=r"bad.csv:2: covariate 'weeks' = 'twelve'"):
        manifest_records(tmp_path / "frames.csv", heads=HEADS, cases="bad.csv", covariates=["weeks"])
    _write_csv(tmp_path / "dup.csv", [{"group": "A", "fibrosis": "F2"}, {"group": "A", "fibrosis": "F1"}])
    with pytest.raises(UserError, match="case 'A' appears twice"):
        manifest_records(tmp_path / "frames.csv", heads=HEADS, cases="dup.csv")
    with pytest.raises(UserError, match="need a case table"):
        manifest_records(tmp_path / "frames.csv", heads=HEADS, covariates=["weeks"])


def test_synthetic_cases_hide_labels_per_case(tmp_path):
    m = ensure_synthetic_dataset(
        tmp_path, n=40, size=(48, 64), seed=0, n_groups=10, label_level="case", hidden_fraction=0.5
    )
    recs = manifest_records(m, heads=HEADS, cases="cases.csv", covariates=COVARIATES)
    by_case = {}
    for r in recs:
        by_case.setdefault(r.group, set()).add(r.labels["fibrosis"])
    assert all(len(v) == 1 for v in by_case.values())  # one label per case
    assert sum(-1 in v for v in by_case.values()) == 5  # half the cases hidden
    assert set(recs[0].covariates) == set(COVARIATES)


def test_check_refuses_a_case_shared_between_splits_and_counts_labels(tmp_path, capsys):
    _tiny_frames(tmp_path, ["a1", "a2", "b1", "c1", "d1", "e1"])
    rows = [
        {"image": "f/a1.png", "group": "A", "split": "train", "fibrosis": "F2"},
        {"image": "f/a2.png", "group": "A", "split": "test", "fibrosis": "F2"},
        {"image": "f/b1.png", "group": "B", "split": "train", "fibrosis": "F0"},
        {"image": "f/c1.png", "group": "C", "split": "train", "fibrosis": "F1"},
        {"image": "f/d1.png", "group": "D", "split": "test", "fibrosis": ""},
        {"image": "f/e1.png", "group": "E", "split": "val", "fibrosis": "F0"},
    ]
    _write_csv(tmp_path / "m.csv", rows)
    code = check_main(
        [
            "--manifest",
            str(tmp_path / "m.csv"),
            "--heads",
            "fibrosis=F0,F1,F2",
            "--folds",
            "2",
            "--stratify",
            "fibrosis",
        ]
    )
    out = capsys.readouterr()
    assert code == 2 and "case/group 'A' has frames in splits ['test', 'train']" in out.err
    assert "labels_by_split: {'test': {'fibrosis': {'F2': 1, 'unknown': 1}}" in out.out
    assert "labels_by_fold:" in out.out
    _write_csv(tmp_path / "ok.csv", [dict(r, split="train") if r["group"] == "A" else r for r in rows])
    assert (
        check_main(["--manifest", str(tmp_path / "ok.csv"), "--heads", "fibrosis=F0,F1,F2", "--near-duplicate", "0"])
        == 0
    )  # (the tiny frames here are all alike)


def test_cross_validation_runs_end_to_end_and_pools_out_of_fold(tmp_path):
    """2 folds x 2 variants (image, fused) of a tiny synthetic case study, then the pooled report."""
    sweep = tmp_path / "sweep"
    p = run_script(
        "train.py",
        "-m",
        "experiment=synthetic_ordinal",
        f"paths.cache_dir={tmp_path / 'cache'}",
        f"hydra.sweep.dir={sweep}",
        "data.n_cases=12",
        "data.n_frames=48",
        "data.size=64",
        "data.batch_size=8",
        "trainer.max_epochs=1",
        "trainer.progress=false",
        "trainer.n_boot=20",
        "data.cv.folds=2",
        "data.cv.fold=0,1",
        "data.cv.stratify=fibrosis",
        "model.head_inputs=image,fused",
        "trainer.precision=fp32",
        timeout=600,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    oofs = sorted(sweep.rglob("oof.json"))
    assert len(oofs) == 4
    seen: dict[str, dict[str, int]] = {}
    for f in oofs:
        d = json.loads(f.read_text())
        card = json.loads((f.parent / "checkpoints" / "best.json").read_text())
        assert card["heads"]["fibrosis"]["kind"] == "ordinal" and card["heads"]["fibrosis"]["temperature"] > 0
        fib = card["heads"]["fibrosis"]
        assert (fib.get("validation") is not None) == (
            fib["n_val_labels"] > 0
        )  # calibrated wherever validation had labels
        for r in d["rows"]:
            assert seen.setdefault(d["variant"], {}).setdefault(r["group"], d["fold"]) == d["fold"]
            assert len(r["probs"]["fibrosis"]) == 3 and abs(sum(r["probs"]["fibrosis"]) - 1) < 1e-4
    assert set(seen) == {"image", "fused"} and all(len(v) == 12 for v in seen.values())  # every case once

    assert pool_folds([str(sweep), "--n-boot", "50"]) == 0  # python -m metrics.cv, in this process
    report = (sweep / "cv_report.md").read_text()
    assert "Variant `fused`" in report and "Paired comparisons" in report and "[" in report
    assert "Variant `covariates-lr`" in report and "Patient flow per fold" in report  # synthetic cases carry covariates
    for table in ("table_heads", "table_comparisons", "table_flow"):
        assert (sweep / f"{table}.csv").is_file() and "\\begin{tabular}" in (sweep / f"{table}.tex").read_text()
    res = json.loads((sweep / "cv_results.json").read_text())
    assert res["image"]["folds"] == [0, 1] and res["image"]["n_rows"] == 48
    fib = res["fused"]["heads"]["fibrosis"]
    assert fib["frame"]["n"] <= 48 and fib["frame"]["ci95"]["accuracy"] is not None and "case" in fib
    assert (sweep / "reliability_fused_fibrosis.png").is_file() and (sweep / "reliability_fused_fibrosis.svg").is_file()
    assert (sweep / "decision_curve_fibrosis.svg").is_file()
    p = run_script("-m", "metrics.cv", str(tmp_path / "cache"))
    assert p.returncode == 2 and "no oof.json" in p.stderr and "Traceback" not in p.stderr
    next(f for f in oofs if json.loads(f.read_text())["fold"] == 1).unlink()  # a fold that never finished
    p = run_script("-m", "metrics.cv", str(sweep), "--n-boot", "10")
    assert p.returncode == 2 and "missing [1]" in p.stderr


def test_check_lists_every_problem_in_one_pass_and_finds_near_duplicates(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "f").mkdir()
    base = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "f" / "train.png"), base)
    cv2.imwrite(str(tmp_path / "f" / "copy.png"), np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8))
    cv2.imwrite(str(tmp_path / "f" / "other.png"), rng.integers(0, 255, (72, 96, 3), dtype=np.uint8))
    _write_csv(
        tmp_path / "m.csv",
        [
            {"image": "f/train.png", "group": "A", "split": "train", "fibrosis": "F9"},
            {"image": "f/copy.png", "group": "B", "split": "test", "fibrosis": "F1"},
            {"image": "f/other.png", "group": "C", "split": "test", "fibrosis": "F0"},
            {"image": "f/missing.png", "group": "D", "split": "test", "fibrosis": "F2"},
        ],
    )
    code = check_main(["--manifest", str(tmp_path / "m.csv"), "--heads", "fibrosis=F0,F1,F2"])
    err = capsys.readouterr().err
    assert code == 2
    assert "label 'F9' for head 'fibrosis'" in err  # the bad label ...
    assert "image not found" in err and "missing.png" in err  # ... does not hide the missing file
    assert "near-duplicate across splits: f/copy is within 3.0 grey levels of training frame f/train" in err
    assert "f/other" not in err
    # without --heads the extra columns are the heads, counted by value
    code = check_main(["--manifest", str(tmp_path / "m.csv"), "--near-duplicate", "0"])
    out = capsys.readouterr().out
    assert "'fibrosis': {'F9': 1, 'F1': 1, 'F0': 1, 'F2': 1}" in out.replace("\n", "") or "F9" in out


@needs_shared_data()
def test_check_reports_the_standard_clinicdb_split_leak(tmp_path, capsys):
    root = SHARED_DATA / "cvc-clinicdb"
    seq = {r[0]: r[1] for r in csv.reader((root / "sequences.csv").open()) if r and r[0] != "frame"}
    test = {x.strip() for x in (root / "splits" / "pranet_test.txt").read_text().split()}
    rows = [
        {"image": str(root / "images" / f"{n}.png"), "group": seq[n], "split": "test" if n in test else "train"}
        for n in sorted(seq, key=int)
    ]
    _write_csv(tmp_path / "clinicdb.csv", rows)
    code = check_main(["--manifest", str(tmp_path / "clinicdb.csv")])
    out = capsys.readouterr()
    assert code == 2
    leaks = [x for x in out.err.splitlines() if "has frames in splits ['test', 'train']" in x]
    assert len(leaks) == 26  # every test sequence also has training frames
    n_dup = int(next(x for x in out.out.splitlines() if x.startswith("near_duplicates:")).split(":")[1])
    assert n_dup == 41, n_dup  # test frames within 10 grey levels of a training frame (48x36 thumbnails)
