"""data.convert, the command: case labels, splits and covariates into manifest.csv and cases.csv (read back by the
training code and data.check), an existing output folder, and the command line's summary and exit codes. The readers
of each format: tests/test_annotation_formats.py."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import UserError
from data.check import main as check_main
from data.convert import convert, main
from data.datasets import manifest_records
from tests.conftest import run_script
from tests.convert_cases import COCO, COVARIATES, FIX, HEADS, IMAGES, assert_dataset, coco_with


def test_case_labels_load_and_pass_data_check(tmp_path, capsys):
    out = tmp_path / "study"
    s = convert(
        **COCO, out=out, group=r"^(P\d+)_", labels={"fibrosis": "fibrosis", "lift": "lift_quality"}, case_labels=True
    )
    assert (out / "cases.csv").read_text().splitlines() == [
        "group,fibrosis,lift",
        "P01,F1,adequate",
        "P02,F2,non-lifting",
    ]
    assert (out / "manifest.csv").read_text().splitlines()[0] == "image,mask,group"
    assert s["labels"]["fibrosis"] == {"F1": 1, "F2": 1}  # counted per case
    recs = manifest_records(out / "manifest.csv", heads=HEADS, cases="cases.csv")
    assert [r.labels["fibrosis"] for r in recs] == [1, 1, 2, 2]  # P02_0002 takes its case's label
    assert (
        check_main(
            [
                "--manifest",
                str(out / "manifest.csv"),
                "--cases",
                "cases.csv",
                "--heads",
                "fibrosis=F0,F1,F2",
                "lift=adequate,partial,non-lifting",
            ]
        )
        == 0
    ), capsys.readouterr().err


def test_split_column_and_covariates_to_manifest_and_cases(tmp_path, capsys):
    """Splits from an image field, per frame and per case; covariates from image and object attributes, one value
    per case (a frame without one takes its case's); training code and data.check read both."""
    out = tmp_path / "study"
    s = convert(
        **COCO,
        out=out,
        group_column="patient_id",
        split_column="split",
        labels={"fibrosis": "fibrosis", "lift": "lift_quality"},
        case_labels=True,
        covariates=COVARIATES,
    )
    assert (out / "manifest.csv").read_text().splitlines() == [
        "image,mask,group,split",
        "images/P01_0001.png,masks/P01_0001.png,P01,train",
        "images/P01_0002.png,masks/P01_0002.png,P01,train",
        "images/P02_0001.png,masks/P02_0001.png,P02,test",
        "images/P02_0002.jpg,masks/P02_0002.png,P02,test",
    ]
    assert (out / "cases.csv").read_text().splitlines() == [
        "group,split,fibrosis,lift,prior_radiotherapy,weeks_since_rt,distance_av_cm",
        "P01,train,F1,adequate,yes,11,3.5",  # rt_weeks on one frame, distance on one object: the case's values
        "P02,test,F2,non-lifting,no,,8.0",  # P02_0002 has no rt: unknown, not a conflict
    ]
    assert s["splits"] == {"train": 1, "test": 1}
    assert s["covariates_known"] == {"prior_radiotherapy": 2, "weeks_since_rt": 1, "distance_av_cm": 2}
    recs = manifest_records(out / "manifest.csv", heads=HEADS, split="test")
    assert [(r.group, r.split) for r in recs] == [("P02", "test"), ("P02", "test")]
    recs = manifest_records(out / "manifest.csv", heads=HEADS, cases="cases.csv", covariates=list(COVARIATES))
    assert [r.covariates["prior_radiotherapy"] for r in recs] == [1.0, 1.0, 0.0, 0.0]
    assert recs[0].covariates["weeks_since_rt"] == 11.0 and np.isnan(recs[2].covariates["weeks_since_rt"])
    assert [r.covariates["distance_av_cm"] for r in recs] == [3.5, 3.5, 8.0, 8.0]
    args = ["--manifest", str(out / "manifest.csv"), "--cases", "cases.csv", "--covariates", *COVARIATES]
    assert check_main([*args, "--heads", "fibrosis=F0,F1,F2", "lift=adequate,partial,non-lifting"]) == 0, (
        capsys.readouterr().err
    )


def test_labelstudio_split_and_covariates_without_case_labels(tmp_path):
    """Label Studio: the split from a data field, a covariate from a whole-image choice; --covariate alone writes
    cases.csv (group, split, covariates) and leaves the labels in the manifest."""
    out = tmp_path / "ls"
    convert(
        fmt="labelstudio",
        src=FIX / "labelstudio" / "export.json",
        out=out,
        images=IMAGES,
        group_column="patient",
        split_column="split",
        lesion=["polyp"],
        labels={"fibrosis": "fibrosis"},
        covariates={"prior_radiotherapy": "rt"},
    )
    assert (out / "manifest.csv").read_text().splitlines()[0] == "image,mask,group,split,fibrosis"
    recs = manifest_records(out / "manifest.csv", heads=HEADS)
    assert [(r.group, r.split, r.labels["fibrosis"]) for r in recs] == [
        ("P01", "train", 1),
        ("P01", "train", 1),
        ("P02", "test", 2),
        ("P02", "test", -1),
    ]
    assert (out / "cases.csv").read_text().splitlines() == [
        "group,split,prior_radiotherapy",
        "P01,train,yes",
        "P02,test,no",
    ]


def test_existing_output_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        convert(**COCO, out=out)
    assert [p.name for p in tmp_path.iterdir()] == ["out"] and (out / "keep.txt").is_file()
    convert(**COCO, out=out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert_dataset(out)
    with pytest.raises(UserError, match="would delete"):
        convert(**{**COCO, "src": out / "manifest.csv"}, out=out, overwrite=True)


def test_cli(tmp_path):
    """The command line: a summary on success; on bad input one stderr line, exit code 2, nothing written."""
    out = tmp_path / "study"
    p = run_script(
        "-m",
        "data.convert",
        "coco",
        str(COCO["src"]),
        "--out",
        str(out),
        "--group",
        r"^(P\d+)_",
        "--lesion",
        "polyp",
        "--label",
        "fibrosis=fibrosis",
        "lift=lift_quality",
        "--case-labels",
    )
    assert p.returncode == 0, p.stderr
    assert "lesion_objects: 4" in p.stdout and "ignored_categories: {'instrument': 1}" in p.stdout
    assert (out / "cases.csv").is_file()
    bad = coco_with(tmp_path, lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]))["src"]
    p = run_script("-m", "data.convert", "coco", str(bad), "--out", str(tmp_path / "bad"), "--images", str(IMAGES))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and p.stderr.startswith("error: ") and "bad.json" in p.stderr
    assert not (tmp_path / "bad").exists()
    # an --out that cannot be created (even by root: /proc takes no folders) is one line and exit 2 as well
    assert main(["coco", str(COCO["src"]), "--out", "/proc/endolift-test/x", "--images", str(IMAGES)]) == 2


