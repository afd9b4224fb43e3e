"""Checkpoints: ``NAME.safetensors`` (weights only) + ``NAME.json`` (the card). Loading never unpickles code.

Training state for resume (optimiser moments, EMA weights, RNG; assembled by training/resume.py) goes to
``NAME.state.safetensors`` with its non-tensor parts in the card's ``resume`` entry. Every file is written to a
temporary name and renamed, and one random ``save_id`` is stamped into all of a save's files (safetensors metadata
and the card, which is renamed last): a kill between two renames leaves files of different saves, which loading
refuses with a clear message instead of silently mixing epochs.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from core.errors import UserError
from core.files import atomic_write
from models.card import SCHEMA, ModelCard
from models.gate import digest

FORMAT = "endolift-checkpoint/1"


def checkpoint_stem(path: str | Path) -> Path:
    p = Path(path)
    for suffix in (".safetensors", ".json"):
        if p.name.endswith(suffix):
            return p.with_name(p.name[: -len(suffix)])
    return p


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).resolve().parent
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.SubprocessError):
        return None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None):
    with atomic_write(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        # safetensors creates its file 0600; a checkpoint gets an ordinary file's mode (0644 under umask 022), so
        # others in the group can read a shared model, like its card
        os.chmod(tmp, 0o666 & ~_umask())


def _as_dict(card: ModelCard | dict[str, Any]) -> dict[str, Any]:
    return card.to_dict() if isinstance(card, ModelCard) else dict(card)


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    card: ModelCard | dict[str, Any],
    *,
    dtype: torch.dtype | None = None,
    train_state: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write weights (optionally cast to ``dtype``, e.g. fp16 for shipping) and the card; return the weights path.

    The weights are written before the card, so a card always describes complete weights.
    """
    import uuid

    stem = checkpoint_stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    state = {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()
    }
    weights = stem.with_name(stem.name + ".safetensors")
    save_id = uuid.uuid4().hex
    meta = {"format": FORMAT, "save_id": save_id}
    if train_state is not None:
        _atomic_save_tensors(train_state, stem.with_name(stem.name + ".state.safetensors"), metadata=meta)
    _atomic_save_tensors(state, weights, metadata=meta)
    given = {k: v for k, v in _as_dict(card).items() if not (k in ("date", "git_commit") and v is None)}
    card = {
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        **given,
        "format": FORMAT,
        "save_id": save_id,
        "schema": SCHEMA,
    }
    write_card(stem, card)
    return weights


def copy_checkpoint(src: str | Path, dst: str | Path) -> bool:
    """Copy NAME.safetensors + NAME.json from ``src`` to ``dst`` (weights first, each atomically); False if absent.
    A resumed run carries its predecessor's ``best`` this way, so the best epoch so far is never lost."""
    import shutil

    s, d = checkpoint_stem(src), checkpoint_stem(dst)
    files = [(s.with_name(s.name + ext), d.with_name(d.name + ext)) for ext in (".safetensors", ".json")]
    if not all(a.is_file() for a, _ in files) or s.resolve() == d.resolve():
        return False
    d.parent.mkdir(parents=True, exist_ok=True)
    for a, b in files:
        with atomic_write(b) as tmp:
            shutil.copyfile(a, tmp)
    return True


def write_card(path: str | Path, card: ModelCard | dict[str, Any]) -> None:
    """Rewrite a checkpoint's card in place (atomically), e.g. after calibration; the weights are untouched."""
    stem = checkpoint_stem(path)
    with atomic_write(stem.with_name(stem.name + ".json")) as tmp:
        tmp.write_text(json.dumps(_as_dict(card), indent=2, default=str))


GATE_KEY = "endolift_gate"  # safetensors metadata: head -> field -> digest of the signed-off card entries


def _signed_digests(card: ModelCard) -> dict[str, dict[str, str]]:
    return {h: {k: digest(v) for k, v in vars(info).items()} for h, info in card.heads.items() if info.signoff}


def bind_gate(path: str | Path, card: ModelCard) -> None:
    """Write ``card`` and bind its signed-off heads to the weights: the digests of every field of those heads go
    into the safetensors metadata (same save id, same tensors), then the card is written. A later hand edit of a
    bound field is refused when the card is read (``read_card``)."""
    from safetensors import safe_open

    stem = checkpoint_stem(path)
    weights = stem.with_name(stem.name + ".safetensors")
    with safe_open(str(weights), framework="pt") as f:
        meta = dict(f.metadata() or {})
    meta[GATE_KEY] = json.dumps(_signed_digests(card), sort_keys=True)
    _atomic_save_tensors(load_file(str(weights)), weights, metadata=meta)
    write_card(stem, card)


