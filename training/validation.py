"""Validation during training: the per-epoch scores (Dice, per-head accuracy and NLL) and the one number that picks
the best epoch."""

from __future__ import annotations

import torch

from metrics.basic import dice_iou_per_image
from models.heads import head_probabilities
from models.runtime import autocast
from training.loop import to_device


@torch.no_grad()
def validate(model, loader, *, device, channels_last: bool, precision: str, kinds: dict[str, str]) -> dict:
    """Mean Dice at 0.5 over frames with a mask; per head accuracy and NLL over frames with a known label."""
    model.eval()
    dices, correct, nll, counted = [], dict.fromkeys(kinds, 0), dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0)
    for batch in loader:
        b = to_device(batch, device, channels_last)
        with autocast(device, precision):
            out = model(b["image"], b.get("covariates"))
        keep = b["has_mask"].bool()
        if keep.any():
            dices.append(dice_iou_per_image(out["mask"][keep] > 0, b["mask"][keep] > 0.5)[0])
        for h, kind in kinds.items():
            known = b["labels"][h] >= 0
            p, y = head_probabilities(out[h][known], kind), b["labels"][h][known]
            correct[h] += int((p.argmax(1) == y).sum())
            nll[h] -= float(torch.log(p.gather(1, y[:, None]).clamp_min(1e-12)).sum())
            counted[h] += int(known.sum())
    stats = {"val/dice": float(torch.cat(dices).mean()) if dices else float("nan")}
    stats.update({f"val/acc_{h}": correct[h] / counted[h] for h in kinds if counted[h]})
    stats.update({f"val/nll_{h}": nll[h] / counted[h] for h in kinds if counted[h]})
    return stats


def selection_score(stats: dict[str, float], *, heads_only: bool, select_on: str | None = None) -> float:
    """The number that picks the best epoch (higher is better): validation Dice, or minus the heads' mean NLL when
    only heads train (the frozen segmenter's Dice cannot change); minus the training loss without validation.
    select_on: one head whose validation NLL alone picks the epoch (a noise head must not pick fibrosis's epoch);
    None or ``all`` = the mean over heads."""
    nlls = [v for k, v in stats.items() if k.startswith("val/nll_")]
    if select_on not in (None, "all") and f"val/nll_{select_on}" in stats:
        nlls = [stats[f"val/nll_{select_on}"]]
    return -sum(nlls) / len(nlls) if heads_only and nlls else stats.get("val/dice", -stats["train/total"])
