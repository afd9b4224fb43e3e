"""data.convert: COCO, CVAT segmentation-mask and Label Studio exports -> images/, masks/, manifest.csv, cases.csv.

The fixtures (tests/fixtures/annotations/, written by make_fixtures.py there) export the same lesions in each
format, so one table of expected masks checks every reader pixel for pixel.
(Over 350 lines on purpose: every format's reader checked against that one table.)
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import UserError
from data.check import main as check_main
from data.convert import convert, main
from data.datasets import load_raw, manifest_records
from data.mask_encodings import ls_rle_decode
from tests.conftest import run_script
from tests.fixtures.annotations.make_fixtures import EXPECTED, expected_mask

FIX = Path(__file__).resolve().parent / "fixtures" / "annotations"
IMAGES = FIX / "images"
HEADS = {"fibrosis": ["F0", "F1", "F2"], "lift": ["adequate", "partial", "non-lifting"]}
COCO = {"fmt": "coco", "src": FIX / "coco" / "instances.json", "lesion": ["polyp"]}
COVARIATES = {"prior_radiotherapy": "rt", "weeks_since_rt": "rt_weeks", "distance_av_cm": "distance"}


def assert_dataset(out: Path) -> None:
    """Every expected frame is there, copied byte for byte, with its mask exact (uint8, one channel, 0/255)."""
    for name in EXPECTED:
        assert (out / "images" / name).read_bytes() == (IMAGES / name).read_bytes()
        mask = cv2.imread(str(out / "masks" / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.dtype == np.uint8 and mask.ndim == 2
        np.testing.assert_array_equal(mask, expected_mask(name), err_msg=name)
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_coco_polygons_rle_attributes_and_groups(tmp_path):
    out = tmp_path / "coco"
    s = convert(**COCO, out=out, group_column="patient_id", labels={"fibrosis": "fibrosis", "lift": "lift_quality"})
    assert_dataset(out)
    assert (s["images"], s["empty_masks"], s["lesion_objects"], s["groups"]) == (4, 1, 4, 2)
    assert s["ignored_categories"] == {"instrument": 1}
    assert s["labels"] == {
        "fibrosis": {"F1": 2, "F2": 1, "unknown": 1},
        "lift": {"adequate": 2, "non-lifting": 1, "unknown": 1},
    }
    assert any("no annotated object" in w for w in s["warnings"])  # P02_0002: listed, nothing drawn
    recs = manifest_records(out / "manifest.csv", heads=HEADS)
    assert [r.group for r in recs] == ["P01", "P01", "P02", "P02"]
    assert [r.labels["fibrosis"] for r in recs] == [1, 1, 2, -1]  # annotation-level attribute
    assert [r.labels["lift"] for r in recs] == [0, 0, 2, -1]  # image-level attribute
    np.testing.assert_array_equal(load_raw(recs[2])["mask"], expected_mask("P02_0001.png") // 255)


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


def test_cvat_mask_folder_and_zip(tmp_path):
    src = FIX / "cvat_mask"
    s = convert(fmt="cvat-mask", src=src, out=tmp_path / "folder", images=IMAGES, lesion=["polyp"])
    assert_dataset(tmp_path / "folder")
    assert (s["lesion_objects"], s["groups"], s["ignored_categories"]) == (4, 4, {"instrument": 1})
    assert any("each image is its own group" in w for w in s["warnings"])
    archive = tmp_path / "task.zip"  # as CVAT downloads it: the export's files at the top
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(src.rglob("*")):
            zf.write(p, p.relative_to(src).as_posix())
    s = convert(fmt="cvat-mask", src=archive, out=tmp_path / "zip", images=IMAGES, lesion=["polyp"], group=r"^(P\d+)_")
    assert_dataset(tmp_path / "zip")
    assert s["groups"] == 2 and not (tmp_path / "zip" / ".export").exists()


def test_labelstudio_brush_polygon_and_choices(tmp_path):
    out = tmp_path / "ls"
    s = convert(
        fmt="labelstudio",
        src=FIX / "labelstudio" / "export.json",
        out=out,
        images=IMAGES,
        group_column="patient",
        lesion=["polyp"],
        labels={"fibrosis": "fibrosis"},
    )
    assert_dataset(out)  # task 5 (no annotation) left out; cancelled annotations and predictions ignored
    assert (s["images"], s["lesion_objects"], s["ignored_categories"]) == (4, 3, {"instrument": 1})
    assert any("no submitted annotation" in w for w in s["warnings"])
    recs = manifest_records(out / "manifest.csv", heads=HEADS)
    assert [(r.group, r.labels["fibrosis"]) for r in recs] == [("P01", 1), ("P01", 1), ("P02", 2), ("P02", -1)]


def test_labelstudio_rle_matches_label_studios_own_vector():
    """The example in label-studio-converter's tests (test_brush.py: test_rle_encoding), decoded."""
    rle = [0, 0, 0, 18, 57, 27, 252, 96, 32, 1, 0, 6, 0, 40, 0, 192, 3, 128, 17, 56, 32]
    assert ls_rle_decode(rle).tolist() == [1, 1, 1, 1, 2, 3, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4, 4, 4]


