"""Device, precision and seeding shared by training and inference (typed arguments, no Hydra)."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

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
