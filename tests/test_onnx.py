"""ONNX export: the file ONNX Runtime runs gives the PyTorch model's probabilities and masks."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from data.io import read_image
from data.video import read_frames
from tests.conftest import ROOT, run_script

SHIPPED = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install .)")


@pytest.mark.skipif(not SHIPPED.with_suffix(".safetensors").is_file(), reason="shipped model not found")
def test_onnx_matches_pytorch_on_the_bundled_samples(tmp_path):
    from models.export import main as export_main
    from models.predictor import Predictor

    for ext in (".safetensors", ".json"):
        shutil.copyfile(SHIPPED.with_suffix(ext), tmp_path / f"m{ext}")
    export_main(["--onnx", "--dst", str(tmp_path / "m")])  # python -m models.export --onnx, in this process
    frames = [f.image for f in read_frames(ROOT / "samples" / "clinicdb_seq6.mp4")]
    frames += [read_image(f) for f in sorted((ROOT / "samples" / "images").iterdir())]
    torch_pred = Predictor.from_checkpoint(tmp_path / "m", device="cpu", precision="fp32")
    onnx_pred = Predictor.from_checkpoint(tmp_path / "m", backend="onnxruntime")
    worst, differing = 0.0, 0
    for i in range(0, len(frames), 8):
        for a, b in zip(torch_pred.predict(frames[i : i + 8]), onnx_pred.predict(frames[i : i + 8])):
            worst = max(worst, float(np.abs(a.prob - b.prob).max()))
            differing += int(((a.prob >= 0.5) != (b.prob >= 0.5)).sum())
            assert np.allclose(a.heads["small_sessile"], b.heads["small_sessile"], atol=1e-4)
    assert len(frames) == 27 and worst < 1e-3 and differing == 0, (worst, differing)
    # a file from another save of the checkpoint is refused
    (tmp_path / "m.json").write_text((tmp_path / "m.json").read_text().replace('"save_id": "', '"save_id": "x'))
    p = run_script("infer.py", f"checkpoint={tmp_path / 'm'}", "backend=onnxruntime", f"out_dir={tmp_path / 'o'}")
    assert p.returncode == 2 and "another save" in p.stderr
