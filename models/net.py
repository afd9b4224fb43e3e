"""EndoNet: an smp encoder-decoder plus configured attribute heads; ``forward`` returns a dict keyed by head."""
from __future__ import annotations

import torch
from torch import nn

from models.heads import AttributeHead


class EndoNet(nn.Module):
    """x: B x 3 x H x W normalised float (H, W multiples of 32) -> {"mask": B x 1 x H x W logits, head: B x K}.

    seg: a segmentation_models_pytorch model (its encoder, decoder and segmentation_head are used directly).
    heads: name -> AttributeHead; empty for a segmentation-only model.
    """

    def __init__(self, seg: nn.Module, heads: dict[str, AttributeHead] | None = None) -> None:
        super().__init__()
        self.seg = seg
        self.heads = nn.ModuleDict(heads or {})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h, w = x.shape[-2:]
        stride = self.seg.encoder.output_stride
        if h % stride or w % stride:
            raise ValueError(f"input {w}x{h} must be a multiple of {stride} on each side (resize or pad it)")
        features = self.seg.encoder(x)
        mask = self.seg.segmentation_head(self.seg.decoder(features))
        out = {"mask": mask}
        for name, head in self.heads.items():
            out[name] = head(features[-1], mask)
        return out
