"""The training loop's parts: distributed set-up, the learning-rate schedule, the EMA of the weights, batches on
the device (with the multi-scale draw), and the model in and out of a DDP wrapper."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.settings import Bool, Choice, Num, Scales, Text, section, setting
from models.predictor_settings import PRECISIONS


@dataclass(kw_only=True)
class EmaSettings:
    """``trainer.ema.*``: the moving average of the weights (ModelEMA) that validation and checkpoints use."""

    enabled: bool = setting(Bool())
    decay: float = setting(Num(0, 1, hi_open=True))


@dataclass(kw_only=True)
class TrainerSettings:
    """``trainer.*`` (configs/trainer/default.yaml holds the defaults): how train.py runs its loop."""

    max_epochs: int = setting(Num(1, integer=True))
    device: str = setting(Text())
    precision: str = setting(Choice(PRECISIONS))
    channels_last: bool = setting(Bool())
    threads: int | None = setting(Num(1, 1024, integer=True, nullable=True))
    grad_clip: float | None = setting(Num(0, lo_open=True, nullable=True))
    ema: EmaSettings = section(EmaSettings)
    multiscale: list[float] | None = setting(Scales())  # rescale_batch's scale factors
    resume: str | None = setting(Text(nullable=True))
    progress: bool = setting(Bool())
    max_steps_per_epoch: int | None = setting(Num(1, integer=True, nullable=True))
    init_from: str | None = setting(Text(nullable=True))
    freeze: str | None = setting(Choice(("segmentation",), nullable=True))  # training.prepare's
    n_boot: int = setting(Num(0, 100000, integer=True))
    select_on: str | None = setting(Text(nullable=True))  # a head, checked by training.prepare.declare_labels


@dataclass(kw_only=True)
class OptimizerSettings:
    """``optim.optimizer.*``: the rules of the keys every optimizer takes; the class's own others are the user's."""

    lr: float = setting(Num(0, 10, lo_open=True))
    weight_decay: float = setting(Num(0, 10))


@dataclass(kw_only=True)
class SchedulerSettings:
    """``optim.scheduler.*``: warmup_cosine's floor; another scheduler's own keys are the user's."""

    min_lr_ratio: float = setting(Num(0, 1))


@dataclass(kw_only=True)
class OptimSettings:
    """``optim.*`` (configs/optim/ holds the defaults)."""

    optimizer: OptimizerSettings = section(OptimizerSettings, open_keys=True)
    scheduler: SchedulerSettings = section(SchedulerSettings, open_keys=True)
    warmup_epochs: int = setting(Num(0, integer=True))


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


def wrap_distributed(model: nn.Module, device: torch.device, local_rank: int, world_size: int) -> nn.Module:
    """The model in a DistributedDataParallel wrapper when several processes train (else the model itself)."""
    if world_size <= 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if hasattr(model, "module") else model


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


def rescale_batch(batch: dict, scales: Sequence[float], size: int) -> dict:
    """Multi-scale training: resize a device batch's images and masks to one randomly drawn scale of ``size``
    (kept a multiple of 32); the draw uses torch's global generator, so a seeded epoch repeats it."""
    rate = float(scales[torch.randint(len(scales), ()).item()])
    side = max(32, int(round(size * rate / 32)) * 32)
    if side != batch["image"].shape[-1]:
        batch["image"] = F.interpolate(batch["image"], size=(side, side), mode="bilinear", align_corners=False)
        batch["mask"] = (F.interpolate(batch["mask"], size=(side, side), mode="bilinear") > 0.5).float()
    return batch
