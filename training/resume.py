"""Resuming a training run: what a 'last' checkpoint carries besides the weights (optimiser moments, scheduler,
EMA weights, RNG) and how an epoch's end writes ``best`` and ``last``. The files themselves are models/checkpoint.py's:
tensors in NAME.state.safetensors, the rest in the card's ``resume`` entry, all stamped with one save id."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from core.errors import UserError
from models.checkpoint import check_same_save, checkpoint_stem, load_checkpoint, read_card, save_checkpoint


def training_state(
    optimizer: torch.optim.Optimizer, scheduler: Any, ema: Any, *, epoch: int, best: float
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What resuming needs: tensors for NAME.state.safetensors and the card's ``resume`` entry."""
    opt_t, opt_rest = optimizer_to_tensors(optimizer)
    ema_t = {f"ema/{k}": v for k, v in ema.shadow.items()} if ema is not None else {}
    return (
        {**opt_t, **ema_t, "rng/torch": torch.get_rng_state()},
        {"epoch": epoch, "best": best, "optimizer": opt_rest, "scheduler": scheduler.state_dict()},
    )


def save_epoch(
    ckpt_dir: Path,
    model: nn.Module,
    card: dict[str, Any],
    *,
    score: float,
    best: float,
    ema_backup: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    ema: Any,
    epoch: int,
) -> float:
    """End of an epoch (rank 0). ``model`` holds the evaluated weights (the EMA's when ``ema_backup`` holds the raw
    ones): they become ``best`` when ``score`` beats it; then the raw weights are put back and saved as ``last``
    with what resuming needs. Returns the best score so far."""
    if score > best:
        best = score
        save_checkpoint(ckpt_dir / "best", model, card)
    if ema_backup is not None:
        model.load_state_dict(ema_backup)
    state, card["resume"] = training_state(optimizer, scheduler, ema, epoch=epoch, best=best)
    save_checkpoint(ckpt_dir / "last", model, card, train_state=state)
    return best


def restore_training(
    path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, ema: Any
) -> tuple[int, float]:
    """Load a 'last' checkpoint's weights, optimiser, scheduler, EMA and RNG into the given objects; return the
    epoch to start from and the best score so far."""
    resumed, card = load_checkpoint(path)
    if not card.resume:
        raise UserError(f"trainer.resume={path} has no resume state: resume from a 'last' checkpoint")
    model.load_state_dict(resumed.state_dict())
    state = load_train_state(path)
    optimizer_from_tensors(optimizer, state, card.resume["optimizer"])
    scheduler.load_state_dict(card.resume["scheduler"])
    if ema is not None:
        ema.shadow = {k[4:]: v.float() for k, v in state.items() if k.startswith("ema/")} or ema.shadow
    torch.set_rng_state(state["rng/torch"])
    return card.resume["epoch"] + 1, card.resume["best"]


def load_train_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a 'last' checkpoint's NAME.state.safetensors, refused when they come from another save."""
    stem = checkpoint_stem(path)
    p = stem.with_name(stem.name + ".state.safetensors")
    if not p.is_file():
        raise UserError(f"resume state not found: {p} (resume from a 'last' checkpoint written by train.py)")
    check_same_save(p, read_card(stem))
    return load_file(str(p))


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors (for safetensors) and a JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim/{pid}/{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], rest: dict[str, Any]):
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim/"):
            _, pid, k = key.split("/", 2)
            state.setdefault(int(pid), {})[k] = v
    for pid, d in rest.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(d)
    opt.load_state_dict({"state": state, "param_groups": rest["param_groups"]})
