"""Evaluation in its layers (metrics/evaluation.py), each on hand-made arrays with known answers: one image, one
case, one set, the files; then evaluate.py itself: parity with PraNet's published table, the checkpoint mode, and a
few true command-line runs (folder mode, a bad setting exiting 2)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest

from core.errors import UserError
from metrics.evaluation import (
    SetResult,
    pair_prediction_files,
    score_prediction_folder,
    write_run_files,
    write_set_files,
)
from metrics.heads import case_estimates
from metrics.segmentation import image_scores, set_scores
from tests.conftest import ROOT, SHARED_DATA, needs_shared_data, run_script
from tests.test_metrics import square


def u8(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.uint8) * 255


# --- the layers ------------------------------------------------------------------------------------------------


def test_one_image_scores_by_hand():
    """A 20 x 20 square predicted 5 px to the right: 300 of 400 pixels overlap."""
    scored = image_scores(u8(square(left=15)), u8(square()), "shifted")
    row = scored.row
    assert row["name"] == "shifted" and row["dice"] == 0.75 and row["iou"] == pytest.approx(0.6)
    assert row["precision"] == 0.75 and row["recall"] == 0.75 and row["gt_fraction"] == row["pred_fraction"] == 0.25
    assert row["mae"] == pytest.approx(200 / 1600) and row["hd95"] == pytest.approx(5.0)
    # every threshold above 0 keeps the square (Dice 0.75); threshold 0 takes every pixel: 2 * 400 / (1600 + 400)
    assert len(scored.dice_curve) == 256 and set(np.round(scored.dice_curve[:-1], 6)) == {0.75}
    assert scored.dice_curve[-1] == pytest.approx(0.4)
    perfect = image_scores(u8(square()), u8(square()))
    assert perfect.row["dice"] == 1.0 and perfect.weighted_f == pytest.approx(1.0) and perfect.row["hd95"] == 0.0


def test_one_case_is_its_informative_frames_mean_or_abstains():
    def row(case: str, p: float, informative: bool = True) -> dict:
        return {"group": case, "labels": {"x": 0}, "probs": {"x": [p, 1 - p]}, "informative": informative}

    rows = [row("a", 0.8), row("a", 0.6), row("a", 0.7), row("a", 0.1, informative=False), row("b", 0.9)]
    a, b = case_estimates(rows, "x", min_frames=3, min_confidence=0.0)
    assert a["case"] == "a" and not a["abstain"] and a["frames"] == 3 and a["n_rows"] == 4
    assert a["probs"] == pytest.approx([0.7, 0.3]) and a["index"] == 0 and a["label"] == 0
    assert b["abstain"] and b["reason"] == "1 informative frames < 3"


def test_one_set_is_the_mean_of_its_images():
    images = [image_scores(u8(square(left=15)), u8(square())), image_scores(u8(square()), u8(square()))]
    s = set_scores(images, n_resized=1)
    assert s["n_images"] == 2 and s["n_resized"] == 1
    assert s["dice@0.5"] == 0.875 and s["mae"] == pytest.approx(0.0625) and s["hd95"] == pytest.approx(2.5)
    assert s["s_measure"] == pytest.approx(np.mean([i.row["s_measure"] for i in images]))
    assert s["weighted_f"] == pytest.approx(np.mean([i.weighted_f for i in images]))
    # ascending thresholds: 0 takes every pixel (0.4 on both images), every other threshold the mean 0.875
    assert s["dice_curve"][0] == pytest.approx(0.4) and s["dice_curve"][1:] == pytest.approx([0.875] * 255)
    assert s["mean_dice"] == pytest.approx((0.4 + 255 * 0.875) / 256) and s["max_dice"] == pytest.approx(0.875)
    with pytest.raises(ValueError, match="no images"):
        set_scores([])


def test_a_folder_of_maps_is_paired_with_its_masks_by_name(tmp_path, capsys):
    preds, gts = tmp_path / "preds", tmp_path / "masks"
    preds.mkdir()
    gts.mkdir()
    for name in ("a", "b"):
        cv2.imwrite(str(gts / f"{name}.png"), u8(square()))
    cv2.imwrite(str(preds / "a.png"), u8(square(left=15)))
    names, _, _ = pair_prediction_files(preds, gts)
    assert names == ["a"] and "scoring the 1 masks that have a prediction" in capsys.readouterr().out
    (tmp_path / "list.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="b.png has no prediction"):
        pair_prediction_files(preds, gts, tmp_path / "list.txt")
    with pytest.raises(UserError, match="gt_dir is not a folder"):
        pair_prediction_files(preds, tmp_path / "none")
    result = score_prediction_folder(preds, gts, name="mine")
    assert result.segmentation["n_images"] == 1 and result.segmentation["dice@0.5"] == 0.75
    image, truth, prob = result.load("a")  # no images/ beside the masks: the map stands in for the picture
    assert image.shape == (40, 40, 3) and truth.sum() == 400 and prob.dtype == np.uint8


def test_a_set_and_a_run_write_their_files(tmp_path):
    scored = image_scores(u8(square(left=15)), u8(square()), "shifted")
    seg = set_scores([scored])
    load = lambda name: (np.zeros((40, 40, 3), np.uint8), square(), u8(square(left=15)))  # noqa: E731
    write_set_files(tmp_path / "s", "s", SetResult(seg, {}, [scored.row], load), gallery=1)
    with (tmp_path / "s" / "per_image.csv").open() as f:
        (row,) = list(csv.DictReader(f))
    assert row["name"] == "shifted" and float(row["dice"]) == 0.75
    assert "| s | 1 | 0.749 |" in (tmp_path / "s" / "table.md").read_text()
    for figure in ("dice_hist.png", "threshold_dice.png", "worst.png"):
        assert (tmp_path / "s" / figure).is_file()
    text = write_run_files(tmp_path, {"results": {"s": {"segmentation": seg, "heads": {}}}})
    assert text == (tmp_path / "results.md").read_text() and "| s | 1 |" in text
    assert json.loads((tmp_path / "metrics.json").read_text())["results"]["s"]["segmentation"]["dice@0.5"] == 0.75


# --- evaluate.py -----------------------------------------------------------------------------------------------


def evaluate_with(*overrides: str) -> dict:
    """evaluate.py's run on its composed settings, in this process (the command line adds only Hydra's runner)."""
    from hydra import compose, initialize_config_dir

    from evaluate import evaluate

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=list(overrides))
    return evaluate(cfg)


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
    """Folder mode on PraNet's released maps reproduces its paper's Table 1 within 0.005 on every metric."""
    result = score_prediction_folder(
        SHARED_DATA / "pranet-predictions" / dataset,
        SHARED_DATA / masks / "masks",
        gt_list=SHARED_DATA / masks / "splits/pranet_test.txt",
        name=dataset,
    )
    write_set_files(tmp_path / dataset, dataset, result, gallery=0)
    got = result.segmentation
    for key, ref in PUBLISHED[dataset].items():
        assert abs(got[key] - ref) <= 0.005, f"{dataset} {key}: {got[key]:.4f} vs published {ref}"
    assert (tmp_path / dataset / "per_image.csv").is_file() and (tmp_path / dataset / "threshold_dice.png").is_file()


def test_evaluate_folder_mode_on_the_command_line(tmp_path):
    """Two true runs: a bad setting is one line and exit code 2; a good one writes every file."""
    preds, gts = tmp_path / "preds", tmp_path / "gts"
    preds.mkdir()
    gts.mkdir()
    p = run_script("evaluate.py", f"pred_dir={preds}", f"gt_dir={gts}", f"out_dir={tmp_path / 'o'}")
    assert p.returncode == 2 and "no masks in gt_dir" in p.stderr and "Traceback" not in p.stderr
    for name in ("a", "b"):
        cv2.imwrite(str(gts / f"{name}.png"), u8(square()))
    cv2.imwrite(str(preds / "a.png"), u8(square()))
    p = run_script("evaluate.py", f"pred_dir={preds}", f"gt_dir={gts}", f"out_dir={tmp_path / 'o'}", "gallery=2")
    assert p.returncode == 0 and "1 masks" in p.stdout
    got = json.loads((tmp_path / "o" / "metrics.json").read_text())["results"]["predictions"]["segmentation"]
    assert got["n_images"] == 1 and got["dice@0.5"] == 1.0
    assert (tmp_path / "o" / "predictions" / "worst.png").is_file()


def test_evaluate_checkpoint_mode_scores_heads(tmp_path, tiny_checkpoint):
    # a second test set (the same frames again) checks that each set is read with the card's head classes
    evaluate_with(
        f"checkpoint={tiny_checkpoint}",
        "data=synthetic",
        f"paths.cache_dir={tmp_path}",
        f"out_dir={tmp_path / 'o'}",
        "+data.test_sets.again=${data.test_sets.synthetic}",
    )
    doc = json.loads((tmp_path / "o" / "metrics.json").read_text())
    # the default profile with another checkpoint: its ensemble member (the shipped model's partner) did not run,
    # and metrics.json's settings say so
    assert doc["config"]["ensemble"] is None and doc["checkpoint"]["ensemble"] == []
    assert doc["checkpoint"]["tta"] is True and doc["checkpoint"]["tta_views"] == "h"
    results = doc["results"]
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
    with pytest.raises(UserError) as e:
        evaluate_with(*common, f"out_dir={out}", "+data.test_sets.gone=[{kind:folder,name:gone,root:/nonexistent/el}]")
    assert "image folder not found: /nonexistent/el/images" in str(e.value)
    assert "ENDOLIFT_DATA" in str(e.value) and not (out / "synthetic").exists() and not (out / "metrics.json").exists()
    evaluate_with(*common, f"out_dir={out}", "sets=synthetic")  # not ['s', 'y', ...]
    assert list(json.loads((out / "metrics.json").read_text())["results"]) == ["synthetic"]
