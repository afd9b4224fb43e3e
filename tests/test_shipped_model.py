"""The shipped default model: a fast smoke test on the bundled samples (CI), and a slow test of its published
test-set scores on the public data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from data.io import read_mask
from metrics.basic import dice_iou_per_image
from tests.conftest import ROOT, needs_shared_data, run_script

SHIPPED = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"
needs_model = pytest.mark.skipif(
    not SHIPPED.with_suffix(".safetensors").is_file(), reason=f"shipped model not found: {SHIPPED}.safetensors"
)


def _mean_dice(pred_dir: Path, gt_dir: Path) -> tuple[float, int]:
    import torch

    scores = []
    for gt in sorted(gt_dir.iterdir()):
        pred = read_mask(pred_dir / f"{gt.stem}.png")
        d, _ = dice_iou_per_image(torch.from_numpy(pred[None] > 0), torch.from_numpy(read_mask(gt)[None] > 0))
        scores.append(float(d[0]))
    return float(np.mean(scores)), len(scores)


@needs_model
def test_main_job_on_bundled_clip_matches_ground_truth(tmp_path):
    """`python infer.py` with no input: the shipped model on the bundled ClinicDB clip (never trained on)."""
    out = tmp_path / "out"
    p = run_script("infer.py", f"out_dir={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    dice, n = _mean_dice(out / "masks", ROOT / "samples" / "clinicdb_seq6_masks")
    assert n == 23 and dice >= 0.7, f"mean Dice {dice:.3f} on the bundled clip"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_with_lesion"] >= 20 and set(summary["heads"]) == {"small_sessile"}
    assert summary["heads"]["small_sessile"]["clinically_validated"] is True
    assert (out / "report.html").is_file() and (out / "clinicdb_seq6_overlay.mp4").is_file()
    html = (out / "report.html").read_text()
    # the validated proxy head is reported (an estimate or "insufficient evidence"); fibrosis and lift are not
    assert "<td>small_sessile</td>" in html and "validation AUROC" in html
    assert html.count("not available: no validated model") == 2


@needs_model
def test_shipped_model_on_bundled_kvasir_images(tmp_path):
    out = tmp_path / "out"
    p = run_script("infer.py", f"input={ROOT / 'samples' / 'images'}", f"out_dir={out}")
    assert p.returncode == 0, p.stderr[-2000:]
    dice, n = _mean_dice(out / "masks", ROOT / "samples" / "masks")
    assert n == 4 and dice >= 0.7, f"mean Dice {dice:.3f} on the bundled Kvasir test images"
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    est = [r["heads"]["small_sessile"] for r in rows]
    assert all(e["clinically_validated"] and e["estimate"] in ("other", "small_sessile") for e in est)
    assert all(abs(sum(e["probs"].values()) - 1) < 1e-3 for e in est)


@needs_model
def test_shipped_card_says_research_use_and_what_its_one_head_is():
    from models.card import ModelCard
    from models.checkpoint import read_card
    from models.gate import refusals, shown

    card = json.loads(SHIPPED.with_suffix(".json").read_text())
    parsed = read_card(SHIPPED)  # also checks the signed-off entry against the digests in the weights' metadata
    assert parsed.to_dict()["heads"] == ModelCard.from_dict(card).to_dict()["heads"]
    assert "Research use only" in card["intended_use"] and set(card["heads"]) == {"small_sessile"}
    assert "research and education" in card["licence"]["weights"]
    assert SHIPPED.with_suffix(".safetensors").stat().st_size < 25e6
    head = card["heads"]["small_sessile"]
    assert shown(parsed, "small_sessile") and head["label_source"] == "real"
    ev = head["evidence"]  # the display gate's evidence: the locked Kvasir test list, signed off
    assert ev["source"] == "test" and ev["ci95"][0] > 0.8 and min(ev["cases_per_class"].values()) >= 20
    assert head["signoff"]["by"] and head["label_declaration"]["by"]
    assert "Kvasir-Sessile" in head["label_definition"] and head["temperature"] > 0
    assert head["counts"]["train"]["small_sessile"] > 100 and head["counts"]["val"]["small_sessile"] > 10
    test = head["test"]["kvasir"]["frame"]
    assert test["n"] == 100 and test["auroc"] >= 0.85 and test["ci95"]["auroc"][0] < test["auroc"]
    assert test["auroc"] > head["test"]["kvasir"]["area_baseline"]["auroc"]
    assert not shown(parsed, "fibrosis") and not shown(parsed, "lift")
    assert refusals(parsed, "fibrosis") == ["not available: no validated model"]
    md = (SHIPPED.parent / "MODEL_CARD.md").read_text()
    assert "`small_sessile`" in md and "not available: no validated model" in md


@pytest.mark.slow
@needs_model
@needs_shared_data()
def test_shipped_model_scores_on_the_standard_test_sets(tmp_path):
    p = run_script("evaluate.py", "sets=[kvasir,clinicdb]", f"out_dir={tmp_path}", "gallery=0", timeout=1200)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads((tmp_path / "metrics.json").read_text())["results"]
    for name in ("kvasir", "clinicdb"):
        assert res[name]["segmentation"]["dice@0.5"] >= 0.86, (name, res[name]["segmentation"]["dice@0.5"])
    head = res["kvasir"]["heads"]["small_sessile"]
    assert head["frame"]["auroc"] >= 0.85 and head["frame"]["auroc"] > head["area_baseline"]["auroc"]
    assert "area-only baseline" in p.stdout and "**small_sessile**" in p.stdout
