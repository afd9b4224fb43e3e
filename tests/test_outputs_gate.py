"""What the display gate refuses is in no output: not predictions.jsonl, summary.json, the overlay or the report
(only, with review.research_heads, under ``research_only`` in the two files); no head is estimated on a frame
without a lesion in view; a frame's caption and the video's estimate share one wording; the model card export
writes no head wording that the card does not hold.

The gate itself (models/gate.py) is replaced here by ``fake_gate``, so these tests hold whatever its rule becomes:
they test that every output asks it, not what it answers.
"""

from __future__ import annotations

import json
import re
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from models import gate
from models.card import ModelCard
from tests.conftest import ROOT, tiny_card

FIB = ["fibF0", "fibF1", "fibF2"]  # class names found nowhere else in a report, so a leak is unmistakable
LIFT = ["adequate", "partial", "non-lifting"]
CAPTION = re.compile(r"^lift: (adequate|partial|non-lifting), confidence \d\.\d\d$")


def fake_gate(monkeypatch: pytest.MonkeyPatch, passes: Callable[[ModelCard, str], bool]) -> None:
    """models.gate.shown / refusals answer ``passes(card, head)``; a refusal reads 'refused-by-test-gate: HEAD'."""

    def refusals(card: ModelCard, head: str) -> list[str]:
        if head not in card.heads:
            return ["not available: no validated model"]
        return [] if passes(card, head) else [f"refused-by-test-gate: {head}"]

    monkeypatch.setattr(gate, "refusals", refusals)
    monkeypatch.setattr(gate, "shown", lambda card, head: not refusals(card, head))


def old_rule(card: ModelCard, head: str) -> bool:
    """The gate's first conditions (trained, real labels, validated on them): what a hand-made 'clinical' card has."""
    info = card.heads[head]
    return info.trained is True and info.label_source == "real" and info.validated_on_real is True


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    from models.build import build_model
    from models.checkpoint import save_checkpoint

    torch.manual_seed(0)
    card = tiny_card({"fibrosis": FIB, "lift": LIFT})
    stem = tmp_path_factory.mktemp("gate_ckpt") / "tiny"
    save_checkpoint(stem, build_model(**card["model"]), card)
    return stem


def predictor_with_lesions(checkpoint: Path, lesion: Callable[[int], bool], monkeypatch: pytest.MonkeyPatch):
    """The tiny model, its lesion map replaced: a disc of 0.9 on the k-th frame it sees where ``lesion(k)``, else
    nothing (both paths ask for frames in order), so which frames show a lesion is known exactly."""
    from models.predictor import Predictor

    pred = Predictor.from_checkpoint(checkpoint, device="cpu", precision="fp32")
    original, seen = pred.predict, [0]

    def predict(images, covariates=None, **kw):
        out = original(images, covariates, **kw)
        for p in out:
            h, w = p.prob.shape
            yy, xx = np.mgrid[:h, :w]
            disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (min(h, w) / 4) ** 2
            p.prob = np.where(disc & lesion(seen[0]), 0.9, 0.0).astype(np.float32)
            seen[0] += 1
        return out

    monkeypatch.setattr(pred, "predict", predict)
    return pred


