"""The annotation fixtures and the bad exports that tests/test_annotation_formats.py and tests/test_convert.py share.

The fixtures (tests/fixtures/annotations/, written by make_fixtures.py there) export the same lesions in each
format, so one table of expected masks (EXPECTED) checks every reader pixel for pixel; BAD lists broken exports with
what the one-line message must name.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np

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


def coco_with(tmp: Path, mutate=None, text: str | None = None, **kw) -> dict:
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
    return coco_with(tmp, images=tmp / "frames")


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
        lambda t: coco_with(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(3, float("nan"))),
        ["bad.json", "P01_0001.png", "outside the 64x48 image"],
    ),
    "far vertex": (
        lambda t: coco_with(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(2, 1e8)),
        ["bad.json", "outside"],
    ),
    "NaN RLE size": (
        lambda t: coco_with(t, lambda d: d["annotations"][2]["segmentation"].update(size=[float("nan"), 64])),
        ["bad.json", "does not match"],
    ),
    "huge integer vertex": (
        lambda t: coco_with(t, lambda d: d["annotations"][0]["segmentation"][0].__setitem__(2, 2**70)),
        ["bad.json", "outside"],
    ),
    "list as id": (
        lambda t: coco_with(t, lambda d: d["images"][0].update(id=[1])),
        ["bad.json", "'id' has the wrong type"],
    ),
    "brush count": (  # a header claiming 2**32 - 1 values is refused before anything is allocated
        lambda t: _ls(t, lambda ts: ts[0]["annotations"][0]["result"][0]["value"].update(rle=[255, 255, 255, 255, 0])),
        ["export.json", "task 1", "4294967295 values"],
    ),
    "category id twice": (
        lambda t: coco_with(t, lambda d: d["categories"].append({**d["categories"][0], "name": "other"})),
        ["bad.json", "used twice"],
    ),
    "zip member named": (_zipped_bad_coco, ["export.zip: annotations/instances_default.json", "image_id 99"]),
    "malformed JSON": (lambda t: coco_with(t, text='{"images": ['), ["bad.json", "not valid JSON"]),
    "missing key": (lambda t: coco_with(t, lambda d: d["images"][0].pop("file_name")), ["bad.json", "'file_name'"]),
    "unknown image": (
        lambda t: coco_with(t, lambda d: d["annotations"][0].update(image_id=99)),
        ["bad.json", "image_id 99"],
    ),
    "2-point polygon": (
        lambda t: coco_with(t, lambda d: d["annotations"][0].update(segmentation=[[10, 10, 30, 10]])),
        ["bad.json", "P01_0001.png", "at least 3"],
    ),
    "RLE size": (
        lambda t: coco_with(t, lambda d: d["annotations"][2]["segmentation"].update(size=[40, 64])),
        ["bad.json", "does not match"],
    ),
    "RLE runs": (
        lambda t: coco_with(t, lambda d: d["annotations"][2]["segmentation"]["counts"].append(5)),
        ["bad.json", "cover"],
    ),
    "declared size": (lambda t: coco_with(t, lambda d: d["images"][0].update(width=80)), ["bad.json", "80x48"]),
    "traversal": (
        lambda t: coco_with(t, lambda d: d["images"][0].update(file_name="../../x.png")),
        ["bad.json", "../../x.png", "relative path"],
    ),
    "absolute path": (
        lambda t: coco_with(t, lambda d: d["images"][0].update(file_name="/etc/passwd")),
        ["bad.json", "/etc/passwd"],
    ),
    "image missing": (
        lambda t: coco_with(t, lambda d: d["images"][0].update(file_name="nope.png")),
        ["bad.json", "nope.png", "--images"],
    ),
    "unreadable image": (_unreadable, ["P01_0001.png", "cannot read image"]),
    "unknown format": (lambda t: coco_with(t, fmt="yolo"), ["unknown format 'yolo'"]),
    "unknown category": (lambda t: coco_with(t, lesion=["tumour"]), ["bad.json", "tumour", "polyp"]),
    "unknown attribute": (lambda t: coco_with(t, labels={"lift": "lift_grade"}), ["bad.json", "lift_grade"]),
    "frame conflict": (
        lambda t: coco_with(t, lambda d: d["annotations"][4].update(attributes={"fibrosis": "F1"})),
        ["bad.json", "P02_0001.png", "conflicting"],
    ),
    "case conflict": (
        lambda t: coco_with(t, lambda d: d["annotations"][2].update(attributes={"fibrosis": "F2"}), case_labels=True),
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
        lambda t: coco_with(t, lambda d: d["images"][1].update(split="training"), split_column="split"),
        ["bad.json", "P01_0002.png", "'training'", "--split-column split", "train, val, test or empty"],
    ),
    "group in two splits": (
        lambda t: coco_with(t, lambda d: d["images"][3].update(split="train"), split_column="split"),
        ["bad.json", "group 'P02'", "split 'test' (images/P02_0001.png)", "'train' (images/P02_0002.jpg)"],
    ),
    "group in test and development": (  # empty is development data (cross-validation): a leak into test too
        lambda t: coco_with(t, lambda d: d["images"][0].pop("split"), split_column="split"),
        ["bad.json", "group 'P01'", "split empty (development data) (images/P01_0001.png)", "'train' (images/P01_"],
    ),
    "split field nowhere": (lambda t: coco_with(t, split_column="fold"), ["bad.json", "'fold'", "--split-column"]),
    "covariate case conflict": (
        lambda t: coco_with(t, lambda d: d["images"][1]["attributes"].update(rt="no"), covariates=COVARIATES),
        ["bad.json", "case 'P01'", "'prior_radiotherapy' values 'yes' (images/P01_0001.png)", "'no'", "P01_0002.png"],
    ),
    "covariate frame conflict": (
        lambda t: coco_with(t, lambda d: d["annotations"][4]["attributes"].update(distance=9), covariates=COVARIATES),
        ["bad.json", "P02_0001.png", "conflicting 'distance'", "--covariate distance_av_cm=distance"],
    ),
    "covariate not a value": (
        lambda t: coco_with(t, lambda d: d["images"][0]["attributes"].update(rt="maybe"), covariates=COVARIATES),
        ["bad.json", "P01_0001.png", "'maybe'", "--covariate prior_radiotherapy=rt", "yes/no"],
    ),
    "covariate attribute nowhere": (
        lambda t: coco_with(t, covariates={"prior_radiotherapy": "radiotherapy"}),
        ["bad.json", "'radiotherapy'", "--covariate"],
    ),
    "covariate named as a head": (lambda t: coco_with(t, covariates={"fibrosis": "rt"}), ["--covariate fibrosis=rt"]),
    "covariate named split": (lambda t: coco_with(t, covariates={"split": "rt"}), ["--covariate split=rt", "split"]),
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