def check_gate_binding(weights: Path, card: ModelCard, where: str) -> None:
    """Refuse a card whose signed-off head entries differ from the digests stored with the weights."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            bound = json.loads((f.metadata() or {}).get(GATE_KEY) or "{}")
    except Exception as e:
        raise UserError(f"checkpoint file is unreadable: {weights} ({e})") from None
    now = _signed_digests(card)
    for h in sorted(set(now) | set(bound)):
        if h not in card.heads:
            continue  # a signed head removed from the card is simply not shown
        if h not in bound:
            raise UserError(
                f"{where}: heads.{h}.signoff is not bound to the weights {weights.name} (added by hand?): sign off "
                "with python -m models.approve"
            )
        fields = vars(card.heads[h])
        for k in sorted(set(bound[h]) | set(now.get(h, {}))):
            if bound[h].get(k) != digest(fields.get(k)):
                raise UserError(
                    f"{where}: heads.{h}.{k} differs from what was signed off with these weights (edited by hand?): "
                    "restore the card, or evaluate and sign off again (python -m models.approve)"
                )


def read_card(path: str | Path) -> ModelCard:
    """The checkpoint's card as a validated ModelCard (models/card.py). When the weights are beside it, the card's
    signed-off head entries are checked against the digests stored with them (``bind_gate``)."""
    stem = checkpoint_stem(path)
    card_path = stem.with_name(stem.name + ".json")
    if not card_path.is_file():
        raise UserError(f"checkpoint card not found: {card_path} (a checkpoint is NAME.safetensors + NAME.json)")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"checkpoint card is not valid JSON: {card_path} ({e.msg})") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        found = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise UserError(f"{card_path} is not an endolift checkpoint card (format {found!r})")
    parsed = ModelCard.from_dict(card, str(card_path))
    weights = stem.with_name(stem.name + ".safetensors")
    if weights.is_file():
        check_gate_binding(weights, parsed, str(card_path))
    return parsed


def init_segmenter(
    model: nn.Module, path: str | Path, *, input_size: int | None = None, resize: str | None = None
) -> dict[str, Any]:
    """Copy the segmenter (encoder, decoder, mask head) of the checkpoint at ``path`` into ``model`` (an EndoNet
    with the same architecture); heads are left as built. ``input_size``/``resize``: the training data's, which
    must be the ones the segmenter was trained at (a frozen segmenter fed another grid computes other features).
    Returns the source card's name, date and commit."""
    src, card = load_checkpoint(path)
    wrong_size = input_size is not None and input_size != card.input.size
    if wrong_size or (resize is not None and resize != card.input.resize):
        raise UserError(
            f"trainer.init_from={path}: its segmenter was trained at {card.input.size}x{card.input.size} "
            f"({card.input.resize}) but data.size={input_size} data.resize={resize}; "
            f"set data.size={card.input.size} data.resize={card.input.resize}"
        )
    seg_state = {k: v for k, v in src.state_dict().items() if k.startswith("seg.")}
    mine = {k for k in model.state_dict() if k.startswith("seg.")}
    if set(seg_state) != mine:
        raise UserError(
            f"trainer.init_from={path}: its segmenter ({card.model.get('arch')}/"
            f"{card.model.get('encoder')}) differs from model config; use the same model settings"
        )
    model.load_state_dict(seg_state, strict=False)
    return {"name": card.name, "date": card.date, "git_commit": card.git_commit, "path": str(path)}


def load_checkpoint(path: str | Path, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """Rebuild the model from the card's resolved config and load its weights (cast back to fp32)."""
    from models.build import build_model

    stem = checkpoint_stem(path)
    card = read_card(stem)
    weights = stem.with_name(stem.name + ".safetensors")
    if not weights.is_file():
        raise UserError(f"checkpoint weights not found: {weights}")
    try:
        state = load_file(str(weights), device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt files
        raise UserError(f"checkpoint weights are unreadable: {weights} ({e})") from None
    check_same_save(weights, card)
    model_cfg = dict(card.model)
    model_cfg["weights"] = None  # the checkpoint holds every weight; no ImageNet file is needed
    model = build_model(**model_cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise UserError(
            f"{weights} does not match its card's model config: missing {missing[:3]}, unexpected {unexpected[:3]}"
        )
    return model.to(device).eval(), card


def check_same_save(path: Path, card: ModelCard) -> None:
    """Refuse a file whose save_id differs from its card's (a save interrupted between two renames)."""
    from safetensors import safe_open

    if card.save_id is None:  # written before save ids existed
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            found = (f.metadata() or {}).get("save_id")
    except Exception as e:
        raise UserError(f"checkpoint file is unreadable: {path} ({e})") from None
    if found != card.save_id:
        raise UserError(
            f"{path} and its card come from different saves (a save was interrupted): use the "
            "checkpoint before it, or delete these files"
        )
