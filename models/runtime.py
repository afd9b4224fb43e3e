"""Device, precision and distributed set-up shared by the entry scripts (typed arguments, no Hydra)."""

from __future__ import annotations

import contextlib
import math
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from core.errors import UserError


def pick_device(name: str = "auto") -> torch.device:
    """'auto' picks cuda > mps > cpu; otherwise the named device, checked to exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device '{name}' requested but CUDA is not available (use device=auto or cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device '{name}' is not a device name (use auto, cpu, cuda, cuda:1, mps)") from None


def autocast(device: torch.device, precision: str):
    """Context for mixed precision. precision: fp32 | bf16 | fp16 (fp16 only on CUDA)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("bf16", "fp16"):
        raise UserError(f"precision '{precision}' is unknown (use fp32, bf16 or fp16)")
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision=fp16 needs CUDA; use bf16 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init_distributed() -> tuple[int, int, int]:
    """Join a process group when launched by torchrun or SLURM srun; return (rank, local_rank, world_size).

    torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR; under plain ``srun`` we map SLURM_* onto them
    (MASTER_ADDR must then be exported by the batch script, see README).
    """
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        os.environ["RANK"] = os.environ["SLURM_PROCID"]
        os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
        os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")
        os.environ.setdefault("MASTER_PORT", "29500")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 0, 1
    if not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend=backend)
    return torch.distributed.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), world


def warmup_cosine(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int = 0, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_steps`` then cosine decay to ``min_lr_ratio`` x lr at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class ModelEMA:
    """Exponential moving average of a model's floating-point state (weights and BN statistics)."""

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - self.decay)

    def copy_to(self, model: nn.Module) -> dict[str, Any]:
        """Load the EMA weights into ``model``; return the previous state so it can be restored."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict({**backup, **{k: v.to(backup[k].dtype) for k, v in self.shadow.items()}})
        return backup


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


def log_epoch(csv_path: Any, writer: Any, epoch: int, stats: dict[str, float]) -> None:
    """Append one epoch's stats to metrics.csv, TensorBoard and stdout."""
    import csv

    row = {"epoch": epoch, **{k: round(v, 6) for k, v in stats.items()}}
    new = not csv_path.exists()
    with csv_path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    for k, v in stats.items():
        writer.add_scalar(k, v, epoch)
    print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


def to_device(batch: dict, device: torch.device, channels_last: bool) -> dict:
    """A training batch (data.datasets' sample contract, collated) on ``device``."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    out = {
        "image": batch["image"].to(device, memory_format=fmt),
        "mask": batch["mask"].to(device),
        "has_mask": batch["has_mask"].to(device),
        "labels": {k: v.to(device) for k, v in batch["labels"].items()},
    }
    return out | {k: batch[k].to(device) for k in ("covariates", "poor_quality") if k in batch}
