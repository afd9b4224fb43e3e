"""Inference on frames of any size: resize to the checkpoint's input, batch, autocast, optional flip TTA, and
probabilities back at the input resolution. Usable from a notebook: Predictor.from_checkpoint(path)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.errors import UserError
from data.transforms import normalise_batch
from models.card import ModelCard
from models.checkpoint import load_checkpoint
from models.ensemble import ONNX_ALONE, check_member, load_member
from models.heads import head_probabilities, parse_heads
from models.net import fold_batchnorm
from models.predictor_settings import BACKENDS, TTA_SCALES, TTA_VIEWS, as_paths, check_input_size, scaled_sizes
from models.reliability import RELIABILITY_VIEWS, SCALE_VIEW, frame_reliability
from models.runtime import autocast, pick_device


@dataclass
class Prediction:
    prob: np.ndarray  # H x W float32 lesion probability at the input resolution
    heads: dict[str, np.ndarray]  # head -> class probabilities (K,), temperature-scaled per the card
    head_logits: dict[str, np.ndarray] = field(default_factory=dict)  # head -> raw outputs (m,), before scaling
    resized: np.ndarray | None = None  # the S x S x 3 frame the model saw (with full_size=False)
    reliability: float | None = None  # agreement of the model's views of the frame (models/reliability.py), if asked


class Predictor:
    def __init__(
        self,
        model: Any,
        card: ModelCard,
        *,
        device: torch.device,
        precision: str = "fp32",
        tta: bool = False,
        tta_views: str = "h",
        channels_last: bool = True,
        reliability: bool = False,
        input_size: int | None = None,
        members: Sequence[tuple[Any, ModelCard, str | None]] = (),
    ) -> None:
        """model: an EndoNet, or a models.onnx.OrtModel (ONNX Runtime; fp32 on the CPU, no autocast).
        members: more (EndoNet, card, path) triples whose mask logits are averaged with the model's (an ensemble), each
        trained on the same input size and normalisation (checked); the heads come from ``model`` alone.
        reliability: also score each frame's reliability (models.reliability.RELIABILITY_VIEWS: one more model pass
        per view; the mirrored view is shared with flip TTA).
        input_size: run the network's mask at S x S instead of the card's training size (a multiple of 32; a model
        trained with multi-scale batches serves several sizes; ONNX files keep the size they were exported at). Heads
        still run at the card's size, in a pass of their own: their calibration and sign-off were measured there."""
        if card.input.resize != "stretch":  # frames reach the network resized straight to S x S, nothing else
            raise UserError(
                f"checkpoint {card.name} was trained with data.resize={card.input.resize}, which inference does not "
                "support: frames are resized straight to the input size (the PraNet protocol); retrain it with "
                "data.resize=stretch"
            )
        self.onnx = not isinstance(model, torch.nn.Module)
        if self.onnx:
            device, precision, channels_last = torch.device("cpu"), "fp32", False
        else:
            model = model.to(device).eval()
            fold_batchnorm(model)
        self.model, self.card, self.device = model, card, device
        self.precision, self.tta, self.reliability = precision, tta, reliability
        if tta_views not in TTA_VIEWS:
            raise UserError(f"tta_views={tta_views!r}: use {' or '.join(TTA_VIEWS)}")
        self.tta_views = tta_views
        self.size = check_input_size(input_size, card.input.size, onnx=self.onnx)
        self.profile: str | None = None  # the settings profile that chose this predictor (configs/profile/), if any
        self.mean, self.std = card.input.mean, card.input.std
        self.heads = list(card.heads)
        # the model config decides each head's kind (its number of outputs); the card's head entries follow it
        self.kinds = {h: spec.kind for h, spec in parse_heads(card.model.get("heads")).items()}
        for h in self.heads:
            card.heads[h].kind = self.kinds[h]
        self.temperatures = {h: float(v.temperature) for h, v in card.heads.items()}
        self.covariates = card.covariates
        self.channels_last = channels_last
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.members: list[Any] = []
        self.member_cards: list[dict[str, Any]] = []  # what ran: each member's card name, save id and path
        for member, member_card, member_path in members:
            check_member(member_card, card, onnx=self.onnx)
            member = member.to(device).eval()
            fold_batchnorm(member)
            self.members.append(member.to(memory_format=torch.channels_last) if channels_last else member)
            self.member_cards.append({"name": member_card.name, "save_id": member_card.save_id, "path": member_path})

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        precision: str = "auto",
        tta: bool = False,
        tta_views: str = "h",
        backend: str = "torch",
        reliability: bool = False,
        input_size: int | None = None,
        ensemble: str | Sequence[str] | None = None,
    ) -> Predictor:
        """precision 'auto': bf16 on CPU (AMX makes it 2-4x faster), fp16 on CUDA, fp32 on MPS.
        backend 'onnxruntime' runs NAME.onnx beside the checkpoint (python -m models.export --onnx).
        ensemble: more checkpoints whose mask logits are averaged with this one's (torch backend)."""
        if backend not in BACKENDS:
            raise UserError(f"backend '{backend}' is unknown: use {', '.join(BACKENDS[:-1])} or {BACKENDS[-1]}")
        member_paths = as_paths(ensemble)
        if member_paths and backend != "torch":  # before the ONNX file or any member is loaded
            raise UserError(ONNX_ALONE)
        members = [load_member(p) for p in member_paths]
        if backend != "torch":
            from models.checkpoint import read_card
            from models.onnx import OrtModel

            card = read_card(path)
            return cls(
                OrtModel(path, card, int8=backend.endswith("int8")),
                card,
                device=torch.device("cpu"),
                precision="fp32",
                tta=tta,
                tta_views=tta_views,
                reliability=reliability,
                input_size=input_size,
            )
        dev = pick_device(device)
        model, card = load_checkpoint(path)
        if precision == "auto":
            precision = {"cpu": "bf16", "cuda": "fp16"}.get(dev.type, "fp32")
        return cls(
            model,
            card,
            device=dev,
            precision=precision,
            tta=tta,
            tta_views=tta_views,
            reliability=reliability,
            input_size=input_size,
            members=members,
        )

    @torch.no_grad()
    def predict(
        self,
        images: Sequence[np.ndarray],
        covariates: np.ndarray | None = None,
        *,
        full_size: bool = True,
        resized: Sequence[np.ndarray] | None = None,
    ) -> list[Prediction]:
        """images: H x W x 3 uint8 RGB frames (sizes may differ) -> one Prediction each.

        covariates: B x n clinical covariates in the card's ``model.covariates`` order (NaN = missing), or None
        (all missing) for heads that read them.
        full_size: probabilities at each frame's resolution; False keeps them at the model's S x S (the video path
        resizes once, later, in its render thread) and returns the resized frame too.
        resized: the frames already resized to S x S with cv2.INTER_AREA (the video path does it while decoding).
        """
        if not images:
            return []
        cov = None
        if self.covariates:
            cov = (
                torch.full((len(images), len(self.covariates)), float("nan"))
                if covariates is None
                else torch.as_tensor(np.asarray(covariates, dtype=np.float32)).reshape(len(images), -1)
            )
            cov = cov.to(self.device)
        s = self.size
        small = list(resized) if resized is not None else resize_frames(images, s)
        batch = self._to_batch(small)
        views: list[torch.Tensor] = []  # the model's other views of the frames, mapped back to the S x S grid
        with autocast(self.device, self.precision):
            out = self.model(batch, cov)
            logits = self._with_members(out["mask"].float(), batch)
            if self.heads and s != self.card.input.size:  # heads run at the size they were validated at
                out = self.model(self._to_batch(resize_frames(images, self.card.input.size)), cov)
            head_logits = {h: out[h].float() for h in self.heads}
            if self.tta or (self.reliability and "flip" in RELIABILITY_VIEWS):
                flip_logits = self._view_logits(batch, cov, dims=[3])
                if self.reliability and "flip" in RELIABILITY_VIEWS:
                    views.append(flip_logits)
            if self.reliability and "scale" in RELIABILITY_VIEWS:
                views.append(self._view_logits(batch, cov, size=scaled_sizes(s, [SCALE_VIEW])[0]))
            if self.tta:  # the mirror, and with hv upside down and upside down mirrored (rotated 180 degrees)
                tta_logits = [flip_logits]
                if self.tta_views == "hv":
                    tta_logits += [self._view_logits(batch, cov, dims=dims) for dims in ([2], [2, 3])]
                if self.tta_views == "hs":  # the frame and its mirror at each other scale too
                    tta_logits += [
                        self._view_logits(batch, cov, size=size, dims=dims)
                        for size in scaled_sizes(s, TTA_SCALES)
                        for dims in ([], [3])
                    ]
        agreement: list[float | None] = [None] * len(images)
        if views:
            agreement = list(frame_reliability(torch.sigmoid(logits), [torch.sigmoid(v) for v in views]))
        if self.tta:  # average the views' mask logits. The heads keep the frame's own view: their temperatures
            # were fitted on it (training/finish.py), and their sign-off evidence was measured on it
            logits = torch.stack([logits, *tta_logits]).mean(0)
        probs = torch.sigmoid(logits)
        head_probs = {
            h: head_probabilities(v, self.kinds[h], self.temperatures[h]).cpu().numpy() for h, v in head_logits.items()
        }
        raw = {h: v.cpu().numpy() for h, v in head_logits.items()}
        results = []
        for i, im in enumerate(images):
            p = (
                F.interpolate(probs[i : i + 1], size=im.shape[:2], mode="bilinear", align_corners=False)[0, 0]
                if full_size
                else probs[i, 0]
            )
            results.append(
                Prediction(
                    p.cpu().numpy().astype(np.float32),
                    {h: v[i] for h, v in head_probs.items()},
                    {h: v[i] for h, v in raw.items()},
                    None if full_size else small[i],
                    agreement[i],
                )
            )
        return results

    def run_settings(self) -> dict[str, Any]:
        """How this predictor runs the network, for the outputs that report it (summary.json, the report)."""
        return {
            "profile": self.profile,
            "checkpoint_profile": self.card.extra.get("profile"),  # the profile the checkpoint was shipped for
            "input_size": self.size,
            "trained_size": self.card.input.size,
            "tta": self.tta,
            "tta_views": self.tta_views if self.tta else None,
            "reliability": self.reliability,
            "ensemble": [dict(m) for m in self.member_cards],  # the checkpoints averaged with this one
            "backend": "onnxruntime" if self.onnx else "torch",
            "precision": self.precision,
        }

    def _to_batch(self, small: Sequence[np.ndarray]) -> torch.Tensor:
        """Frames already at the network's input size, normalised, on the device (channels_last when asked)."""
        batch = normalise_batch(small, mean=self.mean, std=self.std).to(self.device)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def _view_logits(
        self, batch: torch.Tensor, cov: torch.Tensor | None, *, size: int | None = None, dims: Sequence[int] = ()
    ) -> torch.Tensor:
        """Mask logits of the frames resized to ``size`` x ``size`` (None: as they are) and flipped along ``dims``
        (2: upside down, 3: mirrored), mapped back to the S x S grid of ``batch``."""
        s = batch.shape[-1]
        same = size in (None, s)
        x = batch if same else F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        x = torch.flip(x, dims=list(dims)) if dims else x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self._with_members(self.model(x, cov)["mask"].float(), x)
        out = torch.flip(out, dims=list(dims)) if dims else out
        return out if same else F.interpolate(out, size=(s, s), mode="bilinear", align_corners=False)

    def _with_members(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``logits`` (the model's mask logits of ``x``) averaged with the ensemble members' of the same input."""
        if not self.members:
            return logits
        return torch.stack([logits, *(m.mask_logits(x).float() for m in self.members)]).mean(0)


def resize_frames(images: Sequence[np.ndarray], size: int) -> list[np.ndarray]:
    """Frames resized to size x size with cv2.INTER_AREA, as training resizes them."""
    return [cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA) for im in images]


def _finite_or_none(v: float) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None  # JSON has no NaN


def predict_records(
    predictor: Predictor,
    records: Sequence[Any],
    *,
    batch_size: int = 8,
    progress: str | None = None,
    on_frame: Any = None,
) -> list[dict[str, Any]]:
    """Run the model over data records (data.datasets.Record) -> one row per record for metrics.heads:
    id, group, labels, raw head outputs, calibrated probabilities, predicted lesion area fraction, informative
    (data.quality.is_informative with the lesion threshold the checkpoint's training used, from its card: the frames
    calibration, evaluation and the report count are the frames training counted).

    on_frame(record, sample, prediction): optional callback (e.g. to score segmentation in the same pass).
    """
    from tqdm import tqdm

    from data.datasets import load_raw
    from data.quality import is_informative, poor_quality

    min_lesion_fraction = predictor.card.min_lesion_fraction
    rows = []
    for i in tqdm(range(0, len(records), batch_size), desc=progress, leave=False, disable=progress is None):
        chunk = records[i : i + batch_size]
        samples = [load_raw(r, predictor.heads) for r in chunk]
        cov = (
            np.array([[r.covariates.get(c, np.nan) for c in predictor.covariates] for r in chunk], np.float32)
            if predictor.covariates
            else None
        )
        for r, s, p in zip(chunk, samples, predictor.predict([s["image"] for s in samples], cov)):
            area = float((p.prob >= 0.5).mean())
            rows.append(
                {
                    "id": r.id,
                    "group": r.group,
                    "patient": getattr(r, "patient", None) or r.group,
                    "centre": getattr(r, "centre", None),
                    "covariates": {c: _finite_or_none(v) for c, v in getattr(r, "covariates", {}).items()},
                    "labels": dict(s["labels"]),
                    "logits": {h: v.tolist() for h, v in p.head_logits.items()},
                    "probs": {h: v.tolist() for h, v in p.heads.items()},
                    "area_fraction": area,
                    "informative": is_informative(
                        area, poor_quality(s["image"]), min_lesion_fraction=min_lesion_fraction
                    ),
                }
            )
            if on_frame is not None:
                on_frame(r, s, p)
    return rows