def _coco(tmp: Path, mutate=None, text: str | None = None, **kw) -> dict:
    data = json.loads(COCO["src"].read_text())
    if mutate:
        mutate(data)
    (tmp / "bad.json").write_text(json.dumps(data) if text is None else text)
    return {
        **COCO,
        "src": tmp / "bad.json",
        "images": IMAGES,
        "group_column": "patient_id",
        "labels": {"fibrosis": "fibrosis"},
    } | kw


def _ls(tmp: Path, mutate) -> dict:
    tasks = json.loads((FIX / "labelstudio" / "export.json").read_text())
    mutate(tasks)
    (tmp / "export.json").write_text(json.dumps(tasks))
    return {"fmt": "labelstudio", "src": tmp / "export.json", "images": IMAGES}


def _unreadable(tmp: Path) -> dict:
    shutil.copytree(IMAGES, tmp / "frames")
    (tmp / "frames" / "P01_0001.png").write_bytes(b"not a png")
    return _coco(tmp, images=tmp / "frames")


def _stray_colour(tmp: Path) -> dict:
    shutil.copytree(FIX / "cvat_mask", tmp / "cvat")
    path = tmp / "cvat" / "SegmentationClass" / "P01_0001.png"
    img = cv2.imread(str(path))
    img[0, 0] = (3, 2, 1)  # a colour no label has, as a JPEG re-save or a resize would make
    cv2.imwrite(str(path), img)
    return {"fmt": "cvat-mask", "src": tmp / "cvat", "images": IMAGES}


def _zip_slip(tmp: Path) -> dict:
    with zipfile.ZipFile(tmp / "evil.zip", "w") as zf:
        zf.writestr("../evil.txt", "x")
    return {"fmt": "cvat-mask", "src": tmp / "evil.zip", "images": IMAGES}


def _zipped_bad_coco(tmp: Path) -> dict:
    data = json.loads(COCO["src"].read_text())
    data["annotations"][0]["image_id"] = 99
    with zipfile.ZipFile(tmp / "export.zip", "w") as zf:
        zf.writestr("annotations/instances_default.json", json.dumps(data))
    return {**COCO, "src": tmp / "export.zip", "images": IMAGES}


