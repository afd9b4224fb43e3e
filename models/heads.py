"""Attribute heads (fibrosis grade, lift quality, proxy labels such as small_sessile): what no segmentation library
has. One place defines what a head is, how its outputs become class probabilities, and how frames become a case.

Configuration (``model.heads``): ``name: [class, ...]`` or ``name: {classes: [...], kind: ordinal|nominal,
class_weights: [...]}``. ``fibrosis`` and ``lift`` are ordinal unless told otherwise, every other head nominal.

- **nominal** heads output K logits: softmax, cross-entropy.
- **ordinal** heads output K-1 logits, trained with the CORN loss (Shi, Cao & Raschka, 2023): logit k models
  P(y > k | y > k-1); class probabilities are differences of the cumulative products, so they are always a valid,
  rank-consistent distribution and give an expected grade. F0 < F1 < F2 and adequate < partial < non-lifting are
  orders, and a loss that knows it wastes fewer of a few hundred labelled cases than plain cross-entropy.

What a head sees (``AttributeHead``): the two deepest encoder levels, each pooled three ways,

- **global**: the whole frame (context: the scope, insufflation, bleeding);
- **lesion**: weighted by the predicted lesion probability (the lesion's own surface);
- **ring**: a band around the predicted lesion (``ring_fraction`` of the input side wide) - where the injection
  cushion lifts or fails to lift the mucosa and where fibrotic submucosa ("white web-like", "muscle-like") shows;

plus the predicted lesion's area fraction and mean probability (size matters clinically and as a proxy), and,
when configured, clinical covariates known before resection (``inputs: covariates | fused``). Missing covariates
(NaN) become 0 after standardisation plus a missing-indicator input, so a case without a value is still scored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError
from models.card import KINDS

ORDINAL_BY_DEFAULT = ("fibrosis", "lift")
INPUTS = ("image", "covariates", "fused")


@dataclass(frozen=True)
class HeadSpec:
    classes: tuple[str, ...]
    kind: str = "nominal"
    class_weights: tuple[float, ...] | None = None

    @property
    def n_outputs(self) -> int:
        return len(self.classes) - 1 if self.kind == "ordinal" else len(self.classes)


def parse_heads(heads: Mapping[str, Any] | None) -> dict[str, HeadSpec]:
    """``model.heads`` (list or dict form, see module doc) -> name -> HeadSpec, checked."""
    out = {}
    for name, value in (heads or {}).items():
        if isinstance(value, Mapping):
            unknown = set(value) - {"classes", "kind", "class_weights"}
            if unknown:
                raise UserError(
                    f"model.heads.{name}: unknown keys {sorted(unknown)} (use classes, kind, class_weights)"
                )
            classes, kind = value.get("classes"), value.get("kind")
            weights = value.get("class_weights")
        else:
            classes, kind, weights = value, None, None
        if not isinstance(classes, Sequence) or isinstance(classes, str) or len(classes) < 2:
            raise UserError(f"model.heads.{name}: give at least two class names, e.g. [F0, F1, F2]")
        kind = kind or ("ordinal" if name in ORDINAL_BY_DEFAULT else "nominal")
        if kind not in KINDS:
            raise UserError(f"model.heads.{name}.kind '{kind}' is unknown: use ordinal or nominal")
        if weights is not None and (len(weights) != len(classes) or any(float(w) <= 0 for w in weights)):
            raise UserError(f"model.heads.{name}.class_weights must be {len(classes)} positive numbers, got {weights}")
        out[name] = HeadSpec(
            tuple(str(c) for c in classes), kind, tuple(float(w) for w in weights) if weights is not None else None
        )
    return out


def head_classes(heads: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """name -> class names, for label parsing (accepts the config form or parsed specs)."""
    return {h: list(s.classes) for h, s in parse_heads(heads).items()}


# --- outputs -> probabilities ------------------------------------------------------------------------------------


def head_probabilities(logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """B x m logits -> B x K class probabilities (rows sum to 1). ``temperature`` > 1 softens (calibration)."""
    z = logits.float() / temperature
    if kind == "nominal":
        return torch.softmax(z, dim=1)
    cum = torch.cumprod(torch.sigmoid(z), dim=1)  # P(y > k), k = 0..K-2, non-increasing
    ones, zeros = torch.ones_like(cum[:, :1]), torch.zeros_like(cum[:, :1])
    upper = torch.cat([ones, cum], dim=1)
    lower = torch.cat([cum, zeros], dim=1)
    return (upper - lower).clamp_min(0.0)


def corn_loss(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """CORN: for each threshold k, binary cross-entropy of "y > k" over the samples with y >= k (the conditional
    training set); mean over all (sample, threshold) pairs, each weighted by its sample's weight.

    logits: B x (K-1); labels: B in 0..K-1 (known labels only); weights: B (default 1).
    """
    k_idx = torch.arange(logits.shape[1], device=logits.device)
    include = labels[:, None] >= k_idx[None, :]
    target = (labels[:, None] > k_idx[None, :]).float()
    w = include.float() * (weights[:, None] if weights is not None else 1.0)
    bce = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (bce * w).sum() / w.sum().clamp_min(1e-6)


def expected_grade(probs: np.ndarray) -> np.ndarray:
    """N x K probabilities -> N expected class index (the ordinal point estimate)."""
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def aggregate_case(
    probs: np.ndarray, informative: np.ndarray, *, min_frames: int = 3, min_confidence: float = 0.0
) -> dict[str, Any]:
    """Frames of one case/video -> one estimate.

    probs: N x K calibrated frame probabilities; informative: N bool (a lesion is visible and the frame is not
    blurry or over-exposed). The case's probabilities are the mean over informative frames; the estimate is their
    argmax and its confidence their max. The case **abstains** (estimate None, "insufficient evidence") when it has
    fewer than ``min_frames`` informative frames or its confidence is below ``min_confidence``.
    """
    informative = np.asarray(informative, bool)
    if len(informative) == 0:
        return {"probs": None, "index": None, "confidence": None, "frames": 0, "abstain": True, "reason": "no frames"}
    probs = np.asarray(probs, dtype=np.float64).reshape(len(informative), -1)
    sel = probs[informative]
    n = len(sel)
    if n == 0:
        return {
            "probs": None,
            "index": None,
            "confidence": None,
            "frames": 0,
            "abstain": True,
            "reason": "no informative frame (no visible lesion, or every frame blurry / over-exposed)",
        }
    mean = sel.mean(axis=0)
    k = int(mean.argmax())
    out = {"probs": mean, "index": k, "confidence": float(mean[k]), "frames": n, "abstain": False, "reason": None}
    if n < min_frames:
        out.update(abstain=True, reason=f"{n} informative frames < {min_frames}")
    elif mean[k] < min_confidence:
        out.update(abstain=True, reason=f"confidence {mean[k]:.2f} < {min_confidence}")
    return out


# --- the head module ---------------------------------------------------------------------------------------------


class AttributeHead(nn.Module):
    """features: encoder levels (deepest last), mask_logits: B x 1 x H x W, covariates: B x n_cov (NaN = missing)
    -> B x n_outputs logits. See the module doc for what is pooled and why."""

    def __init__(
        self,
        in_channels: Sequence[int],
        n_outputs: int,
        *,
        n_covariates: int = 0,
        inputs: str = "image",
        hidden: int = 128,
        dropout: float = 0.2,
        ring_fraction: float = 0.08,
    ) -> None:
        super().__init__()
        if inputs not in INPUTS:
            raise UserError(f"model.head_inputs '{inputs}' is unknown: use one of {list(INPUTS)}")
        if inputs != "image" and n_covariates == 0:
            raise UserError(f"model.head_inputs={inputs} needs model.covariates (the clinical covariate columns)")
        self.inputs, self.ring_fraction = inputs, ring_fraction
        self.in_channels = list(in_channels)
        image_dim = 3 * sum(self.in_channels) + 2 if inputs != "covariates" else 0
        cov_dim = 2 * n_covariates if inputs != "image" else 0
        self.norm = nn.LayerNorm(image_dim) if image_dim else None
        # covariate standardisation, set from the training data (models.heads.set_covariate_stats) and saved
        self.register_buffer("cov_mean", torch.zeros(n_covariates))
        self.register_buffer("cov_std", torch.ones(n_covariates))
        self.mlp = nn.Sequential(
            nn.Linear(image_dim + cov_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, n_outputs),
        )

    def region_weights(self, mask_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Soft lesion and ring weights (B x 1 x h x w at a quarter of the mask's resolution)."""
        p = torch.sigmoid(mask_logits.detach().float())
        p = F.avg_pool2d(p, 4) if min(p.shape[-2:]) >= 16 else p
        r = max(1, int(round(self.ring_fraction * p.shape[-1])))
        dilated = F.max_pool2d(p, 2 * r + 1, stride=1, padding=r)
        return p, (dilated - p).clamp_min(0.0)

    def image_vector(self, features: Sequence[torch.Tensor], mask_logits: torch.Tensor) -> torch.Tensor:
        lesion, ring = self.region_weights(mask_logits)
        parts = []
        for f in features[-len(self.in_channels) :]:
            f = f.float()
            size = f.shape[-2:]
            wl, wr = F.adaptive_avg_pool2d(lesion, size), F.adaptive_avg_pool2d(ring, size)
            parts += [
                f.mean(dim=(2, 3)),
                (f * wl).sum(dim=(2, 3)) / wl.sum(dim=(2, 3)).clamp_min(1e-3),
                (f * wr).sum(dim=(2, 3)) / wr.sum(dim=(2, 3)).clamp_min(1e-3),
            ]
        area = lesion.mean(dim=(1, 2, 3))
        inside = (lesion * lesion).sum(dim=(1, 2, 3)) / lesion.sum(dim=(1, 2, 3)).clamp_min(1e-3)
        parts.append(torch.stack([area, inside], dim=1))
        return torch.cat(parts, dim=1)

    def covariate_vector(self, covariates: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        n = self.cov_mean.numel()
        if covariates is None:
            covariates = torch.full((batch, n), float("nan"), device=device)
        covariates = covariates.float().reshape(batch, n)
        missing = torch.isnan(covariates)
        z = torch.where(missing, torch.zeros_like(covariates), (covariates - self.cov_mean) / self.cov_std)
        return torch.cat([z, missing.float()], dim=1)

    def forward(
        self, features: Sequence[torch.Tensor], mask_logits: torch.Tensor, covariates: torch.Tensor | None = None
    ) -> torch.Tensor:
        parts = []
        if self.norm is not None:
            parts.append(self.norm(self.image_vector(features, mask_logits)))
        if self.inputs != "image":
            parts.append(self.covariate_vector(covariates, mask_logits.shape[0], mask_logits.device))
        x = torch.cat(parts, dim=1)
        return self.mlp(x.to(self.mlp[0].weight.dtype))


def set_covariate_stats(model: nn.Module, values: np.ndarray) -> None:
    """Standardise covariates with the training data's mean and std (NaN ignored; a constant column keeps std 1)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return
    with np.errstate(all="ignore"):
        mean = np.nan_to_num(np.nanmean(values, axis=0), nan=0.0)
        std = np.nan_to_num(np.nanstd(values, axis=0), nan=1.0)
    std[std < 1e-6] = 1.0
    for m in model.modules():
        if isinstance(m, AttributeHead) and m.cov_mean.numel() == len(mean):
            m.cov_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            m.cov_std.copy_(torch.as_tensor(std, dtype=torch.float32))
