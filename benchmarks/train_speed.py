"""Training throughput (images/s) of one optimiser step on random data: fp32 vs bf16 (+ channels_last).

python benchmarks/train_speed.py [--size 352] [--batch 16] [--steps 5]
Prints each mode's images/s and its ratio to the fp32 baseline measured in the same process.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.build import build_model  # noqa: E402
from models.losses import EndoLoss  # noqa: E402
from models.runtime import autocast  # noqa: E402


def run(mode: str, size: int, batch: int, steps: int, arch: str, encoder: str) -> float:
    torch.manual_seed(0)
    model = build_model(arch=arch, encoder=encoder, weights=None)
    cl = mode.endswith("+cl")
    precision = mode.split("+")[0]
    fmt = torch.channels_last if cl else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = EndoLoss("structure")
    x = torch.randn(batch, 3, size, size).to(memory_format=fmt)
    y = (torch.rand(batch, 1, size, size) > 0.7).float()
    dev = torch.device("cpu")
    times = []
    for i in range(steps + 1):  # first step is warm-up
        t0 = time.perf_counter()
        with autocast(dev, precision):
            out = model(x)
        loss = loss_fn(out, {"mask": y})["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return batch / (sum(times) / len(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=352)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="mobilenet_v2")
    a = ap.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, {a.arch}/{a.encoder} {a.size}px batch {a.batch}"
    )
    base = None
    for mode in ("fp32", "fp32+cl", "bf16", "bf16+cl"):
        ips = run(mode, a.size, a.batch, a.steps, a.arch, a.encoder)
        base = base or ips
        print(f"{mode:8s} {ips:7.2f} images/s  x{ips / base:.2f} vs fp32")


if __name__ == "__main__":
    main()
