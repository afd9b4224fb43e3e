"""The CUDA path, run where a GPU exists (pytest -m gpu; benchmarks/gpu_check.sh). Skipped elsewhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, run_script

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]
SHIPPED = ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"


def test_cuda_fp16_channels_last_matches_cpu_fp32():
    from data.video import read_frames
    from models.predictor import Predictor

    frames = [f.image for f in read_frames(ROOT / "samples" / "clinicdb_seq6.mp4")][:8]
    cpu = Predictor.from_checkpoint(SHIPPED, device="cpu", precision="fp32").predict(frames)
    gpu_pred = Predictor.from_checkpoint(SHIPPED, device="cuda")  # auto: fp16 autocast, channels_last
    assert gpu_pred.precision == "fp16" and gpu_pred.device.type == "cuda"
    gpu = gpu_pred.predict(frames)
    for a, b in zip(cpu, gpu):
        assert np.abs(a.prob - b.prob).max() < 0.05
        x, y = a.prob >= 0.5, b.prob >= 0.5
        assert 2 * (x & y).sum() / max(1, x.sum() + y.sum()) > 0.99


def test_cuda_training_smoke_and_inference(tmp_path):
    p = run_script(
        "train.py",
        "experiment=smoke",
        "trainer.device=cuda",
        "trainer.precision=fp16",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        "trainer.progress=false",
    )
    assert p.returncode == 0, p.stderr[-2000:]
    p = run_script("infer.py", "device=cuda", f"out_dir={tmp_path / 'out'}")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (tmp_path / "out" / "report.html").is_file()
