"""Attribute heads (fibrosis grade, lift quality, ...): what no segmentation library has.

A head reads the deepest encoder features twice, pooled over the whole frame and pooled under the predicted
lesion mask, so that a frame-level grade is driven by the lesion's own appearance (the "white web-like" or
"muscle-like" submucosa sits under and around the lesion) while keeping the context.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AttributeHead(nn.Module):
    """features: B x C x h x w, mask_logits: B x 1 x H x W -> class logits B x n_classes."""

    def __init__(self, in_channels: int, n_classes: int, *, hidden: int = 128, dropout: float = 0.2) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(2 * in_channels, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
        )

    def forward(self, features: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
        weight = torch.sigmoid(mask_logits.detach().float())
        weight = F.interpolate(weight, size=features.shape[-2:], mode="bilinear", align_corners=False)
        feats = features.float()
        global_pool = feats.mean(dim=(2, 3))
        lesion_pool = (feats * weight).sum(dim=(2, 3)) / weight.sum(dim=(2, 3)).clamp_min(1e-3)
        return self.mlp(torch.cat([global_pool, lesion_pool], dim=1).to(self.mlp[0].weight.dtype))
