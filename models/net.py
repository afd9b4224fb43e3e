"""EndoNet: an smp encoder-decoder plus configured attribute heads; ``forward`` returns a dict keyed by head.
Also the inference-time BatchNorm folding of such a network (``fold_batchnorm``)."""

from __future__ import annotations

import torch
from torch import nn

from models.heads import AttributeHead


class EndoNet(nn.Module):
    """x: B x 3 x H x W normalised float (H, W multiples of 32) -> {"mask": B x 1 x H x W logits, head: B x m}.

    seg: a segmentation_models_pytorch model (its encoder, decoder and segmentation_head are used directly).
    heads: name -> AttributeHead; empty for a segmentation-only model.
    covariates (forward): B x n_cov clinical covariates (NaN = missing), used by heads configured to read them.

    ``freeze_segmentation()`` fixes the encoder, decoder and mask head (no gradients, BatchNorm statistics kept,
    run without autograd): only the heads train. That is how a head is added on top of a shipped segmenter
    without the segmentation data and without changing its masks.
    """

    def __init__(self, seg: nn.Module, heads: dict[str, AttributeHead] | None = None) -> None:
        super().__init__()
        self.seg = seg
        self.heads = nn.ModuleDict(heads or {})
        self.segmentation_frozen = False

    def freeze_segmentation(self) -> EndoNet:
        self.segmentation_frozen = True
        for p in self.seg.parameters():
            p.requires_grad_(False)
        self.seg.eval()
        return self

    def mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The mask logits alone (B x 1 x H x W), without the heads: an ensemble member's share of a prediction."""
        self.seg.check_input_shape(x)
        return self.seg.segmentation_head(self.seg.decoder(self.seg.encoder(x)))

    def train(self, mode: bool = True) -> EndoNet:
        super().train(mode)
        if self.segmentation_frozen:
            self.seg.eval()
        return self

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        self.seg.check_input_shape(x)  # smp's own rule per architecture (sides divisible by the output stride)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.segmentation_frozen):
            features = self.seg.encoder(x)
            mask = self.seg.segmentation_head(self.seg.decoder(features))
        out = {"mask": mask}
        for name, head in self.heads.items():
            out[name] = head(features, mask, covariates)
        return out


def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold every BatchNorm2d that directly follows a Conv2d inside an nn.Sequential into that conv (eval only).

    Inference-time only: the outputs are unchanged up to float rounding, and the BN pass (about 15% of a
    MobileNetV2-U-Net forward on CPU) disappears. Returns how many BN layers were folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    n = 0
    for seq in [m for m in model.modules() if isinstance(m, torch.nn.Sequential)]:
        names = list(seq._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = seq._modules[a], seq._modules[b]
            if isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d):
                seq._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                seq._modules[b] = torch.nn.Identity()
                n += 1
    return n
