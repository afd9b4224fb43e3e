"""The settings of running a checkpoint (which one, on which device, at which precision, with which backend, with
flip TTA and which views, at which input size, scoring reliability, averaged with which other checkpoints, under
which profile), shared by infer.py and evaluate.py, and the precisions training takes. Apart from
models/predictor.py so that a script checks them before torch loads (a mistyped setting is answered in about a
second)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.settings import Bool, Choice, Num, Text, setting

PRECISIONS = ("fp32", "bf16", "fp16")  # models.runtime.autocast's; fp16 needs CUDA
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")  # Predictor.from_checkpoint's
PROFILES = ("accurate", "fast")  # configs/profile/<name>.yaml
# Predictor's TTA views: h, the mirror; hv, the mirror, upside down and both; hs, the frame and its mirror each also
# at TTA_SCALES x the input size (multi-scale)
TTA_VIEWS = ("h", "hv", "hs")
TTA_SCALES = (0.75, 1.25)  # tta_views=hs: the other input sizes, as factors of the model's (288 px: 224 and 352)


@dataclass(kw_only=True)
class PredictorSettings:
    """Predictor.from_checkpoint's arguments, as a script's top-level keys."""

    checkpoint: str = setting(Text())
    device: str = setting(Text())  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = setting(Choice(("auto",) + PRECISIONS))  # auto: bf16 on CPU, fp16 on CUDA, fp32 on MPS
    tta: bool = setting(Bool())
    # the views flip TTA averages: h (the frame and its mirror image, 2 passes) or hv (also upside down and both, 4
    # passes; training flips both ways, so all four are views the model knows)
    tta_views: str = setting(Choice(TTA_VIEWS))
    backend: str = setting(Choice(BACKENDS))
    # the network's input side (a multiple of 32); null: the size the checkpoint was trained at
    input_size: int | None = setting(Num(64, 2048, integer=True, nullable=True, multiple_of=32))
    # score each frame's reliability (the model's mirrored view compared with the frame as is; one more model pass
    # per frame, free with tta; models/reliability.py)
    reliability: bool = setting(Bool())
    # more checkpoints whose mask logits are averaged with the checkpoint's (an ensemble: same input size and
    # normalisation; the heads come from the checkpoint alone); null: none
    ensemble: str | list[str] | None = setting(Text(listable=True, nullable=True))
    profile: str = setting(Choice(PROFILES))  # configs/profile/<name>.yaml chose the settings above


PREDICTOR_KEYS = (
    "device",
    "precision",
    "tta",
    "tta_views",
    "backend",
    "reliability",
    "input_size",
    "ensemble",
)  # from_checkpoint's keywords


def as_paths(value: Any) -> list[str]:
    """A setting that takes one path, a list of them or null (``ensemble``) as a list of paths."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


PROFILE_DIR = Path(__file__).resolve().parents[1] / "configs" / "profile"
PROFILE_KEYS = ("checkpoint", "input_size", "tta", "tta_views", "reliability", "ensemble")  # what a profile file sets


def profile_file(profile: str) -> dict[str, Any] | None:
    """configs/profile/<profile>.yaml's settings (None for a name without a file)."""
    from omegaconf import OmegaConf

    path = PROFILE_DIR / f"{profile}.yaml"
    return OmegaConf.to_container(OmegaConf.load(path)) if path.is_file() else None


def same_paths(a: Any, b: Any) -> bool:
    """Two checkpoint settings (a path, a list of them or null) name the same files, however written (relative to
    the working folder, absolute, with a trailing slash)."""
    return [Path(x).resolve() for x in as_paths(a)] == [Path(x).resolve() for x in as_paths(b)]


def partnered_ensemble(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with the profile's ``ensemble`` dropped when ``checkpoint`` names another model than the profile's,
    or the backend is not torch: a profile's ensemble members were trained and measured as partners of its checkpoint
    (and must share its input size), so ``checkpoint=MY_MODEL`` on its own runs MY_MODEL alone, and
    ``backend=onnxruntime`` runs the ONNX file alone. An ensemble given on the command line that differs from the
    profile's is kept (the profile's own list given again cannot be told from the profile's: to average its members
    with another checkpoint, start from a profile without members, e.g. ``profile=fast tta=true 'ensemble=[...]'``).
    The outputs then say "modified: ..., ensemble=[]"."""
    chosen = profile_file(str(settings.get("profile")))
    if (
        chosen is None
        or not as_paths(chosen.get("ensemble"))
        or not same_paths(settings.get("ensemble"), chosen.get("ensemble"))
        or (
            same_paths(settings.get("checkpoint"), chosen.get("checkpoint"))
            and settings.get("backend", "torch") == "torch"
        )
    ):
        return dict(settings)
    return {**settings, "ensemble": None}


def predictor_arguments(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Predictor.from_checkpoint's keyword arguments (checkpoint first as ``path``) from a script's settings."""
    return {"path": settings["checkpoint"], **{k: settings[k] for k in PREDICTOR_KEYS}}


def scaled_sizes(size: int, scales: Sequence[float]) -> list[int]:
    """``size`` times each of ``scales``, each rounded to a multiple of 32 (what the encoder's strides need)."""
    return [max(32, int(round(size * f / 32)) * 32) for f in scales]


def check_input_size(wanted: int | None, trained: int, *, onnx: bool = False) -> int:
    """The network's input side: ``trained`` (the card's) unless ``wanted`` names another multiple of 32."""
    if wanted is None or int(wanted) == int(trained):
        return int(trained)
    if int(wanted) % 32 or not 64 <= int(wanted) <= 2048:
        raise UserError(f"input_size={wanted}: give a multiple of 32 from 64 to 2048, or null for the card's {trained}")
    if onnx:
        raise UserError(
            f"input_size={wanted}: an ONNX file runs at the size it was exported at ({trained}); use backend=torch"
        )
    return int(wanted)
