from __future__ import annotations

import json
import shutil

import av
import cv2
import numpy as np
import pytest

from core.errors import UserError
from data.synthetic import synthetic_frame
from review.overlay import render_overlay
from review.smoothing import TemporalSmoother
from tests.conftest import ROOT, html_tags, run_script


def infer_settings(*overrides: str):
    """The settings infer.py runs with for these command-line overrides, composed by Hydra as infer.py's are."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from review.options import read_infer_settings

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return read_infer_settings(
            OmegaConf.to_container(compose(config_name="infer", overrides=list(overrides)), resolve=True)
        )


def infer_in_process(*overrides: str) -> list[str]:
    """What ``infer.py OVERRIDES`` does without out_root, in this process (review.runs.review_to_out_dir): the error
    messages, for which infer.py exits with 2; a user error raises UserError (infer.py: exit code 2, one line)."""
    from review.runs import review_to_out_dir

    return review_to_out_dir(infer_settings(*overrides), overrides=overrides)


def image_folder(folder, names, *, seed: int, size=(64, 64), bgr: bool = False):
    """``folder``/NAME.png for each name: synthetic frames of ``size`` from one seeded generator (``bgr``: written
    as OpenCV expects, else with the channels swapped)."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for name in names:
        image = synthetic_frame(rng, size)["image"]
        cv2.imwrite(str(folder / f"{name}.png"), image[:, :, ::-1] if bgr else image)
    return folder


def test_video_outputs_follow_the_contract(tmp_path, tiny_checkpoint, synthetic_video):
    out = tmp_path / "out"
    p = run_script("infer.py", f"input={synthetic_video}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 0, p.stderr[-2000:]
    masks = sorted((out / "masks").iterdir())
    assert [m.name for m in masks[:2]] == ["clip_000000.png", "clip_000001.png"] and len(masks) == 12
    assert len(list((out / "probs").iterdir())) == 12
    m = cv2.imread(str(masks[0]), cv2.IMREAD_UNCHANGED)
    assert m.shape == (64, 96) and set(np.unique(m)) <= {0, 255}
    lines = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 12 and [x["index"] for x in lines] == list(range(12))
    assert lines[1]["time"] == pytest.approx(0.1)
    assert {"lesion_probability", "area_fraction", "lesions", "heads", "quality"} <= set(lines[0])
    # heads trained on synthetic labels: refused by the display gate, so written nowhere (no review.research_heads)
    assert all(x["heads"] == {} and "research_only" not in x for x in lines)
    with av.open(str(out / "clip_overlay.mp4")) as c:
        s = c.streams.video[0]
        assert s.codec_context.name == "h264" and (s.codec_context.width, s.codec_context.height) == (96, 64)
        assert float(s.average_rate) == 10.0 and sum(1 for _ in c.decode(s)) == 12
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames"] == 12 and summary["video"]["fps"] == 10.0 and summary["video"]["duration"] == 1.2
    html = (out / "report.html").read_text()
    assert 'src="clip_overlay.mp4"' in html and '<svg id="timeline"' in html and "Research use only" in html
    # ... and in the report only the gate's reasons, in the two rows fibrosis and lift always have
    assert html.count("<td colspan=3 class=note>not shown: ") == 2 and "Research-only" not in html
    assert "<td>insufficient evidence</td>" not in html and "<td><b>" not in html and "class probabilities" not in html
    assert summary["heads"] == {} and "research_only" not in summary
    assert not list(out.rglob("*.partial*"))


def test_validated_heads_are_drawn_and_reported(tmp_path, tiny_checkpoint, synthetic_video, monkeypatch):
    from models.predictor import Predictor
    from review.options import ReviewOptions
    from review.pipeline import process_input
    from review.summary import head_caption
    from tests.test_outputs_gate import fake_gate

    fake_gate(monkeypatch, lambda card, head: True)  # whatever evidence the gate asks for, these heads have it
    pred = Predictor.from_checkpoint(tiny_checkpoint, device="cpu", precision="fp32")
    card = pred.card
    out = tmp_path / "out"
    summary = process_input(
        synthetic_video, predictor=pred, out_dir=out, opts=ReviewOptions(threshold=0.001, abstain_below=0.0)
    )
    html = (out / "report.html").read_text()
    assert "not shown" not in html and "not available" not in html
    for h in ("fibrosis", "lift"):
        est = summary["heads"][h]
        assert est["clinically_validated"] and est["frames"] == summary["informative_frames"]
        # an estimate where informative frames exist, otherwise the reason it abstained; either way in the report
        assert (
            (est["estimate"] in card.heads[h].classes)
            if not est["abstain"]
            else ("<td>insufficient evidence</td>" in html and est["reason"])
        )
        if not est["abstain"]:  # worded as the overlay words a frame's estimate
            assert f"<b>{head_caption(head=h, estimate=est['estimate'], confidence=est['confidence'])}</b>" in html
    strict = process_input(
        synthetic_video,
        predictor=pred,
        out_dir=tmp_path / "strict",
        opts=ReviewOptions(threshold=0.001, min_informative_frames=1000),
    )
    assert strict["heads"]["fibrosis"]["abstain"] and strict["heads"]["fibrosis"]["estimate"] is None
    assert "<td>insufficient evidence</td>" in (tmp_path / "strict" / "report.html").read_text()


def test_overlay_draws_heads_only_when_given():
    rng = np.random.default_rng(0)
    s = synthetic_frame(rng, (96, 128))
    a = render_overlay(s["image"], s["mask"], lesion_prob=0.9, time_s=1.0)
    b = render_overlay(s["image"], s["mask"], lesion_prob=0.9, time_s=1.0, head_lines=["fibrosis: F2, confidence 0.80"])
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, s["image"])  # fill and contour are drawn
    c = render_overlay(s["image"], np.zeros_like(s["mask"]), lesion_prob=0.1, legend=False)
    outside = s["image"].copy()
    assert (c[60:, 40:] == outside[60:, 40:]).all()  # nothing drawn away from the text when there is no lesion


