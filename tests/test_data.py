from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from core.errors import UserError
from data.datasets import RecordDataset, folder_records, load_raw, manifest_records, records_from_sources
from data.io import read_mask
from data.splits import group_split
from data.synthetic import ensure_synthetic_dataset
from data.transforms import build_transform
from tests.conftest import SHARED_DATA, needs_shared_data


def _write(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def make_folder(root, names=("a", "b", "c"), ext=".png", mask_ext=".png", size=(40, 50)):
    for n in names:
        _write(root / "images" / f"{n}{ext}", np.full((*size, 3), 120, np.uint8))
        m = np.zeros(size, np.uint8)
        m[10:20, 10:30] = 255
        _write(root / "masks" / f"{n}{mask_ext}", m)
    return root


@pytest.mark.parametrize("ext", [".jpg", ".png", ".tif", ".bmp"])
def test_folder_pairs_by_stem_across_formats(tmp_path, ext):
    make_folder(tmp_path, ext=ext, mask_ext=".png")
    recs = folder_records(tmp_path, name="x")
    assert [r.id for r in recs] == ["x/a", "x/b", "x/c"]
    assert all(r.mask.stem == r.image.stem for r in recs)
    sample = load_raw(recs[0])
    assert sample["image"].shape == (40, 50, 3) and sample["image"].dtype == np.uint8
    assert set(np.unique(sample["mask"])) == {0, 1}


def test_jpeg_mask_noise_is_binarised_at_128(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    m[13:45, 11:43] = 255
    assert cv2.imwrite(str(tmp_path / "m.jpg"), m, [cv2.IMWRITE_JPEG_QUALITY, 60])
    raw = cv2.imread(str(tmp_path / "m.jpg"), 0)
    assert ((raw > 0) & (raw < 128)).sum() > 50  # the JPEG really carries noise around 0 and 255
    mask = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(mask)) == {0, 1}
    assert abs(int(mask.sum()) - 32 * 32) <= 40  # the square survives, the noise ring does not
    assert int((raw > 0).sum()) > int(mask.sum()) + 50  # binarising at > 0 instead would grow the lesion


def test_missing_mask_names_the_image(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(UserError, match=r"b\.png"):
        folder_records(tmp_path)
    assert len(folder_records(tmp_path, require_masks=False)) == 3


def test_mask_size_mismatch_is_a_clear_error(tmp_path):
    make_folder(tmp_path)
    _write(tmp_path / "masks" / "a.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(UserError, match=r"mask 10x10 does not match image 50x40: .*a\.png"):
        load_raw(folder_records(tmp_path)[0])


def test_empty_and_unreadable_files(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "images" / "a.png").write_bytes(b"")
    (tmp_path / "images" / "b.png").write_bytes(b"not an image")
    recs = folder_records(tmp_path)
    with pytest.raises(UserError, match="empty"):
        load_raw(recs[0])
    with pytest.raises(UserError, match="cannot decode"):
        load_raw(recs[1])


def test_empty_or_missing_folder(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(UserError, match="no images"):
        folder_records(tmp_path)
    with pytest.raises(UserError, match="image folder not found"):
        folder_records(tmp_path / "nope")


def test_split_file_and_groups(tmp_path):
    make_folder(tmp_path, names=("1", "2", "3", "4"))
    (tmp_path / "train.txt").write_text("1\n3\n")
    (tmp_path / "seq.csv").write_text("frame,sequence\n1,A\n2,A\n3,B\n4,B\n")
    recs = folder_records(tmp_path, split_file="train.txt", groups_csv="seq.csv", name="c")
    assert [(r.id, r.group) for r in recs] == [("c/1", "c/A"), ("c/3", "c/B")]
    (tmp_path / "bad.txt").write_text("9\n")
    with pytest.raises(UserError, match="no image"):
        folder_records(tmp_path, split_file="bad.txt")


def test_manifest_csv_and_jsonl_labels(tmp_path):
    make_folder(tmp_path)
    heads = {"fibrosis": ["F0", "F1", "F2"], "lift": ["adequate", "partial", "non-lifting"]}
    rows = [
        {"image": "images/a.png", "mask": "masks/a.png", "fibrosis": "F2", "lift": "", "group": "p1", "split": "train"},
        {"image": "images/b.png", "mask": "", "fibrosis": "1", "lift": "partial", "group": "p2", "split": "test"},
        {"image": "images/c.png", "mask": "masks/c.png", "fibrosis": "", "lift": "0", "group": "p1", "split": "train"},
    ]
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "m.csv").read_bytes())  # Excel's CSV UTF-8
    for name in ("m.csv", "m.jsonl", "excel.csv"):
        recs = manifest_records(tmp_path / name, heads=heads)
        assert [r.labels for r in recs] == [
            {"fibrosis": 2, "lift": -1},
            {"fibrosis": 1, "lift": 1},
            {"fibrosis": -1, "lift": 0},
        ]
        assert recs[1].mask is None and recs[0].group == "p1"
        assert [r.image.name for r in manifest_records(tmp_path / name, heads=heads, split="train")] == [
            "a.png",
            "c.png",
        ]
    rows[0]["fibrosis"] = "F9"
    (tmp_path / "bad.jsonl").write_text(json.dumps(rows[0]))
    with pytest.raises(UserError, match=r"bad\.jsonl:1: label 'F9' for head 'fibrosis'"):
        manifest_records(tmp_path / "bad.jsonl", heads=heads)


def test_unlabelled_frames_get_has_mask_false(tmp_path):
    make_folder(tmp_path)
    (tmp_path / "m.csv").write_text("image,mask\nimages/a.png,\nimages/b.png,masks/b.png\n")
    ds = RecordDataset(manifest_records(tmp_path / "m.csv"), transform=build_transform([], size=32))
    assert not bool(ds[0]["has_mask"]) and float(ds[0]["mask"].sum()) == 0
    assert bool(ds[1]["has_mask"]) and float(ds[1]["mask"].sum()) > 0


def test_group_split_keeps_groups_whole_and_is_deterministic(synthetic_manifest):
    recs = manifest_records(synthetic_manifest)
    train, val = group_split(recs, val_fraction=0.25, seed=0)
    assert len(train) + len(val) == len(recs) and val
    assert not ({r.group for r in train} & {r.group for r in val})
    assert [r.id for r in group_split(recs, val_fraction=0.25, seed=0)[1]] == [r.id for r in val]
    with pytest.raises(UserError, match="val_fraction"):
        group_split(recs, val_fraction=1.5)


def test_train_transform_moves_image_and_mask_together():
    import albumentations as A

    img = np.zeros((96, 96, 3), np.uint8)
    mask = np.zeros((96, 96), np.uint8)
    img[20:50, 30:70] = 255
    mask[20:50, 30:70] = 1
    tf = build_transform(
        [
            A.HorizontalFlip(p=1),
            A.Affine(rotate=(30, 30), scale=(1.2, 1.2), p=1, interpolation=0, mask_interpolation=0),
        ],
        size=64,
        mean=(0, 0, 0),
        std=(1, 1, 1),
    )
    out = tf(image=img, mask=mask)
    bright = out["image"][0].numpy() > 0.5
    m = out["mask"].numpy() > 0
    assert m.sum() > 100
    assert (bright == m).mean() > 0.98  # same pixels moved together


def test_synthetic_dataset_is_written_once_with_labels(tmp_path):
    m = ensure_synthetic_dataset(tmp_path, n=6, size=(32, 48), seed=1)
    mtime = m.stat().st_mtime_ns
    assert ensure_synthetic_dataset(tmp_path, n=6, size=(32, 48), seed=1).stat().st_mtime_ns == mtime
    recs = records_from_sources(
        [{"kind": "synthetic", "root": str(tmp_path), "n": 6, "size": [32, 48], "seed": 1}],
        heads={"fibrosis": ["F0", "F1", "F2"]},
    )
    assert len(recs) == 6 and all(r.labels["fibrosis"] in (0, 1, 2) for r in recs)
    with pytest.raises(UserError, match="unknown kind"):
        records_from_sources([{"kind": "zip"}])


def test_record_dataset_over_folders_and_manifests(tmp_path, synthetic_manifest):
    make_folder(tmp_path / "f")
    ds = RecordDataset(folder_records(tmp_path / "f"), transform=build_transform([], size=32))
    s = ds[1]
    assert tuple(s["image"].shape) == (3, 32, 32) and tuple(s["mask"].shape) == (1, 32, 32) and s["id"] == "b"
    assert ds[len(ds) + 1]["id"] == "b"  # an epoch-encoded index (training.loaders.EpochSampler) reads the same record
    heads = {"fibrosis": ["F0", "F1", "F2"]}
    ms = RecordDataset(
        manifest_records(synthetic_manifest, heads=heads), transform=build_transform([], size=32), heads=list(heads)
    )
    assert len(ms) == 16 and int(ms[0]["labels"]["fibrosis"]) in (0, 1, 2)


def test_dataset_audit_lists_every_problem(tmp_path, capsys):
    from data.check import main

    make_folder(tmp_path)
    assert main(["--root", str(tmp_path)]) == 0
    assert "records: 3" in capsys.readouterr().out
    (tmp_path / "images" / "c.png").write_bytes(b"junk")
    _write(tmp_path / "masks" / "a.png", np.zeros((5, 5), np.uint8))
    assert main(["--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "a.png" in err and "c.png" in err


@needs_shared_data()
def test_layout_check_of_a_downloaded_copy(tmp_path, capsys):
    from data.layout import main as layout_main

    for name in ("kvasir-seg", "cvc-clinicdb"):
        for folder in ("images", "masks"):
            (tmp_path / name / folder).mkdir(parents=True)
            for f in (SHARED_DATA / name / folder).iterdir():
                (tmp_path / name / folder / f.name).symlink_to(f)
    assert layout_main(["--root", str(tmp_path)]) == 2
    assert "sequences.csv is missing" in capsys.readouterr().err
    assert layout_main(["--root", str(tmp_path), "--install"]) == 0  # the shipped lists complete it
    assert (tmp_path / "kvasir-seg" / "splits" / "pranet_test.txt").read_text() == (
        SHARED_DATA / "kvasir-seg" / "splits" / "pranet_test.txt"
    ).read_text()
    next((tmp_path / "cvc-clinicdb" / "images").iterdir()).unlink()
    assert layout_main(["--root", str(tmp_path)]) == 2
    assert "611 images, expected 612" in capsys.readouterr().err


def test_frame_quality_measures_glare_and_blur_inside_the_field_only():
    from data.quality import ANALYSIS_SIZE, frame_quality

    a = ANALYSIS_SIZE
    rng = np.random.default_rng(0)
    image = rng.integers(0, 200, (a, a, 3), dtype=np.uint8)
    image[:44, :] = 255  # glare, half of it outside the field
    area = np.zeros((a, a), np.uint8)
    area[22:, :] = 1
    q = frame_quality(image, area)
    inside = area > 0
    assert q["overexposed_fraction"] == round(22 * a / inside.sum(), 4) and not q["overexposed"]
    lap = cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_32F)
    assert abs(q["sharpness"] - round(float(lap[inside].var()), 1)) <= 0.1 and not q["blurry"]
    blurred = cv2.GaussianBlur(image, (0, 0), 6)
    assert frame_quality(blurred, area)["blurry"]
    image[:, :, 2] = 240  # one channel below 250: not glare
    assert frame_quality(image, area)["overexposed_fraction"] == 0.0
    assert frame_quality(image, np.zeros_like(area)) == {
        "sharpness": 0.0,
        "blurry": True,
        "overexposed_fraction": 0.0,
        "overexposed": False,
    }


def test_a_cached_loader_decodes_once_for_all_its_workers(tmp_path):
    """With the RAM cache and worker processes, the cache is filled before the workers fork (one shared copy, not
    one per worker), and the workers' batches are the single-process batches."""
    import torch

    from training.loaders import make_loader

    make_folder(tmp_path, names=tuple("abcdef"))
    recs = folder_records(tmp_path)
    common = dict(
        augment=[],
        size=32,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        resize="stretch",
        heads=[],
        batch_size=2,
        cache=True,
        train=True,
        seed=3,
    )
    pooled = make_loader(recs, num_workers=2, **common)
    assert len(pooled.dataset._cache) == len(recs)  # filled here, before any worker exists
    single = make_loader(recs, num_workers=0, **common)
    assert len(single.dataset._cache) == 0  # one process: filled as it goes
    for a, b in zip(pooled, single, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
