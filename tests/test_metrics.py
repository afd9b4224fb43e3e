from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from metrics.basic import dice_iou_per_image
from metrics.boundary import hd95, nsd
from metrics.grading import GradingMetrics
from metrics.segmentation import SegmentationMetrics
from tests.conftest import SHARED_DATA, needs_shared_data, run_script


def square(h=40, w=40, top=10, left=10, size=20):
    m = np.zeros((h, w), bool)
    m[top : top + size, left : left + size] = True
    return m


def test_dice_iou_by_hand():
    import torch

    pred = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    gt = torch.zeros(3, 1, 4, 4, dtype=torch.bool)
    pred[0, 0, :2, :2] = True  # 4 px
    gt[0, 0, :2, :] = True  # 8 px, overlap 4 -> dice 8/12, iou 4/8
    gt[1, 0, 0, 0] = True  # prediction empty, truth not: a miss scores 0
    dice, iou = dice_iou_per_image(pred, gt)  # image 2: both empty scores 1
    assert dice.tolist() == pytest.approx([2 / 3, 0.0, 1.0])
    assert iou.tolist() == pytest.approx([0.5, 0.0, 1.0])


def test_hd95_and_nsd_by_hand():
    gt = square()
    assert hd95(gt, gt) == 0.0 and nsd(gt, gt) == 1.0
    shifted = square(left=13)  # the same square moved 3 px right
    assert hd95(shifted, gt) == pytest.approx(3.0)
    # within 2 px: the top/bottom edges' overlapping parts; the vertical edges are 3 px away
    assert 0.0 < nsd(shifted, gt, tolerance=2) < nsd(shifted, gt, tolerance=3) == 1.0


def test_boundary_rules_for_empty_masks():
    empty = np.zeros((30, 40), bool)
    assert hd95(empty, empty) == 0.0 and nsd(empty, empty) == 1.0
    assert hd95(empty, square(30, 40, 5, 5, 10)) == pytest.approx(50.0)  # the diagonal of 30 x 40
    assert nsd(square(30, 40, 5, 5, 10), empty) == 0.0


def test_segmentation_metrics_perfect_and_miss():
    m = SegmentationMetrics()
    gt = square().astype(np.uint8)
    m.update(gt.astype(np.float32), gt, "perfect")
    m.update(np.zeros((40, 40), np.float32), gt, "miss")  # a miss counts, it is never dropped
    r = m.compute()
    rows = {row["name"]: row for row in m.per_image}
    assert rows["perfect"]["dice"] == 1.0 and rows["perfect"]["mae"] == 0.0 and rows["perfect"]["hd95"] == 0.0
    assert rows["miss"]["dice"] == 0.0 and rows["miss"]["recall"] == 0.0
    assert r["n_images"] == 2 and r["dice@0.5"] == pytest.approx(0.5)
    assert rows["perfect"]["s_measure"] == pytest.approx(1.0, abs=1e-6)
    m.reset()
    with pytest.raises(ValueError):
        m.compute()


def test_resizes_a_map_to_its_mask_and_says_so():
    m = SegmentationMetrics()
    gt = square().astype(np.uint8)
    m.update(cv2.resize(gt * 255, (80, 80), interpolation=cv2.INTER_NEAREST), gt)
    r = m.compute()
    assert r["n_resized"] == 1 and r["dice@0.5"] > 0.95