def test_smoothing_damps_flicker():
    sm = TemporalSmoother(alpha=0.5)
    on, off = np.ones((4, 4), np.float32), np.zeros((4, 4), np.float32)
    values = [sm(x)[0][0, 0] for x in (on, off, on, off)]
    assert values == pytest.approx([1.0, 0.5, 0.75, 0.375])
    assert TemporalSmoother(1.0)(off)[0][0, 0] == 0.0


def test_images_folder_with_a_corrupt_file_processes_the_rest(tmp_path, tiny_checkpoint):
    src = image_folder(tmp_path / "frames", ["f0", "f1", "f2"], seed=1, bgr=True)
    (src / "f1.png").write_bytes(b"broken")
    out = tmp_path / "out"
    p = run_script("infer.py", f"input={src}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 2
    assert "f1.png" in p.stderr and "Traceback" not in p.stderr
    assert sorted(x.name for x in (out / "masks").iterdir()) == ["f0.png", "f2.png"]
    errors = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 1 and errors[0]["file"].endswith("f1.png")
    assert not (out / ".hydra").exists() and not (out / "infer.log").exists()  # Hydra writes nothing of its own


def test_a_rerun_into_the_same_folder_replaces_the_previous_runs_files_and_nothing_else(
    tmp_path, tiny_checkpoint, synthetic_video
):
    src = image_folder(tmp_path / "frames", ["f0", "f1"], seed=3, bgr=True)
    (src / "f9.png").write_bytes(b"broken")  # an errors.jsonl the next run must not inherit

    def files(folder):
        skip = (".endolift-outputs.json",)
        return sorted(
            str(q.relative_to(folder))
            for q in folder.rglob("*")
            if q.is_file() and q.parts[-1] not in skip and ".hydra" not in q.relative_to(folder).parts
        )

    fresh, reused = tmp_path / "fresh", tmp_path / "reused"
    assert infer_in_process(f"input={src}", f"out_dir={fresh}", f"checkpoint={tiny_checkpoint}")  # f9.png: exit code 2
    mine = reused / "my_notes.txt"
    reused.mkdir()
    mine.write_text("the user's own file")
    for run in (f"input=[{src},{synthetic_video}]", f"input={synthetic_video}", f"input={src}"):
        failures = infer_in_process(run, f"out_dir={reused}", f"checkpoint={tiny_checkpoint}")
        assert isinstance(failures, list)  # exit code 0 or 2 (a bug would raise here)
    # the third run's files are exactly what a run into an empty folder writes: no clip masks, video or subfolders
    assert files(reused) == sorted(files(fresh) + ["my_notes.txt"])
    assert mine.read_text() == "the user's own file" and not (reused / "clip").exists()
    # the settings travel with the results: config.yaml, written under the lock; a failed run leaves it alone
    assert (reused / "config.yaml").read_text().startswith(f"# python infer.py input={src}")
    with pytest.raises(UserError):  # exit code 2
        infer_in_process(f"input={tmp_path / 'nope.mp4'}", f"out_dir={reused}", f"checkpoint={tiny_checkpoint}")
    assert files(reused) == sorted(files(fresh) + ["my_notes.txt"])
    assert (reused / "config.yaml").read_text().startswith(f"# python infer.py input={src}")
    # (that Hydra writes no .hydra/ or infer.log beside the outputs: test_images_folder_with_a_corrupt_file...)


def test_a_single_unreadable_image_writes_nothing(tmp_path, tiny_checkpoint):
    bad = tmp_path / "notimage.jpg"
    bad.write_bytes(b"plain text, not a JPEG")
    out = tmp_path / "out"
    p = run_script("infer.py", f"input={bad}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 2 and "notimage.jpg" in p.stderr and "Traceback" not in p.stderr
    assert "0 frames" not in p.stdout  # no success line for an input that produced nothing
    assert not any(q.name in ("summary.json", "predictions.jsonl") for q in out.rglob("*"))


def test_several_inputs_one_subfolder_each_and_bad_ones_reported(tmp_path, tiny_checkpoint, synthetic_video, capsys):
    img = tmp_path / "one.png"
    cv2.imwrite(str(img), synthetic_frame(np.random.default_rng(2), (64, 64))["image"])
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 100)
    out = tmp_path / "out"
    inputs = f"input=[{img},{bad},{synthetic_video}]"
    failures = infer_in_process(inputs, f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    stderr = capsys.readouterr().err
    assert failures and "bad.mp4" in stderr and "Traceback" not in stderr  # exit code 2
    assert (out / "one" / "masks" / "one.png").is_file() and (out / "one" / "overlays" / "one.jpg").is_file()
    assert (out / "clip" / "clip_overlay.mp4").is_file()
    assert not (out / "bad").exists() or not any((out / "bad").rglob("*.mp4"))
    failed = [json.loads(x) for x in (out / "errors.jsonl").read_text().splitlines()]  # what produced no subfolder
    assert [e["input"] for e in failed] == [str(bad)] and "bad.mp4" in failed[0]["error"]


def test_truncated_video_keeps_decodable_frames(tmp_path, tiny_checkpoint, synthetic_video, capsys):
    data = synthetic_video.read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "out"
    failures = infer_in_process(f"input={cut}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert failures and "truncated" in capsys.readouterr().err  # exit code 2
    n = len((out / "predictions.jsonl").read_text().splitlines())
    assert 0 < n < 12 and len(list((out / "masks").iterdir())) == n
    assert (out / "cut_overlay.mp4").is_file() and (out / "errors.jsonl").is_file()


def test_missing_checkpoint_is_a_user_error(tmp_path, synthetic_video):
    p = run_script("infer.py", f"input={synthetic_video}", f"out_dir={tmp_path}", "checkpoint=/nonexistent/ckpt")
    assert p.returncode == 2 and "/nonexistent/ckpt.json" in p.stderr and "Traceback" not in p.stderr


def test_frame_folder_as_video(tmp_path, tiny_checkpoint):
    src = image_folder(tmp_path / "seq", [f"{i:03d}" for i in range(5)], seed=3)
    out = tmp_path / "out"
    as_video = (f"input={src}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}", "frames_as_video=true")
    assert infer_in_process(*as_video, "review.frames_fps=5") == []  # exit code 0
    assert (out / "seq_overlay.mp4").is_file() and (out / "masks" / "seq_000004.png").is_file()
    shutil.rmtree(out)
    assert infer_in_process(*as_video, "review.overlay_size=[48,32]", "review.report=false") == []
    with av.open(str(out / "seq_overlay.mp4")) as c:
        assert (c.streams.video[0].codec_context.width, c.streams.video[0].codec_context.height) == (48, 32)


def hydra_quote(value: str) -> str:
    """A value for a Hydra override, quoted (README: paths with spaces or quotes)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


HOSTILE = ['a" onerror="alert(1)', "<img src=x onerror=alert(1)><script>alert(1)<", "a&b é 'q'"]


def test_hostile_file_names_cannot_inject_into_the_report(tmp_path, tiny_checkpoint, synthetic_video):
    from urllib.parse import unquote

    videos = []
    for stem in HOSTILE:
        videos.append(tmp_path / f"{stem}.mp4")
        shutil.copyfile(synthetic_video, videos[-1])
    out = tmp_path / "out"
    listed = ",".join(hydra_quote(str(v)) for v in videos)
    p = run_script("infer.py", f"input=[{listed}]", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 0, p.stderr[-2000:]
    folders = sorted(d for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(folders) == 3

    shown = []
    for folder in folders:
        text = (folder / "report.html").read_text()
        tags = html_tags(text)
        assert sum(t == "script" for t, _ in tags) == 1  # only the page's own state script
        assert not any(k.startswith("on") for _, a in tags for k in a)  # no injected event handler
        srcs = [a["src"] for t, a in tags if t in ("img", "video")]
        assert len(srcs) >= 3
        for src in srcs:  # every URL resolves to its file
            assert (folder / unquote(src)).is_file(), src
        shown.append(
            text.replace("&amp;", "&")
            .replace("&#34;", '"')
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&#39;", "'")
        )
    for stem in HOSTILE:  # each name is shown, as text
        assert any(stem in t for t in shown), stem


def test_forgetting_a_run_touches_only_listed_files_inside_the_folder(tmp_path):
    from core.files import RUN_OUTPUTS, forget_previous_run

    out = tmp_path / "out"
    (out / "masks").mkdir(parents=True)
    (out / "masks" / "a.png").write_bytes(b"a")
    (out / "keep.txt").write_text("mine")
    (tmp_path / "outside.txt").write_text("not endolift's")
    (out / RUN_OUTPUTS).write_text(json.dumps({"files": ["masks/a.png", "../outside.txt", "gone.png"]}))
    assert forget_previous_run(out) == 1
    assert not (out / "masks").exists() and (out / "keep.txt").is_file() and (tmp_path / "outside.txt").is_file()
    assert not (out / RUN_OUTPUTS).exists() and forget_previous_run(out) == 0
