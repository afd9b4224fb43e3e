"""Faults a new user hit: each test failed before its fix."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import UserError
from data.synthetic import synthetic_frame
from tests.conftest import ROOT, run_script
from tests.test_infer import image_folder, infer_in_process


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


def test_a_killed_runs_finished_files_are_deleted_by_the_next_run(tmp_path):
    """Each output is journalled before it is put in place, so a kill -9 leaves no unlisted final file."""
    folder = tmp_path / "out"
    (folder / "masks").mkdir(parents=True)
    (folder / "mine.txt").write_text("the user's")
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from core.files import atomic_write, recording_outputs\n"
        f"folder = Path({str(folder)!r})\n"
        "with recording_outputs(journal=folder):\n"
        "    for i in range(5):\n"
        "        with atomic_write(folder / 'masks' / f'{i}.png') as t:\n"
        "            t.write_text('x')\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == -9, p.stderr
    assert len(list((folder / "masks").iterdir())) == 5  # finished files of the killed run, under final names
    from core.files import forget_previous_run

    assert forget_previous_run(folder) == 5
    assert not (folder / "masks").exists() and (folder / "mine.txt").read_text() == "the user's"
    assert [q.name for q in folder.iterdir()] == ["mine.txt"]  # no journal or listing left


def test_covariates_that_are_not_a_mapping_stop_before_anything_is_written(tmp_path):
    out = tmp_path / "out"
    line = _one_line_error(run_script("infer.py", "review.covariates=5", f"out_dir={out}"))
    assert "review.covariates" in line
    assert not out.exists() or not any(out.iterdir())


def one_image(tmp_path) -> Path:
    """a.png: one synthetic 64 x 64 frame."""
    img = tmp_path / "a.png"
    cv2.imwrite(str(img), synthetic_frame(np.random.default_rng(0), (64, 64))["image"])
    return img


def test_covariates_the_model_does_not_read_stop_before_anything_is_written(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    args = (f"input={one_image(tmp_path)}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    with pytest.raises(UserError) as e:  # infer.py: exit code 2, the message as one line
        infer_in_process(*args, "review.covariates={foo: 1}")
    assert "not read by this model" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "override,needle",
    [
        ("review.treshold=0.3", "did you mean review.threshold?"),
        ("+review.treshold=0.3", "did you mean review.threshold?"),
        ("+foo=1", "unknown setting foo"),
        ("review.deidentfy=true", "did you mean review.deidentify?"),
        ("chekpoint=x", "did you mean checkpoint?"),
    ],
)
def test_a_mistyped_or_unknown_key_is_one_line_naming_the_closest_valid_one(tmp_path, override, needle):
    import time

    t0 = time.perf_counter()
    line = _one_line_error(run_script("infer.py", override, f"out_dir={tmp_path / 'out'}"))
    assert needle in line and time.perf_counter() - t0 < 5  # before torch and the model load


def test_the_infer_schema_is_closed():
    """Every key of configs/infer.yaml has a rule (and a key without one would be refused)."""
    from core.errors import UserError
    from core.settings import check_settings
    from review.options import INFER
    from tests.test_settings import _compose

    cfg = _compose("infer", [])
    check_settings(cfg, INFER, closed=True)
    with pytest.raises(UserError, match="unknown setting review.treshold"):
        check_settings(cfg | {"review": cfg["review"] | {"treshold": 0.3}}, INFER, closed=True)


def test_non_ascii_paths_work_unquoted(tmp_path, tiny_checkpoint):
    src = tmp_path / "é"
    src.mkdir()
    cv2.imwrite(str(src / "x.png"), synthetic_frame(np.random.default_rng(0), (64, 64))["image"])
    out = tmp_path / "Müller"
    p = run_script("infer.py", f"input={src / 'x.png'}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (out / "masks" / "x.png").is_file()
    p = run_script("infer.py", f"input=[{src / 'x.png'}]", f"out_dir={out}", f"checkpoint={tiny_checkpoint}")
    assert p.returncode == 0, p.stderr[-2000:]


def test_video_errors_carry_no_raw_errno(tmp_path):
    from core.errors import UserError
    from data.video import probe

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(UserError) as e:
        probe(bad)
    assert "Errno" not in str(e.value) and "bad.mp4" in str(e.value)


def test_a_corrupt_middle_is_counted_as_lost_frames(tmp_path):
    from data.video import VideoWriter, read_frames

    rng = np.random.default_rng(0)
    clip = tmp_path / "c.mp4"
    with VideoWriter(clip, fps=25, width=160, height=128) as w:
        for _ in range(100):
            w.write(synthetic_frame(rng, (128, 160))["image"])
    data = bytearray(clip.read_bytes())
    n = len(data)
    data[int(n * 0.4) : int(n * 0.6)] = bytes(int(n * 0.6) - int(n * 0.4))
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    errors: list[dict] = []
    frames = list(read_frames(broken, errors=errors))
    times = [f.time for f in frames]
    assert times == sorted(times) and [f.index for f in frames] == list(range(len(frames)))
    assert len(errors) == 1 and "Errno" not in errors[0]["error"]
    lost = errors[0]["frames_lost"]
    assert lost == 100 - len(frames) and lost > 0 and f"{lost} of 100" in errors[0]["error"]
    assert times[-1] > 3.5  # frames after the damage are still decoded


def test_checkpoints_are_readable_by_the_group(tmp_path):
    import torch

    from models.build import build_model
    from models.checkpoint import save_checkpoint
    from tests.conftest import tiny_card

    old = os.umask(0o022)
    try:
        card = tiny_card()
        weights = save_checkpoint(tmp_path / "m", build_model(**card["model"]), card, train_state={"a": torch.zeros(1)})
    finally:
        os.umask(old)
    for f in (weights, weights.with_name("m.json"), weights.with_name("m.state.safetensors")):
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f


def test_a_resumed_run_continues_the_earlier_runs_logs_in_its_own_folder(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from training.logs import continue_logs

    first = tmp_path / "first"
    (first / "checkpoints").mkdir(parents=True)
    (first / "metrics.csv").write_text("epoch,loss\n1,0.9\n2,0.8\n3,0.7\n")
    w = SummaryWriter(str(first / "tb"))
    for e in (1, 2, 3):
        w.add_scalar("loss", 1 - e / 10, e)
    w.close()
    second = tmp_path / "second"
    second.mkdir()
    note = continue_logs(first / "checkpoints" / "last", second, start_epoch=3)
    # epoch 3 of the first run was not saved in `last` (the resumed run redoes it): only epochs 1-2 are carried
    assert (second / "metrics.csv").read_text() == "epoch,loss\n1,0.9\n2,0.8\n"
    assert list((second / "tb").glob("events.*")) and str(first) in note
    assert json.loads((second / "resumed_from.json").read_text())["run"] == str(first)


def test_a_still_image_has_no_time_in_its_summary(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    failures = infer_in_process(
        f"input={one_image(tmp_path)}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}", "review.threshold=0.01"
    )
    assert failures == [], failures  # exit code 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["largest_lesion"] and "time" not in summary["largest_lesion"]
    rec = json.loads((out / "predictions.jsonl").read_text().splitlines()[0])
    assert "time" not in rec


def test_a_folder_of_still_images_gets_a_gallery_report(tmp_path, tiny_checkpoint):
    from tests.conftest import html_tags

    src = image_folder(tmp_path / "stills", ["b", "a", "<img src=x onerror=alert(1)>"], seed=1, size=(64, 80))
    out = tmp_path / "out"
    failures = infer_in_process(
        f"input={src}", f"out_dir={out}", f"checkpoint={tiny_checkpoint}", "review.threshold=0.01"
    )
    assert failures == [], failures  # exit code 0
    html = (out / "report.html").read_text()
    imgs = [a["src"] for t, a in html_tags(html) if t == "img"]
    assert len(imgs) == 3 and all((out / __import__("urllib.parse").parse.unquote(s)).is_file() for s in imgs)
    assert not any("onerror" in a for _, a in html_tags(html))  # the hostile name stays text
    assert "Research use only" in html and "lesion" in html.lower()
    assert html.count('class="still"') == 3
