"""Per-image overlap scores on binary masks (numpy or torch), the building block of the metric objects."""

from __future__ import annotations

import torch


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
