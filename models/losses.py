"""Segmentation and head losses. A loss returns a dict of named terms plus ``total``
(docs/ARCHITECTURE.md, house rule 4)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.settings import Choice, Num, setting
from data.quality import MIN_LESION_FRACTION, is_informative


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


@dataclass(kw_only=True)
class LossSettings:
    """``loss.*`` (configs/loss/ holds the defaults): EndoLoss's settings and their rules. The informative-frame
    threshold is not here: it is data.min_lesion_fraction, the one that calibration, evaluation and the report
    read from the checkpoint's card too (train.py passes it)."""

    kind: str = setting(Choice(tuple(SEG_LOSSES)))
    head_weight: float = setting(Num(0))
    label_smoothing: float = setting(Num(0, 1, hi_open=True))
    uninformative_weight: float = setting(Num(0, 1))  # head-loss weight of an uninformative frame (0 = skipped)


class EndoLoss(nn.Module):
    """Segmentation loss on ``mask`` + one loss per attribute head (labels of -1 are ignored).

    Heads: cross-entropy for nominal heads, CORN for ordinal ones (models/heads.py), with optional class weights.
    outputs: model dict; batch: {"mask": B x 1 x H x W, "has_mask": B bool, "labels": {head: B long},
    "poor_quality": B bool (optional)}. Images without a mask do not contribute to the segmentation terms.

    Frame informativeness for the heads (data.quality.is_informative, the rule calibration, evaluation and the
    report use too): a frame whose lesion covers less than ``min_lesion_fraction`` of the image (from its mask when
    it has one, else from the model's own prediction) or that is flagged poor quality (blurry or over-exposed)
    weighs ``uninformative_weight`` in the head losses (0 = skipped).
    Case-level labels make this matter: every frame of a case carries the case's grade, including the frames that
    do not show the lesion.
    segmentation: False leaves the segmentation terms out (a frozen segmenter).
    """

    def __init__(
        self,
        kind: str = "structure",
        head_weight: float = 0.5,
        label_smoothing: float = 0.0,
        *,
        heads: dict[str, Any] | None = None,
        min_lesion_fraction: float = MIN_LESION_FRACTION,
        uninformative_weight: float = 1.0,
        segmentation: bool = True,
    ) -> None:
        super().__init__()
        from models.heads import parse_heads

        if kind not in SEG_LOSSES:
            raise ValueError(f"loss.kind must be one of {sorted(SEG_LOSSES)}, got {kind!r}")
        self.kind = kind
        self.head_weight = head_weight
        self.label_smoothing = label_smoothing
        self.specs = parse_heads(heads)
        self.min_lesion_fraction = min_lesion_fraction
        self.uninformative_weight = uninformative_weight
        self.segmentation = segmentation

    def frame_weights(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> torch.Tensor:
        logits = outputs["mask"].detach()
        weights = torch.ones(logits.shape[0], device=logits.device)
        if self.uninformative_weight >= 1.0:
            return weights
        frac = (logits > 0).float().mean(dim=(1, 2, 3))
        if "mask" in batch and batch.get("has_mask") is not None:
            has = batch["has_mask"].bool()
            frac = torch.where(has, batch["mask"].float().mean(dim=(1, 2, 3)), frac)
        poor = batch["poor_quality"].bool() if batch.get("poor_quality") is not None else torch.zeros_like(frac).bool()
        informative = is_informative(frac, poor, min_lesion_fraction=self.min_lesion_fraction)
        return torch.where(informative, weights, torch.full_like(weights, self.uninformative_weight))

    def forward(self, outputs: dict[str, torch.Tensor], batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        from models.heads import corn_loss

        terms: dict[str, torch.Tensor] = {}
        logits = outputs["mask"]
        total = logits.new_zeros((), dtype=torch.float32)
        has_mask = batch.get("has_mask")
        if self.segmentation and "mask" in batch and (has_mask is None or bool(has_mask.any())):
            sel = slice(None) if has_mask is None else has_mask.bool()
            terms.update(SEG_LOSSES[self.kind](logits[sel], batch["mask"][sel]))
            total = total + sum(terms.values())
        heads_present = [h for h in batch.get("labels", {}) if h in outputs]
        weights = self.frame_weights(outputs, batch) if heads_present else None
        for head in heads_present:
            labels = batch["labels"][head]
            spec = self.specs.get(head)
            known = (labels >= 0) & (weights > 0)
            out = outputs[head].float()
            if not known.any():  # keep the graph connected so DDP sees every parameter used
                loss = out.sum() * 0.0
            else:
                y, w, z = labels[known], weights[known], out[known]
                if spec is not None and spec.class_weights is not None:
                    w = w * torch.tensor(spec.class_weights, device=w.device)[y]
                if spec is not None and spec.kind == "ordinal":
                    loss = corn_loss(z, y, w)
                else:
                    ce = F.cross_entropy(z, y, label_smoothing=self.label_smoothing, reduction="none")
                    loss = (ce * w).sum() / w.sum().clamp_min(1e-6)
            terms[f"{'corn' if spec is not None and spec.kind == 'ordinal' else 'ce'}_{head}"] = loss
            total = total + self.head_weight * loss
        terms["total"] = total
        return terms
