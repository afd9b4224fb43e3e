"""Segmentation and head losses. A loss returns a dict of named terms plus ``total`` (DESIGN.md rule 4)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def structure_loss(logits: torch.Tensor, target: torch.Tensor, *, kernel: int = 31) -> dict[str, torch.Tensor]:
    """PraNet's structure loss: boundary-weighted BCE + boundary-weighted soft IoU, each averaged over the batch.

    logits, target: B x 1 x H x W (target in {0, 1}). Pixels whose local mean (kernel x kernel) differs from their
    own label, i.e. near a boundary, get up to 6x weight.
    """
    target = target.float()
    logits = logits.float()
    weight = 1 + 5 * torch.abs(F.avg_pool2d(target, kernel, stride=1, padding=kernel // 2) - target)
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    wbce = (weight * bce).sum(dim=(2, 3)) / weight.sum(dim=(2, 3))
    prob = torch.sigmoid(logits)
    inter = (prob * target * weight).sum(dim=(2, 3))
    union = ((prob + target) * weight).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return {"wbce": wbce.mean(), "wiou": wiou.mean()}


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> dict[str, torch.Tensor]:
    """Mean BCE over pixels + (1 - soft Dice) per image averaged over the batch. Shapes B x 1 x H x W."""
    target = target.float()
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum(dim=(2, 3))
    dice = (2 * inter + smooth) / (prob.sum(dim=(2, 3)) + target.sum(dim=(2, 3)) + smooth)
    return {"bce": bce, "dice": (1 - dice).mean()}


SEG_LOSSES = {"structure": structure_loss, "dice_bce": dice_bce_loss}


class EndoLoss(nn.Module):
    """Segmentation loss on ``mask`` + cross-entropy on each attribute head (labels of -1 are ignored).

    outputs: model dict; batch: {"mask": B x 1 x H x W, "labels": {head: B long}}. Images without a mask
    (``batch["has_mask"]`` False) do not contribute to the segmentation terms.
    """

    def __init__(self, kind: str = "structure", head_weight: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        if kind not in SEG_LOSSES:
            raise ValueError(f"loss.kind must be one of {sorted(SEG_LOSSES)}, got {kind!r}")
        self.kind = kind
        self.head_weight = head_weight
        self.label_smoothing = label_smoothing

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        logits = outputs["mask"]
        total = logits.new_zeros((), dtype=torch.float32)
        has_mask = batch.get("has_mask")
        if "mask" in batch and (has_mask is None or bool(has_mask.any())):
            sel = slice(None) if has_mask is None else has_mask.bool()
            terms.update(SEG_LOSSES[self.kind](logits[sel], batch["mask"][sel]))
            total = total + sum(terms.values())
        for head, labels in batch.get("labels", {}).items():
            if head not in outputs:
                continue
            known = labels >= 0
            if known.any():
                ce = F.cross_entropy(outputs[head][known].float(), labels[known], label_smoothing=self.label_smoothing)
            else:  # keep the graph connected so DDP sees every parameter used
                ce = outputs[head].sum() * 0.0
            terms[f"ce_{head}"] = ce
            total = total + self.head_weight * ce
        terms["total"] = total
        return terms
