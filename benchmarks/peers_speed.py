"""Model-only speed of peers beside the shipped model, one process, random weights (speed only).

python benchmarks/peers_speed.py [--size N (default: the shipped checkpoint's input size)] [--reps 3]
Models: the shipped U-Net/MobileNetV2 (slim decoder), smp U-Net ResNet-34, a U-Net with a ResNet-50 encoder and
one with a Res2Net-50 encoder (timm, PraNet's backbone), at batch 1 and 8, fp32 and bf16 (+ channels_last); each
printed as images/s and as a ratio to the shipped model in the same setting.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from models.build import build_model  # noqa: E402
from models.checkpoint import read_card  # noqa: E402
from models.runtime import autocast  # noqa: E402

PEERS = {
    "shipped U-Net MobileNetV2 (slim)": dict(encoder="mobilenet_v2", decoder={"decoder_channels": [96, 64, 32, 16, 8]}),
    "smp U-Net ResNet-34": dict(encoder="resnet34"),
    "U-Net ResNet-50": dict(encoder="resnet50"),
    "U-Net Res2Net-50 (PraNet's backbone)": dict(encoder="tu-res2net50_26w_4s"),
}


def rate(model: torch.nn.Module, batch: int, size: int, precision: str, reps: int) -> float:
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), autocast(torch.device("cpu"), precision):
        model(x)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x)
    return batch * reps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=None, help="input side (default: the shipped model's)")
    ap.add_argument("--reps", type=int, default=3)
    a = ap.parse_args()
    if a.size is None:
        a.size = read_card(ROOT / "checkpoints" / "endolift_polyp_unet_mnv2").input.size
    models = {}
    for name, kw in PEERS.items():
        m = build_model(arch="unet", weights=None, **kw).eval().to(memory_format=torch.channels_last)
        models[name] = (m, sum(p.numel() for p in m.parameters()) / 1e6)
    print(f"{torch.get_num_threads()} threads, {a.size}x{a.size}")
    for batch in (1, 8):
        for precision in ("fp32", "bf16"):
            base = None
            for name, (m, params) in models.items():
                r = rate(m, batch, a.size, precision, a.reps)
                base = base or r
                print(f"batch {batch} {precision}  {name:38s} {params:5.1f} M  {r:7.1f} images/s  x{r / base:.2f}")


if __name__ == "__main__":
    main()
