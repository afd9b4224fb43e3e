"""Model factory: a plain dict lookup of smp architectures + our heads (DESIGN.md rule 8)."""
from __future__ import annotations

from typing import Any, Sequence

import segmentation_models_pytorch as smp

from data.errors import UserError
from models.heads import AttributeHead
from models.net import EndoNet
from models.weights import load_encoder_weights, resolve_weights

ARCHITECTURES = {
    "unet": smp.Unet,
    "fpn": smp.FPN,
    "deeplabv3plus": smp.DeepLabV3Plus,
    "unetplusplus": smp.UnetPlusPlus,
}


def build_model(*, arch: str = "unet", encoder: str = "mobilenet_v2", weights: str | None = None,
                weights_path: str | None = None, weights_dirs: Sequence[str] = (),
                heads: dict[str, Sequence[str]] | None = None, head_hidden: int = 128, head_dropout: float = 0.2,
                decoder: dict[str, Any] | None = None) -> EndoNet:
    """Build encoder -> decoder -> heads.

    arch: one of ARCHITECTURES. encoder: any smp encoder name (mobilenet_v2, resnet34, efficientnet-b0,
    tu-<timm name>, ...). weights: 'imagenet' (resolved to a local file), a file path, or None.
    heads: head name -> class names, e.g. {"fibrosis": ["F0", "F1", "F2"]}. decoder: extra kwargs for the smp class.
    """
    if arch not in ARCHITECTURES:
        raise UserError(f"model.arch '{arch}' is unknown: use one of {sorted(ARCHITECTURES)}")
    try:
        seg = ARCHITECTURES[arch](encoder_name=encoder, encoder_weights=None, classes=1, **(decoder or {}))
    except KeyError as e:
        raise UserError(f"model.encoder '{encoder}' is unknown to segmentation_models_pytorch ({e})") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"model.decoder settings do not fit {arch}: {e}") from None
    path = resolve_weights(encoder, weights, weights_path=weights_path, weights_dirs=weights_dirs)
    if path is not None:
        load_encoder_weights(seg.encoder, path)
    in_ch = seg.encoder.out_channels[-1]
    built = {name: AttributeHead(in_ch, len(classes), hidden=head_hidden, dropout=head_dropout)
             for name, classes in (heads or {}).items()}
    return EndoNet(seg, built)