def sharp_frame(rng: np.random.Generator, blurred: bool = False) -> np.ndarray:
    """A synthetic scene with fine texture (sharp by data/quality.py's measure), or blurred far below its limit."""
    import cv2

    from data.synthetic import synthetic_frame

    im = synthetic_frame(rng, (64, 96))["image"].astype(int) + rng.integers(-40, 41, (64, 96, 3))
    im = np.clip(im, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(im, (0, 0), 4) if blurred else im


@pytest.fixture()
def clip(tmp_path) -> Path:
    """12 frames at 10 frames/s, all sharp but frame 3 (blurred: not informative even with a lesion in view)."""
    from data.video import VideoWriter

    rng = np.random.default_rng(0)
    path = tmp_path / "clip.mp4"
    with VideoWriter(path, fps=10, width=96, height=64, crf=12) as w:
        for k in range(12):
            w.write(sharp_frame(rng, blurred=k == 3))
    return path


def run_video(clip: Path, out: Path, pred, monkeypatch: pytest.MonkeyPatch, **opts) -> tuple[list, dict, str, list]:
    """process_input on ``clip`` -> (predictions.jsonl records, summary.json, report.html, overlay lines per frame)."""
    import review.stages as stages
    from review.options import ReviewOptions
    from review.pipeline import process_input

    drawn: list[list[str]] = []
    render = stages.render_overlay

    def spy(*a, head_lines=(), **kw):
        drawn.append(list(head_lines))
        return render(*a, head_lines=head_lines, **kw)

    monkeypatch.setattr(stages, "render_overlay", spy)
    settings = {"smoothing": 1.0, "min_informative_frames": 1, "abstain_below": 0.0, "scope_mask": False} | opts
    process_input(clip, predictor=pred, out_dir=out, opts=ReviewOptions(**settings))
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    return rows, summary, (out / "report.html").read_text(), drawn


@pytest.mark.parametrize("streaming", [True, False])
def test_a_refused_head_is_written_nowhere_and_a_passed_one_under_heads(
    tmp_path, checkpoint, clip, monkeypatch, streaming
):
    fake_gate(monkeypatch, lambda card, head: head == "lift")
    pred = predictor_with_lesions(checkpoint, lambda k: k < 8, monkeypatch)  # lesions on frames 0-7, none on 8-11
    rows, summary, html, drawn = run_video(clip, tmp_path / "out", pred, monkeypatch, streaming=streaming)
    assert [r["informative"] for r in rows] == [True] * 3 + [False] + [True] * 4 + [False] * 4
    assert rows[3]["lesions"] and rows[3]["quality"]["blurry"]  # a lesion, but too blurred to count
    for r in rows:
        assert "fibrosis" not in r["heads"] and "research_only" not in r
        # a head is estimated only where a lesion is in view
        assert set(r["heads"]) == ({"lift"} if r["informative"] else set())
    assert all(r["heads"]["lift"]["clinically_validated"] is True for r in rows if r["informative"])
    assert set(summary["heads"]) == {"lift"} and "research_only" not in summary
    assert summary["heads"]["lift"]["frames"] == 7 and summary["heads"]["lift"]["estimate"] in LIFT
    # the overlay: the passed head's caption on informative frames, nothing elsewhere, never the refused head
    assert len(drawn) == 12 and [bool(x) for x in drawn] == [r["informative"] for r in rows]
    assert all(len(x) == 1 and CAPTION.match(x[0]) for x in drawn if x)
    # the report: the refused head's reason, none of its values, no timeline track, no banner
    assert "refused-by-test-gate: fibrosis" in html and not any(c in html for c in FIB)
    assert "fibrosis: class" not in html and "lift: class probabilities" in html and "research_only" not in html


def test_research_heads_writes_refused_heads_only_under_research_only_and_the_report_says_so(
    tmp_path, checkpoint, clip, monkeypatch
):
    from review.report import RESEARCH_BANNER

    fake_gate(monkeypatch, lambda card, head: head == "lift")
    pred = predictor_with_lesions(checkpoint, lambda k: k % 3 != 2, monkeypatch)  # frames 2, 5, 8, 11 lesion-free
    rows, summary, html, drawn = run_video(clip, tmp_path / "out", pred, monkeypatch, research_heads=True)
    for k, r in enumerate(rows):
        counts = k % 3 != 2 and k != 3  # a lesion in view, not blurred
        assert r["informative"] == counts and "fibrosis" not in r["heads"]
        assert set(r["research_only"]) == ({"fibrosis"} if counts else set())  # nothing on uncounted frames
        assert set(r["heads"]) == ({"lift"} if counts else set())
    assert all(r["research_only"]["fibrosis"]["estimate"] in FIB for r in rows if r["informative"])
    research = summary["research_only"]["fibrosis"]
    assert set(summary["research_only"]) == {"fibrosis"} and "fibrosis" not in summary["heads"]
    assert research["frames"] == 7 and research["estimate"] in FIB
    assert research["not_shown"] == ["refused-by-test-gate: fibrosis"]
    # the report says where the research estimates are, and shows none of them
    assert RESEARCH_BANNER in html and not any(c in html for c in FIB) and "fibrosis: class" not in html
    assert not any("fibrosis" in line for x in drawn for line in x)


def test_no_head_estimate_on_lesion_free_frames_of_an_image_folder(tmp_path, checkpoint, monkeypatch):
    from core.files import write_image_atomic
    from review.options import ReviewOptions
    from review.pipeline import process_input

    fake_gate(monkeypatch, lambda card, head: True)
    src = tmp_path / "images"
    rng = np.random.default_rng(1)
    for name in ("a", "b"):
        write_image_atomic(src / f"{name}.png", sharp_frame(rng))
    pred = predictor_with_lesions(checkpoint, lambda k: k == 0, monkeypatch)  # a.png has a lesion, b.png none
    process_input(
        src, predictor=pred, out_dir=tmp_path / "out", opts=ReviewOptions(scope_mask=False, research_heads=True)
    )
    a, b = (json.loads(x) for x in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines())
    assert a["informative"] and set(a["heads"]) == {"fibrosis", "lift"} and a["research_only"] == {}
    assert not b["lesions"] and b["heads"] == {} and b["research_only"] == {}


def test_the_timeline_plots_a_head_only_where_a_frame_has_its_estimate(monkeypatch):
    from review.timeline import X0, timeline

    fake_gate(monkeypatch, lambda card, head: True)
    card = ModelCard.from_dict(tiny_card({"lift": LIFT}))
    est = {"lift": {"probs": {"adequate": 0.7, "partial": 0.2, "non-lifting": 0.1}}}
    rows = [
        {"index": k, "time": k / 10, "lesion_probability": 0.9, "area_fraction": 0.1, "heads": est if k < 3 else {}}
        for k in range(10)
    ]
    tl = timeline(rows, card, fps=10, threshold=0.5, segments=[])
    head = tl["tracks"][2]
    xs = [float(p.split(",")[0]) for pts in head["lines"][0]["polylines"] for p in pts.split()]
    assert len(head["lines"][0]["polylines"]) == 1 and max(xs) <= X0 + 0.3 * tl["w"] + 0.1  # frames 0-2 only
    rows[8]["heads"] = est  # a second stretch, of one frame: drawn across its frame
    lines = timeline(rows, card, fps=10, threshold=0.5, segments=[])["tracks"][2]["lines"][0]["polylines"]
    assert len(lines) == 2 and len(lines[1].split()) == 2
    bare = [dict(r, heads={}) for r in rows]  # a video without a lesion in view: no head line at all
    assert all(
        ln["polylines"] == [] for ln in timeline(bare, card, fps=10, threshold=0.5, segments=[])["tracks"][2]["lines"]
    )


def test_a_frame_caption_and_the_video_estimate_share_one_wording(tmp_path, checkpoint, clip, monkeypatch):
    from review.summary import head_caption

    fake_gate(monkeypatch, lambda card, head: head == "lift")
    pred = predictor_with_lesions(checkpoint, lambda k: True, monkeypatch)
    rows, summary, html, drawn = run_video(clip, tmp_path / "out", pred, monkeypatch)
    for r, lines in zip(rows, drawn):  # frame 3 is blurred: no estimate, no caption
        e = r["heads"].get("lift")
        assert lines == ([head_caption(head="lift", estimate=e["estimate"], confidence=e["confidence"])] if e else [])
    v = summary["heads"]["lift"]
    video = head_caption(head="lift", estimate=v["estimate"], confidence=v["confidence"])
    assert CAPTION.match(video) and CAPTION.match(drawn[0][0]) and f"<b>{video}</b>" in html


def _tiny_heads_checkpoint(stem: Path, model, heads: dict, **head_fields) -> None:
    from models.checkpoint import save_checkpoint

    card = tiny_card(heads)
    card["training"] = {"config": {"name": "heads"}, "command": "python train.py experiment=hospital_heads"}
    for h in card["heads"]:
        card["heads"][h].update(head_fields.get(h, {}))
    save_checkpoint(stem, model, card)


def test_export_writes_no_wording_that_a_heads_card_does_not_hold(tmp_path, monkeypatch):
    """Heads added to a segmenter (python -m models.export --add-heads): a fibrosis head's card says what its own
    entry says, never 'not a fibrosis or lift estimate' or the shipped proxy head's dataset."""
    from models.build import build_model
    from models.checkpoint import read_card
    from models.export import LIMITS, add_heads

    fake_gate(monkeypatch, lambda card, head: False)
    heads = {"fibrosis": ["F0", "F1", "F2"], "lift": LIFT}
    torch.manual_seed(0)
    model = build_model(**tiny_card(heads)["model"])
    _tiny_heads_checkpoint(tmp_path / "shipped", model, heads)
    base = read_card(tmp_path / "shipped")  # a shipped card as the proxy head's export left it
    base.known_limits = LIMITS + ["fibrosis is a made-up limit of an older head of that name."]
    base.intended_use = "Research use only. The 'small_sessile' estimate ...; it is not a fibrosis or lift estimate."
    (tmp_path / "shipped.json").write_text(json.dumps(base.to_dict()))
    definition = "Matsumoto grade read by two endoscopists from the resection video"
    _tiny_heads_checkpoint(
        tmp_path / "run", model, heads, fibrosis={"label_definition": definition, "label_source": "proxy"}
    )
    add_heads(Namespace(dst=str(tmp_path / "shipped"), add_heads=str(tmp_path / "run"), metrics=None, wall_hours=0.1))
    card = json.loads((tmp_path / "shipped.json").read_text())
    md = (tmp_path / "MODEL_CARD.md").read_text()
    for text in (card["intended_use"], " ".join(card["known_limits"]), md):
        assert "not a fibrosis or lift estimate" not in text and "No fibrosis or lift head" not in text
        assert "Kvasir-Sessile" not in text and "small_sessile" not in text
    assert f"The 'fibrosis' head estimates: {definition} (label source: proxy)." in card["intended_use"]
    # limits about the heads' data stay those the card held; whether infer.py shows a head is the gate's answer
    assert "fibrosis is a made-up limit of an older head of that name." in card["known_limits"]
    assert "never shown by infer.py: refused-by-test-gate: fibrosis" in md
    assert "Fibrosis (Matsumoto" not in md and "no head" not in md  # the card has both heads


def test_the_shipped_model_card_is_what_export_renders_from_the_shipped_card(monkeypatch):
    from models.checkpoint import read_card
    from models.export import render_folder, render_model_card

    shipped = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"
    if not shipped.with_suffix(".json").is_file():
        pytest.skip(f"shipped model not found: {shipped}.json")
    fake_gate(monkeypatch, lambda card, head: True)
    size_mb = shipped.with_suffix(".safetensors").stat().st_size / 1e6
    assert render_folder(shipped) == (shipped.parent / "MODEL_CARD.md").read_text()
    assert render_folder(shipped).startswith(render_model_card(read_card(shipped), size_mb))


def test_research_heads_is_off_by_default_and_only_a_real_bool_turns_it_on():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from core.errors import UserError
    from review.options import ReviewOptions

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        review = OmegaConf.to_container(compose(config_name="infer").review, resolve=True)
    assert review["research_heads"] is False and ReviewOptions(**review).research_heads is False
    with pytest.raises(UserError, match="review.research_heads='false' is invalid: it must be true or false"):
        ReviewOptions(research_heads="false")  # a truthy string must not write refused heads' estimates
