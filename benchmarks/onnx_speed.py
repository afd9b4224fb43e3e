"""ONNX Runtime vs PyTorch on this machine: model-only images/s at the checkpoint's input size, one process.

python benchmarks/onnx_speed.py [--checkpoint checkpoints/endolift_polyp_unet_mnv2] [--reps 10]
Needs CHECKPOINT.onnx (python -m models.export --onnx --dst CHECKPOINT); CHECKPOINT.int8.onnx is timed too when
present. Prints images/s for PyTorch fp32, PyTorch bf16 autocast (+ channels_last, BatchNorm folded, as infer.py
runs it), ONNX Runtime fp32 and int8 (CPU provider), at
batch 1 and 8, each as a ratio to PyTorch fp32 at the same batch. Machines are noisy: compare the ratios.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.predictor import Predictor  # noqa: E402
from models.runtime import autocast  # noqa: E402


def rate(fn, x: torch.Tensor, reps: int) -> float:
    with torch.no_grad():
        fn(x)  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            fn(x)
    return x.shape[0] * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"))
    ap.add_argument("--reps", type=int, default=10)
    a = ap.parse_args()
    torch_pred = Predictor.from_checkpoint(a.checkpoint, device="cpu", precision="fp32")
    ort_pred = Predictor.from_checkpoint(a.checkpoint, backend="onnxruntime")
    int8 = Path(a.checkpoint + ".int8.onnx").is_file()
    ort8 = Predictor.from_checkpoint(a.checkpoint, backend="onnxruntime-int8") if int8 else None
    s = torch_pred.size
    print(f"{torch.get_num_threads()} threads, input {s}x{s}")
    for batch in (1, 8):
        x = torch.randn(batch, 3, s, s)
        xcl = x.contiguous(memory_format=torch.channels_last)

        def bf16(t):
            with autocast(torch.device("cpu"), "bf16"):
                return torch_pred.model(t)

        fp32 = rate(torch_pred.model, xcl, a.reps)
        rows = {
            "pytorch fp32": fp32,
            "pytorch bf16": rate(bf16, xcl, a.reps),
            "onnxruntime fp32": rate(ort_pred.model, x, a.reps),
        }
        if ort8 is not None:
            rows["onnxruntime int8"] = rate(ort8.model, x, a.reps)
        for name, r in rows.items():
            print(f"batch {batch}  {name:18s} {r:7.1f} images/s  x{r / fp32:.2f}")


if __name__ == "__main__":
    main()
