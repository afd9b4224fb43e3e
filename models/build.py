"""Model factory: segmentation_models_pytorch's own factory for the segmenter, plus our heads (docs/ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import segmentation_models_pytorch as smp

from core.errors import UserError
from core.settings import Choice, Free, Num, Text, setting
from models.heads import INPUTS, AttributeHead, parse_heads
from models.net import EndoNet
from models.weights import load_encoder_weights, resolve_weights

# smp architectures whose encoder -> decoder -> segmentation_head path EndoNet drives (tested in tests/test_models.py)
ARCHITECTURES = ("unet", "unetplusplus", "fpn", "deeplabv3plus")


@dataclass(kw_only=True)
class ModelSettings:
    """``model.*`` (configs/model/default.yaml holds the defaults): build_model's keyword arguments and their rules.
    The encoder is any smp encoder name (smp says which exist); heads and covariates are the user's names, checked
    by models.heads.parse_heads; decoder is the smp class's own keyword arguments."""

    arch: str = setting(Choice(ARCHITECTURES))
    encoder: str = setting(Text())
    weights: str | None = setting(Text(nullable=True))  # imagenet (a local file) | a file path | null
    weights_path: str | None = setting(Text(nullable=True))
    weights_dirs: list[str] = setting(Free())  # paths.weights_dirs
    heads: dict[str, Any] = setting(Free(open_keys=True))
    head_hidden: int = setting(Num(1, integer=True))
    head_dropout: float = setting(Num(0, 1, hi_open=True))
    head_levels: int = setting(Num(1, 5, integer=True))
    head_inputs: str = setting(Choice(INPUTS))
    covariates: list[str] = setting(Free(open_keys=True))
    ring_fraction: float = setting(Num(0, 0.5, lo_open=True))
    decoder: dict[str, Any] = setting(Free(open_keys=True))


def build_model(
    *,
    arch: str = "unet",
    encoder: str = "mobilenet_v2",
    weights: str | None = None,
    weights_path: str | None = None,
    weights_dirs: Sequence[str] = (),
    heads: dict[str, Any] | None = None,
    head_hidden: int = 128,
    head_dropout: float = 0.2,
    head_levels: int = 2,
    head_inputs: str = "image",
    covariates: Sequence[str] = (),
    ring_fraction: float = 0.08,
    decoder: dict[str, Any] | None = None,
) -> EndoNet:
    """Build encoder -> decoder -> heads.

    arch: one of ARCHITECTURES. encoder: any smp encoder name (mobilenet_v2, resnet34, efficientnet-b0,
    tu-<timm name>, ...). weights: 'imagenet' (resolved to a local file), a file path, or None.
    heads: head name -> class names or {classes, kind, class_weights} (models/heads.py), e.g.
        {"fibrosis": ["F0", "F1", "F2"]}. head_levels: how many of the deepest encoder levels the heads pool.
    head_inputs: image | covariates | fused; covariates: names of the clinical covariate columns heads may read.
    ring_fraction: width of the peri-lesional ring, as a fraction of the input side. decoder: smp class kwargs.
    """
    if arch not in ARCHITECTURES:
        raise UserError(f"model.arch '{arch}' is unknown: use one of {list(ARCHITECTURES)}")
    try:
        seg = smp.create_model(arch, encoder_name=encoder, encoder_weights=None, classes=1, **(decoder or {}))
    except KeyError as e:
        raise UserError(f"model.encoder '{encoder}' is unknown to segmentation_models_pytorch ({e})") from None
    except (TypeError, ValueError) as e:
        raise UserError(f"model.decoder settings do not fit {arch}: {e}") from None
    path = resolve_weights(encoder, weights, weights_path=weights_path, weights_dirs=weights_dirs)
    if path is not None:
        load_encoder_weights(seg.encoder, path)
    if not 1 <= head_levels <= len(seg.encoder.out_channels) - 1:
        raise UserError(f"model.head_levels must be 1..{len(seg.encoder.out_channels) - 1}, got {head_levels}")
    in_ch = list(seg.encoder.out_channels[-head_levels:])
    built = {
        name: AttributeHead(
            in_ch,
            spec.n_outputs,
            n_covariates=len(covariates),
            inputs=head_inputs,
            hidden=head_hidden,
            dropout=head_dropout,
            ring_fraction=ring_fraction,
        )
        for name, spec in parse_heads(heads).items()
    }
    return EndoNet(seg, built)
