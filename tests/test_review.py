"""Direct tests of what a reviewer sees: field-of-view detection, de-identification, lesion description, EMA."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from data.scope import content_area, fill_outside_field_of_view
from data.synthetic import synthetic_frame
from review.describe import clean_mask, lesions
from tests.conftest import html_tags
from training.loop import ModelEMA


def _frame_with_burned_in_text():
    """A round field of view (a synthetic scene inside a circle) on black, with a name and a date burned into the
    black corners, as scopes do."""
    scene = synthetic_frame(np.random.default_rng(0), (288, 384))["image"]
    disc = np.zeros((288, 384), np.uint8)
    cv2.circle(disc, (192, 144), 130, 1, -1)
    f = scene * disc[:, :, None]
    boxes = [(2, 6, 100, 24), (300, 266, 384, 286)]  # x0, y0, x1, y1 in the black corners
    cv2.putText(f, "DOE JOHN", (4, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
    cv2.putText(f, "12/03/26", (302, 280), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return f, boxes, disc


def test_field_of_view_is_the_scope_disc_not_the_burned_in_text():
    f, boxes, disc = _frame_with_burned_in_text()
    area = content_area(f)
    assert (area & disc).sum() / (area | disc).sum() > 0.97
    for x0, y0, x1, y1 in boxes:
        assert area[y0:y1, x0:x1].sum() == 0


def test_deidentify_leaves_no_burned_in_text_readable_and_keeps_the_field():
    f, boxes, _ = _frame_with_burned_in_text()
    area = content_area(f)
    d = fill_outside_field_of_view(f, area)
    assert np.array_equal(d[area > 0], f[area > 0])  # the field of view is untouched
    for x0, y0, x1, y1 in boxes:
        before, after = f[y0:y1, x0:x1].max(2), d[y0:y1, x0:x1].max(2)
        assert (before > 128).sum() > 20  # there was text ...
        assert (after > 128).sum() == 0  # ... no text-bright pixel is left
        assert after.std() < 0.2 * before.std()  # and no stroke contrast to read


def test_lesions_are_described_largest_first_and_specks_dropped():
    prob = np.zeros((100, 120), np.float32)
    prob[10:40, 10:60] = 0.9  # 30 x 50
    prob[60:70, 80:90] = 0.7  # 10 x 10
    prob[95, 5] = 0.99  # a one-pixel speck
    area = np.ones_like(prob, np.uint8)
    area[:, 110:] = 0
    prob[50:60, 112:118] = 0.95  # outside the field of view
    mask = clean_mask(prob, area, threshold=0.5, min_area_fraction=0.002)
    assert mask[95, 5] == 0 and mask[55, 115] == 0
    found = lesions(prob, mask, max_points=8)
    assert [d["area_px"] for d in found] == [1500, 100]
    assert found[0]["bbox"] == [10, 10, 50, 30] and found[1]["bbox"] == [80, 60, 10, 10]
    assert found[0]["mean_prob"] == pytest.approx(0.9) and found[1]["max_prob"] == pytest.approx(0.7)
    assert all(len(d["contour"]) <= 8 for d in found)


def test_model_ema_tracks_and_restores():
    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 0.75))  # 0 -> 0.5 -> 0.75
    backup = ema.copy_to(model)
    assert torch.allclose(model.weight, torch.full((1, 2), 0.75))
    model.load_state_dict(backup)
    assert torch.allclose(model.weight, torch.ones(1, 2))


def _row(k: int, *, fps: float = 10.0, lesion: bool = True, area: float = 0.1, p: float = 0.9, heads=None) -> dict:
    """A summary row (review.summary.summary_row) made by hand: frame k of a video at ``fps``."""
    return {
        "name": f"c_{k:06d}",
        "index": k,
        "time": round(k / fps, 4),
        "lesion_probability": p,
        "area_fraction": area if lesion else 0.0,
        "n_lesions": int(lesion),
        "largest_px": 1000 * lesion,
        "lesion_px": int(10000 * area) if lesion else 0,
        "heads": heads or {},
        "informative": lesion,
    }


def test_lesion_segments_bridge_gaps_up_to_half_a_second():
    from review.segments import lesion_segments

    lesion = {0, 1, 2, 6, 11, 17, 18}  # 0.2 -> 0.6 s and 0.6 -> 1.1 s are bridged, 1.1 -> 1.7 s is not
    areas = {1: 0.30, 2: 0.30, 18: 0.05}
    rows = [_row(k, lesion=k in lesion, area=areas.get(k, 0.1), p=0.9 if k in lesion else 0.2) for k in range(20)]
    first, second = lesion_segments(rows, fps=10)
    assert (first["start"], first["end"], first["start_frame"], first["end_frame"]) == (0.0, 1.1, 0, 11)
    assert first["duration"] == pytest.approx(1.2) and (first["frames"], first["lesion_frames"]) == (12, 5)
    assert first["peak"] == {"time": 0.1, "frame": 1, "area_px": 3000, "area_fraction": 0.3}  # first of equal peaks
    assert first["mean_probability"] == pytest.approx((5 * 0.9 + 7 * 0.2) / 12, abs=1e-4)
    assert first["max_probability"] == 0.9
    assert (second["start_frame"], second["end_frame"], second["duration"]) == (17, 18, pytest.approx(0.2))
    assert second["peak"]["frame"] == 17 and second["lesion_frames"] == 2
    assert lesion_segments([_row(k, lesion=False) for k in range(5)], fps=10) == []
    assert len(lesion_segments(rows, fps=10, gap_s=0.3)) == 4  # a shorter bridge splits 0.2 -> 0.6 and 0.6 -> 1.1
    one = lesion_segments([_row(3)], fps=25)[0]
    assert one["duration"] == pytest.approx(0.04) and one["frames"] == 1  # one frame lasts 1 / fps


def _card(heads: dict, clinical: bool):
    from models.card import ModelCard
    from tests.conftest import tiny_card

    return ModelCard.from_dict(tiny_card(heads, label_source="real" if clinical else "synthetic", validated=clinical))


def test_timeline_is_drawn_in_video_time_with_clinical_heads_only(monkeypatch):
    from review.timeline import MAX_POINTS, X0, reduce_series, timeline
    from tests.test_outputs_gate import fake_gate, old_rule

    fake_gate(monkeypatch, old_rule)  # the gate's answer for these hand-made cards, whatever its full rule

    probs = {"fibrosis": {"probs": {"F0": 0.2, "F1": 0.3, "F2": 0.5}}}
    rows = [_row(k, fps=2, area=0.04 * k, heads=probs) for k in range(4)]
    rows = [dict(r, time=r["time"] + 3.0) for r in rows]  # the input's timestamps start at 3 s
    seg = [{"start_frame": 1, "end_frame": 2}]
    tl = timeline(rows, _card({"fibrosis": ["F0", "F1", "F2"]}, clinical=True), fps=2, threshold=0.5, segments=seg)
    w = tl["w"]
    assert tl["x0"] == X0
    lesion, area, head = tl["tracks"]
    xs = [float(p.split(",")[0]) for p in lesion["lines"][0]["polylines"][0].split()]
    assert xs == pytest.approx([X0 + k / 4 * w for k in range(4)], abs=0.1)  # frame k at k / fps, as in the video
    assert area["yticks"][-1]["label"] == "20%"  # max area 12% -> a 20% axis
    assert [ln["name"] for ln in head["lines"]] == ["F0", "F1", "F2"] and head["legend"]
    assert tl["bands"] == [{"x": pytest.approx(X0 + w / 4, abs=0.1), "width": pytest.approx(w / 2, abs=0.1)}]
    ticks = tl["xticks"]  # every 0.5 s, labelled with the input's timestamps
    assert [t["label"] for t in ticks] == ["00:03.00", "00:03.50", "00:04.00", "00:04.50", "00:05.00"]
    assert ticks[0]["x"] == X0 and ticks[1]["x"] == pytest.approx(X0 + w / 4, abs=0.1)
    hidden = timeline(rows, _card({"fibrosis": ["F0", "F1", "F2"]}, clinical=False), fps=2, threshold=0.5, segments=[])
    assert len(hidden["tracks"]) == 2  # a head not validated on real labels is not drawn
    pos, peak = reduce_series(np.array([0, 1, 0, 0, 0, 0, 5, 0, 0, 0], float), 5)
    assert pos.tolist() == [0.5, 2.5, 4.5, 6.5, 8.5] and peak.tolist() == [1, 0, 0, 5, 0]  # a short peak survives
    assert reduce_series(np.array([0.0, 1.0]), 1, "mean")[1].tolist() == [0.5]
    gaps = np.array([np.nan, np.nan, 1.0, np.nan, 3.0, np.nan])  # frames without a value: skipped, or a gap
    assert np.allclose(reduce_series(gaps, 3, "mean")[1], [np.nan, 1.0, 3.0], equal_nan=True)
    assert np.allclose(reduce_series(gaps, 3, "max")[1], [np.nan, 1.0, 3.0], equal_nan=True)
    many = timeline([_row(k) for k in range(5000)], _card({}, clinical=False), fps=25, threshold=0.5, segments=[])
    assert len(many["tracks"][0]["lines"][0]["polylines"][0].split()) <= MAX_POINTS
    single = timeline([_row(0)], _card({}, clinical=False), fps=25, threshold=0.5, segments=[])
    assert [float(p.split(",")[0]) for p in single["tracks"][0]["lines"][0]["polylines"][0].split()] == pytest.approx(
        [X0, X0 + w], abs=0.1
    )  # a one-frame video still draws a line, across its frame


HOSTILE = "<img src=x onerror=alert(1)>"


def _write_report(out, *, stem: str, original: str | None, overlay: bool = True):
    """A report written straight from hand-made rows (no model), with hostile text in every field that can carry it."""
    from review.options import ReviewOptions
    from review.report import write_report
    from review.summary import summarise

    head, classes = f"{HOSTILE}head", [f"{HOSTILE}a", "b"]
    card = _card({head: classes}, clinical=True)
    card.intended_use = f"use {HOSTILE}"
    rows = [_row(k, heads={head: {"probs": {classes[0]: 0.8, "b": 0.2}}}) for k in range(6)]
    for r in rows:
        r["name"] = f"{stem}_{r['index']:06d}"
    video = {"fps": 10.0, "width": 32, "height": 24}
    summary = summarise(
        rows,
        card,
        video,
        [{"file": stem, "error": f"bad frame {HOSTILE}"}],
        threshold=0.5,
        opts=ReviewOptions(min_informative_frames=1),
    )
    frame = np.zeros((24, 32, 3), np.uint8)
    return write_report(
        out,
        stem=stem,
        records=rows,
        summary=summary,
        card=card,
        key_frames=[(0.9, 2, frame)],
        overlay=f"{stem}_overlay.mp4" if overlay else None,
        original=original,
    )


def test_report_keeps_hostile_text_as_text_and_offers_the_original(tmp_path, monkeypatch):
    from urllib.parse import unquote

    from tests.test_outputs_gate import fake_gate, old_rule

    fake_gate(monkeypatch, old_rule)  # the hostile head is shown: its name and classes reach the page

    stem = f"{HOSTILE}.mp4 \" ' &"
    html = _write_report(tmp_path, stem=stem, original=None).read_text()
    tags = html_tags(html)
    assert HOSTILE not in html and html.count("&lt;img src=x onerror=alert(1)&gt;") >= 6  # stem, head, class, ...
    assert [t for t, _ in tags].count("script") == 1 and [t for t, _ in tags].count("img") == 1
    assert not any(k.startswith("on") for _, a in tags for k in a)  # no handler came in with a name
    video, img = (a["src"] for t, a in tags if t in ("video", "img"))
    assert unquote(video) == f"{stem}_overlay.mp4" and not set(video) & set("<>\"' ")  # percent-encoded
    assert (tmp_path / unquote(img)).is_file()
    assert "rerun with <code>review.original_video=true</code>" in html and 'id="mix"' not in html
    html = _write_report(tmp_path, stem="case", original="case_original.mp4").read_text()
    assert '<video id="original"' in html and 'id="mix"' in html and "review.original_video=true" not in html
    assert html.count('data-frame="') == 4  # key frame + segment from, to, largest extent: each seeks the video
    html = _write_report(tmp_path, stem="case", original=None, overlay=False).read_text()
    assert "<video" not in html and 'data-frame="' not in html and "00:00.50" in html  # no video: times as text


@pytest.mark.parametrize("streaming", [True, False])
def test_original_video_is_written_deidentified_in_order_by_both_paths(tmp_path, tiny_checkpoint, streaming):
    import av

    from data.video import VideoWriter
    from models.predictor import Predictor
    from review.options import ReviewOptions
    from review.pipeline import process_input

    text, boxes, disc = _frame_with_burned_in_text()
    rng = np.random.default_rng(5)
    frames = [np.where(disc[:, :, None] > 0, synthetic_frame(rng, (288, 384))["image"], text) for _ in range(4)]
    clip = tmp_path / "case.mp4"
    with VideoWriter(clip, fps=5, width=384, height=288, crf=12) as w:
        for f in frames:
            w.write(f)
    out = tmp_path / "out"
    pred = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    process_input(
        clip,
        predictor=pred,
        out_dir=out,
        opts=ReviewOptions(streaming=streaming, original_video=True, deidentify=True, overlay_size=[192, 144]),
    )
    with av.open(str(out / "case_original.mp4")) as c:
        got = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    assert len(got) == 4 and got[0].shape == (144, 192, 3)  # every frame, at the overlay's size
    small = [cv2.resize(f, (192, 144), interpolation=cv2.INTER_AREA).astype(float) for f in frames]
    for k, g in enumerate(got):  # frame k is input frame k (the scenes differ), burned-in text unreadable
        assert np.argmin([np.abs(g - s).mean() for s in small]) == k
        for x0, y0, x1, y1 in boxes:
            assert (g[y0 // 2 : y1 // 2, x0 // 2 : x1 // 2].max(2) > 128).sum() == 0
    assert not list(out.rglob("*.partial*")) and '<video id="original"' in (out / "report.html").read_text()


def test_original_video_setting_is_checked():
    from core.errors import UserError
    from core.settings import check_settings
    from review.options import INFER

    with pytest.raises(UserError, match="review.original_video='yes' is invalid: it must be true or false"):
        check_settings({"review": {"original_video": "yes"}}, INFER)


def test_timecode_rounds_before_splitting_minutes():
    from review.overlay import timecode

    assert [timecode(t) for t in (0, 1.234, 59.996, 119.999, 61.5)] == [
        "00:00.00",
        "00:01.23",
        "01:00.00",
        "02:00.00",
        "01:01.50",
    ]