def test_cli_split_column_and_covariates(tmp_path, capsys):
    """--split-column and --covariate on the command line; a bad split is one stderr line, exit 2, nothing written."""
    base = ["coco", str(COCO["src"]), "--group-column", "patient_id", "--lesion", "polyp"]
    extra = [
        "--split-column",
        "split",
        "--covariate",
        "prior_radiotherapy=rt",
        "--covariate",
        "distance_av_cm=distance",
    ]
    assert main([*base, "--out", str(tmp_path / "ok"), *extra]) == 0, capsys.readouterr().err
    assert "splits: {'train': 1, 'test': 1}" in capsys.readouterr().out
    assert (tmp_path / "ok" / "cases.csv").read_text().splitlines()[1] == "P01,train,yes,3.5"
    bad = coco_with(tmp_path, lambda d: d["images"][2].update(split="holdout"))["src"]
    out = tmp_path / "new" / "bad"
    assert main(["coco", str(bad), "--out", str(out), "--images", str(IMAGES), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'holdout'" in err and "P02_0001.png" in err, err
    assert not (tmp_path / "new").exists()
    assert main([*base, "--out", str(tmp_path / "dup"), "--covariate", "rt=rt", "rt=rt_weeks"]) == 2
    assert "--covariate 'rt=rt_weeks'" in capsys.readouterr().err
