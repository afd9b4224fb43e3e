"""data.convert's readers: COCO (polygons, RLE, attributes), CVAT segmentation masks (folder and zip) and Label Studio
(brush RLE, polygons, choices) each give the same images and masks, pixel for pixel (tests/convert_cases.py); a
broken export is one line naming the file and writes nothing."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from core.errors import UserError
from data.convert import convert
from data.datasets import load_raw, manifest_records
from data.mask_encodings import ls_rle_decode
from tests.convert_cases import BAD, COCO, FIX, HEADS, IMAGES, assert_dataset
from tests.fixtures.annotations.make_fixtures import expected_mask


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


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(tmp_path, case):
    make, expected = BAD[case]
    kwargs = make(tmp_path)
    with pytest.raises(UserError) as e:
        convert(out=tmp_path / "new" / "out", **kwargs)
    msg = str(e.value)
    assert all(x in msg for x in expected) and "\n" not in msg and ".partial" not in msg, msg
    assert not (tmp_path / "new").exists()  # not even the parent folder it created