def test_grading_metrics_by_hand():
    g = GradingMetrics(["F0", "F1", "F2"])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.3, 0.1], [0.3, 0.3, 0.4]])
    g.update(probs, np.array([0, 1, 2, 1, -1]))
    r = g.compute()
    assert r["n"] == 4 and r["n_unknown"] == 1
    assert r["accuracy"] == pytest.approx(0.75)
    assert r["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 1) / 3, abs=1e-6)
    # QWK: observed weighted disagreement 0.25 over expected 1.25 (weights (i-j)^2/4, marginals [1,2,1], [2,1,1])
    assert r["qwk"] == pytest.approx(1 - 0.25 / 1.25, abs=1e-6)
    # ECE over 15 bins: three samples at conf .8 all right (gap .2), one at .6 wrong (gap .6)
    assert r["ece"] == pytest.approx((3 * 0.2 + 0.6) / 4, abs=1e-6)
    assert r["confusion"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert r["auroc"] == pytest.approx(1.0)
    assert sum(b["n"] for b in r["reliability"]) == 4


# PraNet, MICCAI 2020, Table 1 (see ../shared/data/README.md)
PUBLISHED = {
    "kvasir": {
        "mean_dice": 0.898,
        "mean_iou": 0.840,
        "weighted_f": 0.885,
        "s_measure": 0.915,
        "max_e_measure": 0.948,
        "mae": 0.030,
    },
    "cvc-clinicdb": {
        "mean_dice": 0.899,
        "mean_iou": 0.849,
        "weighted_f": 0.896,
        "s_measure": 0.936,
        "max_e_measure": 0.979,
        "mae": 0.009,
    },
}


@needs_shared_data()
@pytest.mark.parametrize("dataset,masks", [("kvasir", "kvasir-seg"), ("cvc-clinicdb", "cvc-clinicdb")])
def test_parity_with_pranet_published_table(dataset, masks, tmp_path):
    """evaluate.py on PraNet's released maps reproduces its paper's Table 1 within 0.005 on every metric."""
    p = run_script(
        "evaluate.py",
        f"pred_dir={SHARED_DATA / 'pranet-predictions' / dataset}",
        f"gt_dir={SHARED_DATA / masks / 'masks'}",
        f"gt_list={SHARED_DATA / masks / 'splits/pranet_test.txt'}",
        f"name={dataset}",
        f"out_dir={tmp_path}",
        "gallery=0",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads((tmp_path / "metrics.json").read_text())["results"][dataset]["segmentation"]
    for key, ref in PUBLISHED[dataset].items():
        assert abs(got[key] - ref) <= 0.005, f"{dataset} {key}: {got[key]:.4f} vs published {ref}"
    assert (tmp_path / dataset / "per_image.csv").is_file() and (tmp_path / dataset / "threshold_dice.png").is_file()


def test_evaluate_folder_mode_errors(tmp_path):
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    preds.mkdir()
    gts.mkdir()
    p = run_script("evaluate.py", f"pred_dir={preds}", f"gt_dir={gts}", f"out_dir={tmp_path / 'o'}")
    assert p.returncode == 2 and "no masks in gt_dir" in p.stderr and "Traceback" not in p.stderr
    for name in ("a", "b"):
        cv2.imwrite(str(gts / f"{name}.png"), (square() * 255).astype(np.uint8))
    cv2.imwrite(str(preds / "a.png"), (square() * 255).astype(np.uint8))
    (tmp_path / "list.txt").write_text("a\nb\n")
    p = run_script(
        "evaluate.py",
        f"pred_dir={preds}",
        f"gt_dir={gts}",
        f"gt_list={tmp_path / 'list.txt'}",
        f"out_dir={tmp_path / 'o'}",
    )
    assert p.returncode == 2 and "b.png has no prediction" in p.stderr
    p = run_script("evaluate.py", f"pred_dir={preds}", f"gt_dir={gts}", f"out_dir={tmp_path / 'o'}", "gallery=2")
    assert p.returncode == 0 and "1 masks" in p.stdout
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"]["predictions"]["segmentation"]
    assert got["n_images"] == 1 and got["dice@0.5"] == 1.0
    assert (tmp_path / "o" / "predictions" / "worst.png").is_file()


def test_evaluate_checkpoint_mode_scores_heads(tmp_path, tiny_checkpoint):
    # a second test set (the same frames again) checks that each set is read with the card's head classes
    p = run_script(
        "evaluate.py",
        f"checkpoint={tiny_checkpoint}",
        "data=synthetic",
        f"paths.cache_dir={tmp_path}",
        f"out_dir={tmp_path / 'o'}",
        "+data.test_sets.again=${data.test_sets.synthetic}",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"]
    assert results["again"]["heads"]["fibrosis"]["frame"]["n"] == 16
    res = results["synthetic"]
    assert res["segmentation"]["n_images"] == 16
    fib = res["heads"]["fibrosis"]
    assert fib["kind"] == "ordinal" and fib["frame"]["n"] == 16 and len(fib["frame"]["confusion"]) == 3
    assert 0.0 <= fib["frame"]["ece"] <= 1.0 and len(fib["frame"]["ci95"]["accuracy"]) == 2
    assert fib["case"]["n_cases"] == 8  # the synthetic set (16 frames, 8 cases): scored per case too
    md = (tmp_path / "o" / "results.md").read_text()
    assert "| synthetic | 16 |" in md and "**fibrosis** (ordinal" in md and "| frame | 16 (8 cases) |" in md
    assert (tmp_path / "o" / "synthetic" / "reliability_fibrosis.png").is_file()


def test_evaluate_finds_every_sets_files_before_scoring_and_takes_one_set_unbracketed(tmp_path, tiny_checkpoint):
    common = [f"checkpoint={tiny_checkpoint}", "data=synthetic", f"paths.cache_dir={tmp_path}"]
    out = tmp_path / "o"
    p = run_script(
        "evaluate.py", *common, f"out_dir={out}", "+data.test_sets.gone=[{kind:folder,name:gone,root:/nonexistent/el}]"
    )
    assert p.returncode == 2 and "image folder not found: /nonexistent/el/images" in p.stderr, p.stderr[-2000:]
    assert "ENDOLIFT_DATA" in p.stderr and not (out / "synthetic").exists() and not (out / "metrics.json").exists()
    p = run_script("evaluate.py", *common, f"out_dir={out}", "sets=synthetic")  # not ['s', 'y', ...]
    assert p.returncode == 0, p.stderr[-2000:]
    assert list(json.loads((out / "metrics.json").read_text())["results"]) == ["synthetic"]
