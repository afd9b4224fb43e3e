from __future__ import annotations

import cv2
import numpy as np
import pytest

from metrics.basic import dice_iou_per_image
from metrics.boundary import hd95, nsd
from metrics.grading import GradingMetrics
from metrics.segmentation import SegmentationMetrics


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
