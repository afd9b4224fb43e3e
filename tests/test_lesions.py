"""Lesion-level scoring (metrics/lesions.py) and the reliability score (models/reliability.py) on hand-made masks
with known answers."""

import numpy as np
import pytest

from metrics.lesions import frame_lesion_stats, lesion_recall, lesion_rows
from models.reliability import mask_agreement, soft_confidence, view_agreement


def disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_each_lesion_scored_on_its_own():
    # a large lesion found, a small one (under 2% of the frame) missed: frame Dice stays high, recall shows the miss
    h, w = 200, 200
    big, small = disc(h, w, 60, 60, 40), disc(h, w, 160, 160, 8)
    truth = big | small
    pred = disc(h, w, 62, 60, 40)
    rows = sorted(lesion_rows(pred, truth), key=lambda r: r["area_fraction"])
    assert [r["small"] for r in rows] == [True, False]
    assert rows[0]["found"] is False and rows[0]["iou"] == 0.0
    assert rows[1]["found"] is True and rows[1]["iou"] > 0.9
    stats = frame_lesion_stats(pred, truth)
    assert stats == {
        "lesions": 2,
        "lesions_found": 1,
        "small_lesions": 1,
        "small_found": 0,
    }


def test_found_means_iou_at_least_threshold():
    truth = disc(100, 100, 50, 50, 10)
    loose = disc(100, 100, 50, 50, 17)  # IoU = 100/289 = 0.35: found
    looser = disc(100, 100, 50, 50, 19)  # IoU = 100/361 = 0.28: not found
    assert lesion_rows(loose, truth)[0]["found"] is True
    assert lesion_rows(looser, truth)[0]["found"] is False


def test_annotation_specks_are_not_lesions():
    # JPEG masks carry isolated specks of a few pixels: they must not count as (missed) small lesions
    truth = disc(300, 300, 150, 150, 30)
    truth[5, 5] = truth[5, 6] = True
    assert len(lesion_rows(truth, truth)) == 1


def test_recall_over_a_set():
    per_image = [
        {"lesions": 2, "lesions_found": 1, "small_lesions": 1, "small_found": 0},
        {"lesions": 1, "lesions_found": 1, "small_lesions": 1, "small_found": 1},
        {"lesions": 1, "lesions_found": 1, "small_lesions": 0, "small_found": 0},
    ]
    assert lesion_recall(per_image) == (0.75, 4)
    assert lesion_recall(per_image, small=True) == (0.5, 2)
    assert np.isnan(lesion_recall(per_image[2:], small=True)[0])


def test_views_that_agree_score_one_and_disagreeing_views_score_low():
    a = disc(64, 64, 32, 32, 10).astype(np.float32)
    assert mask_agreement(a, a) == 1.0
    assert mask_agreement(np.zeros_like(a), np.zeros_like(a)) == 1.0  # both see no lesion
    shifted = np.roll(a, 25, axis=1)  # the same size, elsewhere: no overlap
    assert mask_agreement(a, shifted) == 0.0
    assert view_agreement([a, a, shifted]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        view_agreement([a])


def test_soft_confidence_falls_with_fuzzy_outlines():
    crisp = disc(64, 64, 32, 32, 10).astype(np.float32)
    fuzzy = crisp * 0.55 + 0.02
    assert soft_confidence(crisp) == 1.0
    assert soft_confidence(np.zeros((8, 8), np.float32)) == 1.0
    assert 0.5 < soft_confidence(fuzzy) < 0.6


def test_evaluation_rows_and_set_summary_carry_lesion_recall():
    from metrics.segmentation import SegmentationMetrics

    h, w = 200, 200
    truth = disc(h, w, 60, 60, 40) | disc(h, w, 160, 160, 8)
    seg = SegmentationMetrics(boundary=False)
    row = seg.update(disc(h, w, 62, 60, 40).astype(np.float32), truth.astype(np.uint8) * 255, "a")
    assert (row["lesions"], row["lesions_found"], row["small_lesions"], row["small_found"]) == (2, 1, 1, 0)
    seg.update(np.zeros((h, w), np.float32), disc(h, w, 100, 100, 50).astype(np.uint8), "b")  # a missed large one
    out = seg.compute()
    assert out["lesion_recall"] == pytest.approx(1 / 3) and out["n_lesions"] == 3
    assert out["small_lesion_recall"] == 0.0 and out["n_small_lesions"] == 1