BAD = {  # case -> (arguments made in tmp, what the one-line message must say)
    "NaN vertex": (  # pycocotools would allocate without bound (the process is killed) or crash on these
        lambda t: _coco(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(3, float("nan"))),
        ["bad.json", "P01_0001.png", "outside the 64x48 image"],
    ),
    "far vertex": (
        lambda t: _coco(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(2, 1e8)),
        ["bad.json", "outside"],
    ),
    "NaN RLE size": (
        lambda t: _coco(t, lambda d: d["annotations"][2]["segmentation"].update(size=[float("nan"), 64])),
        ["bad.json", "does not match"],
    ),
    "huge integer vertex": (
        lambda t: _coco(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(2, 2**70)),
        ["bad.json", "outside"],
    ),
    "list as id": (
        lambda t: _coco(t, lambda d: d["images"][0].update(id=[1])),
        ["bad.json", "'id' has the wrong type"],
    ),
    "brush count": (  # a header claiming 2**32 - 1 values is refused before anything is allocated
        lambda t: _ls(t, lambda ts: ts[0]["annotations"][0]["result"][0]["value"].update(rle=[255, 255, 255, 255, 0])),
        ["export.json", "task 1", "4294967295 values"],
    ),
    "category id twice": (
        lambda t: _coco(t, lambda d: d["categories"].append({**d["categories"][0], "name": "other"})),
        ["bad.json", "used twice"],
    ),
    "zip member named": (_zipped_bad_coco, ["export.zip: annotations/instances_default.json", "image_id 99"]),
    "malformed JSON": (lambda t: _coco(t, text='{"images": ['), ["bad.json", "not valid JSON"]),
    "missing key": (lambda t: _coco(t, lambda d: d["images"][0].pop("file_name")), ["bad.json", "'file_name'"]),
    "unknown image": (
        lambda t: _coco(t, lambda d: d["annotations"][0].update(image_id=99)),
        ["bad.json", "image_id 99"],
    ),
    "2-point polygon": (
        lambda t: _coco(t, lambda d: d["annotations"][0].update(segmentation=[[10, 10, 30, 10]])),
        ["bad.json", "P01_0001.png", "at least 3"],
    ),
    "RLE size": (
        lambda t: _coco(t, lambda d: d["annotations"][2]["segmentation"].update(size=[40, 64])),
        ["bad.json", "does not match"],
    ),
    "RLE runs": (
        lambda t: _coco(t, lambda d: d["annotations"][2]["segmentation"]["counts"].append(5)),
        ["bad.json", "cover"],
    ),
    "declared size": (lambda t: _coco(t, lambda d: d["images"][0].update(width=80)), ["bad.json", "80x48"]),
    "traversal": (
        lambda t: _coco(t, lambda d: d["images"][0].update(file_name="../../x.png")),
        ["bad.json", "../../x.png", "relative path"],
    ),
    "absolute path": (
        lambda t: _coco(t, lambda d: d["images"][0].update(file_name="/etc/passwd")),
        ["bad.json", "/etc/passwd"],
    ),
    "image missing": (
        lambda t: _coco(t, lambda d: d["images"][0].update(file_name="nope.png")),
        ["bad.json", "nope.png", "--images"],
    ),
    "unreadable image": (_unreadable, ["P01_0001.png", "cannot read image"]),
    "unknown format": (lambda t: _coco(t, fmt="yolo"), ["unknown format 'yolo'"]),
    "unknown category": (lambda t: _coco(t, lesion=["tumour"]), ["bad.json", "tumour", "polyp"]),
    "unknown attribute": (lambda t: _coco(t, labels={"lift": "lift_grade"}), ["bad.json", "lift_grade"]),
    "frame conflict": (
        lambda t: _coco(t, lambda d: d["annotations"][4].update(attributes={"fibrosis": "F1"})),
        ["bad.json", "P02_0001.png", "conflicting"],
    ),
    "case conflict": (
        lambda t: _coco(t, lambda d: d["annotations"][2].update(attributes={"fibrosis": "F2"}), case_labels=True),
        ["bad.json", "case 'P01'", "P01_0002.png"],
    ),
    "brush size": (
        lambda t: _ls(
            t,
            lambda ts: ts[0]["annotations"][0]["result"][0]["value"].update(
                rle=[0, 0, 0, 18, 57, 27, 252, 96, 32, 1, 0, 6, 0, 40, 0, 192, 3, 128, 17, 56, 32]
            ),
        ),
        ["export.json", "task 1", "18 values"],
    ),
    "Label Studio traversal": (
        lambda t: _ls(t, lambda ts: ts[1]["data"].update(image="/data/local-files/?d=..%2F..%2Fsecret.png")),
        ["export.json", "../../secret.png"],
    ),
    "CVAT colour": (_stray_colour, ["P01_0001.png", "(1, 2, 3)", "labelmap.txt"]),
    "split value": (
        lambda t: _coco(t, lambda d: d["images"][1].update(split="training"), split_column="split"),
        ["bad.json", "P01_0002.png", "'training'", "--split-column split", "train, val, test or empty"],
    ),
    "group in two splits": (
        lambda t: _coco(t, lambda d: d["images"][3].update(split="train"), split_column="split"),
        ["bad.json", "group 'P02'", "split 'test' (images/P02_0001.png)", "'train' (images/P02_0002.jpg)"],
    ),
    "group in test and development": (  # empty is development data (cross-validation): a leak into test too
        lambda t: _coco(t, lambda d: d["images"][0].pop("split"), split_column="split"),
        ["bad.json", "group 'P01'", "split empty (development data) (images/P01_0001.png)", "'train' (images/P01_"],
    ),
    "split field nowhere": (lambda t: _coco(t, split_column="fold"), ["bad.json", "'fold'", "--split-column"]),
    "covariate case conflict": (
        lambda t: _coco(t, lambda d: d["images"][1]["attributes"].update(rt="no"), covariates=COVARIATES),
        ["bad.json", "case 'P01'", "'prior_radiotherapy' values 'yes' (images/P01_0001.png)", "'no'", "P01_0002.png"],
    ),
    "covariate frame conflict": (
        lambda t: _coco(t, lambda d: d["annotations"][4]["attributes"].update(distance=9), covariates=COVARIATES),
        ["bad.json", "P02_0001.png", "conflicting 'distance'", "--covariate distance_av_cm=distance"],
    ),
    "covariate not a value": (
        lambda t: _coco(t, lambda d: d["images"][0]["attributes"].update(rt="maybe"), covariates=COVARIATES),
        ["bad.json", "P01_0001.png", "'maybe'", "--covariate prior_radiotherapy=rt", "yes/no"],
    ),
    "covariate attribute nowhere": (
        lambda t: _coco(t, covariates={"prior_radiotherapy": "radiotherapy"}),
        ["bad.json", "'radiotherapy'", "--covariate"],
    ),
    "covariate named as a head": (lambda t: _coco(t, covariates={"fibrosis": "rt"}), ["--covariate fibrosis=rt"]),
    "covariate named split": (lambda t: _coco(t, covariates={"split": "rt"}), ["--covariate split=rt", "split"]),
    "CVAT split column": (
        lambda t: {"fmt": "cvat-mask", "src": FIX / "cvat_mask", "images": IMAGES, "split_column": "split"},
        ["--split-column", "no attributes", "COCO 1.0"],
    ),
    "CVAT covariate": (
        lambda t: {"fmt": "cvat-mask", "src": FIX / "cvat_mask", "images": IMAGES, "covariates": {"rt": "rt"}},
        ["--covariate", "no attributes", "COCO 1.0"],
    ),
    "zip slip": (_zip_slip, ["evil.zip", "../evil.txt"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, case):
    make, expected = BAD[case]
    kwargs = make(tmp_path)
    with pytest.raises(UserError) as e:
        convert(out=tmp_path / "new" / "out", **kwargs)
    msg = str(e.value)
    assert all(x in msg for x in expected) and "\n" not in msg and ".partial" not in msg, msg
    assert not (tmp_path / "new").exists()  # not even the parent folder it created


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
    bad = _coco(tmp_path, lambda d: d["annotations"][0].update(segmentation=[[1, 2, 3, 4]]))["src"]
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
    bad = _coco(tmp_path, lambda d: d["images"][2].update(split="holdout"))["src"]
    out = tmp_path / "new" / "bad"
    assert main(["coco", str(bad), "--out", str(out), "--images", str(IMAGES), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "'holdout'" in err and "P02_0001.png" in err, err
    assert not (tmp_path / "new").exists()
    assert main([*base, "--out", str(tmp_path / "dup"), "--covariate", "rt=rt", "rt=rt_weeks"]) == 2
    assert "--covariate 'rt=rt_weeks'" in capsys.readouterr().err
