"""Ensemble members (``ensemble=[CKPT,...]``): more checkpoints whose mask logits models/predictor.py averages with
the checkpoint's. Loading one names it as a member when it fails; a member must see the frames as the checkpoint
does (same input size, normalisation and resizing), and only the torch backend runs them."""

from __future__ import annotations

from typing import Any

from core.errors import UserError
from models.card import ModelCard
from models.checkpoint import load_checkpoint

ONNX_ALONE = "ensemble= runs with backend=torch only (an ONNX file runs alone)"


def load_member(path: str) -> tuple[Any, ModelCard, str]:
    """An ensemble member's network, card and path; a missing or unreadable one is named as a member."""
    try:
        return (*load_checkpoint(path), path)
    except UserError as e:
        raise UserError(f"ensemble member {path}: {e}") from None


def check_member(member: ModelCard, card: ModelCard, *, onnx: bool) -> None:
    """An ensemble member must see the frames as the checkpoint does: same input size, normalisation and resizing."""
    if onnx:
        raise UserError(ONNX_ALONE)
    for key in ("size", "mean", "std", "resize"):
        if getattr(member.input, key) != getattr(card.input, key):
            raise UserError(
                f"ensemble member {member.name}: input {key} {getattr(member.input, key)} differs from the "
                f"checkpoint's {getattr(card.input, key)} (members must be trained on the same input)"
            )
