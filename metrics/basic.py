"""Per-image overlap scores on binary masks (numpy or torch), the building block of the metric objects."""

from __future__ import annotations

import torch

from models.heads import head_probabilities
from models.runtime import autocast, to_device


def dice_iou_per_image(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pred, target: B x 1 x H x W (or B x H x W) booleans -> (dice B, iou B).

    Empty prediction and empty truth on the same image scores 1 (a correct "no lesion"); one empty and the other
    not scores 0. No image is ever dropped from an average.
    """
    p = pred.reshape(pred.shape[0], -1).bool()
    t = target.reshape(target.shape[0], -1).bool()
    inter = (p & t).sum(1).float()
    ps, ts = p.sum(1).float(), t.sum(1).float()
    union = ps + ts - inter
    both_empty = (ps + ts) == 0
    dice = torch.where(both_empty, torch.ones_like(inter), 2 * inter / (ps + ts).clamp_min(1))
    iou = torch.where(both_empty, torch.ones_like(inter), inter / union.clamp_min(1))
    return dice, iou


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
