"""The settings of running a checkpoint (which one, on which device, at which precision, with which backend, with
flip TTA), shared by infer.py and evaluate.py, and the precisions training takes. Apart from models/predictor.py
so that a script checks them before torch loads (a mistyped setting is answered in about a second)."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import Bool, Choice, Text, setting

PRECISIONS = ("fp32", "bf16", "fp16")  # models.runtime.autocast's; fp16 needs CUDA
BACKENDS = ("torch", "onnxruntime", "onnxruntime-int8")  # Predictor.from_checkpoint's


@dataclass(kw_only=True)
class PredictorSettings:
    """Predictor.from_checkpoint's arguments, as a script's top-level keys."""

    checkpoint: str = setting(Text())
    device: str = setting(Text())  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N | mps
    precision: str = setting(Choice(("auto",) + PRECISIONS))  # auto: bf16 on CPU, fp16 on CUDA, fp32 on MPS
    tta: bool = setting(Bool())
    backend: str = setting(Choice(BACKENDS))
