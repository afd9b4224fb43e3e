"""Splits that cannot leak: each defect a reviewer found, and a property-based test over random manifests.

No image is ever read here: records are only listed (manifest_records does not open files), so the tests are
fast."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.errors import UserError
from data.check import main as check_main
from data.datasets import Record, manifest_records
from data.splits import development_folds, group_split, training_splits, unit_of
from metrics.cv import collect

HEADS = {"fibrosis": ["F0", "F1", "F2"]}


def write_manifest(path: Path, rows: list[dict], cases: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    if cases:
        with (path.parent / "cases.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for c in cases for k in c)))
            w.writeheader()
            w.writerows(cases)
    return path


def frames(group: str, n: int, split: str = "", label: str = "F0", **extra) -> list[dict]:
    return [{"image": f"{group}_{i}.png", "group": group, "split": split, "fibrosis": label, **extra} for i in range(n)]


def source(path: Path, split: str = "train", cases: str | None = None) -> dict:
    return {"kind": "manifest", "name": "m", "path": str(path), "split": split, "cases": cases}


def test_an_unsplit_row_is_development_data_never_test(tmp_path):
    m = write_manifest(tmp_path / "m.csv", frames("P1", 3) + frames("P2", 2, "test"))
    test = manifest_records(m, heads=HEADS, split="test")
    dev = manifest_records(m, heads=HEADS, split="train")
    assert {r.group for r in test} == {"P2"} and {r.group for r in dev} == {"P1"}
    bad = write_manifest(tmp_path / "bad.csv", frames("P1", 1, "Test"))
    with pytest.raises(UserError, match="split 'Test' is not one of train, val, test"):
        manifest_records(bad, split="train")


def test_explicit_val_rows_form_the_validation_split(tmp_path):
    m = write_manifest(tmp_path / "m.csv", frames("P1", 3) + frames("P2", 2, "val") + frames("P3", 2, "test"))
    train, val, held = training_splits([source(m)], [], heads=HEADS, val_fraction=0.5, split_seed=0)
    assert {r.group for r in train} == {"m/P1"} and {r.group for r in val} == {"m/P2"} and held == []


def test_a_cross_validation_fold_never_validates_on_its_held_out_patients(tmp_path):
    labels = ["F0", "F1", "F2"]
    rows = [f for p in range(9) for f in frames(f"P{p}", 2, "val" if p >= 6 else "", label=labels[p % 3])]
    m = write_manifest(tmp_path / "m.csv", rows)
    for fold in range(3):  # the validation source is the manifest's val rows, which the CV pool also holds
        train, val, held = training_splits(
            [source(m)], [source(m, "val")], heads=HEADS, val_fraction=0.2, split_seed=0, cv_folds=3, cv_fold=fold
        )
        units = [{unit_of(r) for r in part} for part in (train, val, held)]
        assert units[2] and not units[2] & units[1] and not units[2] & units[0] and not units[0] & units[1]
        assert units[1] <= {f"m/P{p}" for p in range(6, 9)}


def test_validation_source_patients_never_train(tmp_path):
    m = write_manifest(tmp_path / "m.csv", frames("P1", 2) + frames("P2", 2))
    v = write_manifest(tmp_path / "v.csv", frames("P2", 1))
    train, val, _ = training_splits([source(m)], [source(v)], heads=HEADS, val_fraction=0.2, split_seed=0)
    assert {r.group for r in train} == {"m/P1"} and {r.group for r in val} == {"m/P2"}


def test_heads_or_folds_without_a_group_column_are_a_user_error_unless_group_frame(tmp_path):
    m = write_manifest(tmp_path / "m.csv", [{"image": f"f{i}.png", "fibrosis": "F0"} for i in range(6)])
    with pytest.raises(UserError, match="no 'group' column.*data.group=frame"):
        training_splits([source(m)], [], heads=HEADS, val_fraction=0.2, split_seed=0)
    with pytest.raises(UserError, match="no 'group' column"):
        training_splits([source(m)], [], heads={}, val_fraction=0.2, split_seed=0, cv_folds=2)
    train, val, _ = training_splits([source(m)], [], heads=HEADS, val_fraction=0.2, split_seed=0, group="frame")
    assert len({r.group for r in train + val}) == 6  # every frame its own case, said explicitly
    train, val, _ = training_splits([source(m)], [], heads={}, val_fraction=0.2, split_seed=0)
    assert len(train + val) == 6  # segmentation only: no intervals by case, each frame its own group


def test_held_out_sequences_stay_out_of_training_whatever_the_seed():
    recs = [Record(Path(f"{g}_{i}"), None, id=f"{g}_{i}", group=g) for g in "ABCDEFGH" for i in range(3)]
    for seed in range(8):
        train, val = group_split(recs, val_fraction=0.1, seed=seed, always_val=["C", "F"])
        assert {"C", "F"} <= {r.group for r in val} and not {"C", "F"} & {r.group for r in train}
    same = group_split(recs, val_fraction=0.1, seed=3)
    assert group_split(recs, val_fraction=0.1, seed=3, always_val=[r.group for r in same[1]]) == same
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(Path(__file__).parents[1] / "configs" / "data" / "polyp_pranet.yaml")
    assert list(cfg.val_groups) == ["clinicdb/6", "clinicdb/17"]  # the clinicdb_heldout_seq test set's sequences


def test_check_folds_are_the_folds_training_holds_out(tmp_path, capsys):
    rows = [f for p in range(12) for f in frames(f"P{p:02d}", 1 + p % 3, label=["F0", "F1", "F2"][p % 3])]
    rows += [f for p in range(12, 20) for f in frames(f"P{p:02d}", 2, "test", label="F1")]
    m = write_manifest(tmp_path / "m.csv", rows)
    rng = np.random.default_rng(0)
    for r in rows:  # data.check reads every image: distinct noise, so that no two are near-duplicates
        cv2.imwrite(str(tmp_path / r["image"]), rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    code = check_main(["--manifest", str(m), "--heads", "fibrosis=F0,F1,F2", "--folds", "3", "--stratify", "fibrosis"])
    out = capsys.readouterr().out
    assert code == 0
    report = eval(out.split("labels_by_fold: ", 1)[1].splitlines()[0])  # a dict literal printed by data.check
    for fold in range(3):
        _, _, held = training_splits(
            [source(m)],
            [],
            heads=HEADS,
            val_fraction=0.2,
            split_seed=0,
            cv_folds=3,
            cv_fold=fold,
            cv_stratify="fibrosis",
        )
        assert report[fold]["patients"] == len({unit_of(r) for r in held})
        assert report[fold]["frames"] == len(held)
        assert sum(report[fold]["fibrosis"]["cases"].values()) == len({r.group for r in held})


def test_a_patient_column_keeps_a_patients_resections_in_one_fold_and_one_bootstrap_unit(tmp_path):
    rows = []
    cases = []
    for p in range(6):
        for c in range(2):  # two resections of each patient
            rows += frames(f"P{p}R{c}", 2, label="F0")
            cases.append({"group": f"P{p}R{c}", "patient": f"P{p}"})
    m = write_manifest(tmp_path / "m.csv", rows, cases)
    recs = manifest_records(m, heads=HEADS, cases="cases.csv")
    assert {r.patient for r in recs} == {f"P{p}" for p in range(6)}
    folds = development_folds(recs, folds=3)
    fold_of: dict[str, set] = {}
    for r, f in zip(recs, folds):
        fold_of.setdefault(r.patient, set()).add(f)
    assert all(len(v) == 1 for v in fold_of.values())  # by case alone, the two resections would split
    from metrics.heads import score_head
    from models.card import HeadCard

    rng = np.random.default_rng(0)
    rows_ = [
        {"group": r.group, "patient": r.patient, "labels": {"x": i % 2}, "probs": {"x": [0.4, 0.6]},
         "logits": {}, "area_fraction": rng.random(), "informative": True}
        for i, r in enumerate(recs)
    ]  # fmt: skip
    res = score_head(rows_, "x", HeadCard(classes=["a", "b"]), n_boot=20)
    assert res["frame"]["n_patients"] == 6 and res["frame"]["n_cases"] == 12


def test_metrics_cv_refuses_a_fold_whose_held_out_patient_trained(tmp_path):
    rows = [{"id": "a", "group": "P1", "patient": "P1", "labels": {}, "probs": {}, "informative": True}]
    doc = {"fold": 0, "folds": 2, "variant": "image", "heads": {}, "rows": rows}
    (tmp_path / "f0").mkdir()
    (tmp_path / "f0" / "oof.json").write_text(json.dumps(dict(doc, splits={"train": ["P1"], "heldout": ["P1"]})))
    with pytest.raises(UserError, match="patient P1 is both held out and in the train part of fold 0"):
        collect(tmp_path)
    (tmp_path / "f0" / "oof.json").write_text(json.dumps(dict(doc, splits={"train": ["P2"], "heldout": ["P3"]})))
    with pytest.raises(UserError, match="predictions of patient P1, who is not in fold 0"):
        collect(tmp_path)
    (tmp_path / "f0" / "oof.json").write_text(json.dumps(doc))
    with pytest.raises(UserError, match="no saved splits"):
        collect(tmp_path)


SPLITS = st.sampled_from(["", "", "train", "val", "test"])


@st.composite
def manifests(draw):
    """A random study: patients with 1-2 cases of 1-4 frames, a split per patient (empty, train, val or test),
    labels of any class or missing (sometimes one class only), covariates sometimes missing."""
    n = draw(st.integers(2, 10))
    one_class = draw(st.booleans())
    rows, cases = [], []
    for p in range(n):
        split = draw(SPLITS)
        for c in range(draw(st.integers(1, 2))):
            g = f"P{p}C{c}"
            label = "F0" if one_class else draw(st.sampled_from(["F0", "F1", "F2", ""]))
            rows += frames(g, draw(st.integers(1, 4)), split, label)
            rt = draw(st.sampled_from(["yes", "no", ""]))
            cases.append({"group": g, "patient": f"P{p}", "rt": rt})
    return rows, cases


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(study=manifests(), folds=st.sampled_from([None, 2, 3]), val_fraction=st.sampled_from([0.0, 0.3]))
def test_every_fold_of_every_configuration_is_disjoint_by_patient(tmp_path, study, folds, val_fraction):
    rows, cases = study
    m = write_manifest(tmp_path / "study" / "m.csv", rows, cases)
    src = source(m, cases="cases.csv")
    seen_held: set[str] = set()
    for fold in range(folds or 1):
        try:
            train, val, held = training_splits(
                [src], [], heads=HEADS, covariates=["rt"], val_fraction=val_fraction, split_seed=1,
                cv_folds=folds, cv_fold=fold, cv_stratify="fibrosis",
            )  # fmt: skip
        except UserError as e:  # too few patients for k folds or for a validation carve: said, never leaked
            assert "fold" in str(e) or "group" in str(e) or "empty" in str(e) or "no rows" in str(e)
            return
        parts = {"train": train, "val": val, "held": held}
        units = {k: {unit_of(r) for r in v} for k, v in parts.items()}
        assert not units["train"] & units["val"] and not units["train"] & units["held"]
        assert not units["val"] & units["held"]
        assert all(r.split != "test" for r in train + val + held)  # test rows never in development
        assert not seen_held & units["held"]  # a patient is held out by one fold only
        seen_held |= units["held"]
    if folds:
        dev = {f"m/P{int(r['group'][1:].split('C')[0])}" for r in rows if r["split"] != "test"}
        assert seen_held == dev  # every development patient is held out exactly once
