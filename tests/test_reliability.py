"""The per-frame reliability score end to end: the predictor computes it from its own views of the frame, and the
review writes it to predictions.jsonl, summary.json, the overlay's lines and the report (reliability=true)."""

import json

import numpy as np
import pytest

from data.synthetic import synthetic_frame
from models.predictor import Predictor
from models.reliability import LOW_RELIABILITY, mask_agreement
from review.timeline import reduce_series
from tests.test_infer import infer_in_process


@pytest.fixture()
def frames(tiny_checkpoint):
    rng = np.random.default_rng(3)
    size = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32").size
    return [synthetic_frame(rng, (size, size))["image"] for _ in range(3)]  # at the model's size: no resizing


def test_reliability_is_the_agreement_of_the_frame_and_its_mirror(tiny_checkpoint, frames):
    plain = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    scored = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", reliability=True)
    got = scored.predict(frames, full_size=False)
    base = plain.predict(frames, full_size=False)
    mirrored = plain.predict([np.ascontiguousarray(f[:, ::-1]) for f in frames], full_size=False)
    for g, b, m in zip(got, base, mirrored):
        assert g.reliability == pytest.approx(mask_agreement(b.prob, m.prob[:, ::-1]), abs=1e-6)
        np.testing.assert_allclose(g.prob, b.prob, atol=1e-6)  # scoring does not change the prediction
    assert all(p.reliability is None for p in base)
    # with flip TTA the mirrored pass is shared; the averaged map is TTA's, whatever reliability says
    tta = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", tta=True)
    both = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32", tta=True, reliability=True)
    for a, b, g in zip(tta.predict(frames), both.predict(frames), got):
        np.testing.assert_allclose(a.prob, b.prob, atol=1e-6)
        assert a.reliability is None
        assert b.reliability == pytest.approx(g.reliability, abs=1e-6)  # plain vs mirror, not averaged vs mirror


def test_review_writes_reliability_where_a_reviewer_sees_it(tmp_path, tiny_checkpoint, synthetic_video):
    out = tmp_path / "out"  # the default profile (accurate) scores reliability
    assert infer_in_process(f"input={synthetic_video}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}") == []
    records = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 12
    assert all(0.0 <= r["reliability"] <= 1.0 for r in records)
    assert all(r["low_reliability"] == (r["reliability"] < LOW_RELIABILITY) for r in records)
    summary = json.loads((out / "summary.json").read_text())
    rel = summary["reliability"]
    low = [r["index"] for r in records if r["low_reliability"]]
    assert rel["frames_scored"] == 12 and rel["low_frames"] == len(low)
    assert rel["low_frame_indices"] == low and rel["threshold"] == LOW_RELIABILITY
    assert rel["min"] == pytest.approx(min(r["reliability"] for r in records), abs=1e-4)
    run = summary["model"]["run"]
    # the profile's settings with our model, alone: the profile's ensemble member partners the shipped checkpoint
    assert run["profile"] == f"accurate, modified: checkpoint={tiny_checkpoint.name}, ensemble=[]"
    assert run["ensemble"] == []
    assert run["tta"] is True and run["reliability"] is True
    html = (out / "report.html").read_text()
    assert f"{len(low)} of 12 frames below {LOW_RELIABILITY}" in html and "agreement of the model&#39;s views" in html
    assert "profile accurate, modified: checkpoint=" in html  # the report says which ran
    assert "flip TTA, reliability scored" in html
    # profile=fast (live video): one model pass a frame, nothing written about reliability
    fast = tmp_path / "fast"
    overrides = (f"input={synthetic_video}", f"out_dir={fast}", f"checkpoint={tiny_checkpoint}", "profile=fast")
    assert infer_in_process(*overrides) == []
    assert "reliability" not in (fast / "predictions.jsonl").read_text()
    summary = json.loads((fast / "summary.json").read_text())
    assert "reliability" not in summary
    assert summary["model"]["run_line"].startswith("profile fast, modified: checkpoint=")
    assert "no TTA" in summary["model"]["run_line"] and "profile fast, modified" in (fast / "report.html").read_text()
    # a setting given on its own over a profile: the outputs say the profile was modified, and how
    mixed = tmp_path / "mixed"
    assert infer_in_process(*overrides[:2], overrides[2], "profile=fast", "tta=true", f"out_dir={mixed}") == []
    line = json.loads((mixed / "summary.json").read_text())["model"]["run_line"]
    assert line.startswith("profile fast, modified: checkpoint=") and ", tta=True:" in line and ", flip TTA" in line


def test_still_images_say_how_many_to_check_by_eye(tmp_path, tiny_checkpoint):
    from tests.test_infer import image_folder

    image_folder(tmp_path / "imgs", ["a", "b", "c"], seed=5)
    out = tmp_path / "out"
    assert infer_in_process(f"input={tmp_path / 'imgs'}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}") == []
    rel = json.loads((out / "summary.json").read_text())["reliability"]
    assert rel["frames_scored"] == 3
    assert f"{rel['low_frames']} of 3 images below {LOW_RELIABILITY}" in (out / "report.html").read_text()


def test_the_timeline_keeps_a_short_dip_in_reliability_visible():
    values = np.ones(5000)
    values[2345] = 0.1  # one unreliable frame in a long video
    _, reduced = reduce_series(values, 900, "min")
    assert len(reduced) == 900 and reduced.min() == pytest.approx(0.1)
    assert reduce_series(values, 900, "mean")[1].min() > 0.5  # what a mean would have hidden
