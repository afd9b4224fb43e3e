"""The model card: one typed object for everything a checkpoint says about itself (NAME.json).

Loaded and validated by models/checkpoint.py (``read_card``); code reads ``card.input.size``,
``card.heads["fibrosis"].temperature``, ``card.is_clinical("lift")`` instead of nested dictionary keys, and a card
that is malformed (a missing field, a wrong type) is refused with one message naming the file and the field.
``schema`` numbers the layout: 1 = the first cards (no head kinds, temperatures or save ids; still readable),
2 = this one. Top-level keys this module does not know are kept in ``extra`` and written back unchanged; a head
entry keeps only the HeadCard fields. ``training_card`` builds the card a training run writes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from core.errors import UserError

SCHEMA = 2
KINDS = ("ordinal", "nominal")  # what a head's outputs are (models/heads.py: CORN logits or softmax logits)


@dataclass
class InputSpec:
    size: int
    resize: str = "stretch"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class HeadCard:
    """What the card says about one attribute head. ``clinical`` is the gate for showing it to a clinician."""

    classes: list[str]
    kind: str = "nominal"
    trained: bool = True
    label_source: str = "unknown"  # synthetic | proxy | real | unknown
    validated_on_real: bool = False
    temperature: float = 1.0
    label_definition: str | None = None
    n_train_labels: int = 0
    n_val_labels: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    baseline: dict[str, Any] | None = None  # binary heads: lesion-area-only baseline direction
    validation: dict[str, Any] | None = None  # metrics on the validation split (calibration)
    test: dict[str, Any] | None = None  # metrics on test sets (export)
    training: dict[str, Any] | None = None  # how the head was trained, when added to a shipped segmenter
    label_declaration: dict[str, Any] | None = None  # who declared the labels real, and when (train.py)
    evidence: dict[str, Any] | None = None  # an evaluation that chose nothing (python -m models.approve)
    signoff: dict[str, Any] | None = None  # who approved the head for display, when, and on which evidence

    @property
    def clinical(self) -> bool:
        """Only the first conditions of the display gate (models/gate.py decides, with the evidence)."""
        return self.trained is True and self.label_source == "real" and self.validated_on_real is True


@dataclass
class ModelCard:
    name: str
    model: dict[str, Any]  # models.build.build_model keyword arguments
    input: InputSpec
    heads: dict[str, HeadCard] = field(default_factory=dict)
    schema: int = SCHEMA
    format: str | None = None
    date: str | None = None
    git_commit: str | None = None
    save_id: str | None = None
    intended_use: str | None = None
    epoch: int | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    segmentation: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    test_results: dict[str, Any] = field(default_factory=dict)
    compute: dict[str, Any] = field(default_factory=dict)
    known_limits: list[str] = field(default_factory=list)
    licence: dict[str, Any] = field(default_factory=dict)
    parameters: int | None = None
    weights_dtype: str | None = None
    notes: str = ""
    resume: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def is_clinical(self, head: str) -> bool:
        h = self.heads.get(head)
        return h is not None and h.clinical

    @property
    def covariates(self) -> list[str]:
        return list(self.model.get("covariates") or [])

    @property
    def min_lesion_fraction(self) -> float:
        """The informative-frame rule's lesion threshold (data.quality.is_informative) this checkpoint's training
        used: data.min_lesion_fraction of the training config the card records (for heads added to a shipped
        segmenter, their own run's). A card whose training recorded none: the rule's default, which its calibration
        used too."""
        from data.quality import MIN_LESION_FRACTION

        runs = [h.training.get("config") for h in self.heads.values() if h.training] + [self.training.get("config")]
        for config in runs:
            value = ((config or {}).get("data") or {}).get("min_lesion_fraction")
            if value is not None:
                return float(value)
        return MIN_LESION_FRACTION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            v = getattr(self, f.name)
            if f.name == "input":
                v = vars(v).copy()
            elif f.name == "heads":
                v = {h: {k: x for k, x in vars(c).items()} for h, c in v.items()}
            out[f.name] = v
        return {**self.extra, **out}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "card") -> ModelCard:
        """Validate and convert; a problem is a UserError naming ``where`` and the field."""
        if not isinstance(d, Mapping):
            raise UserError(f"{where}: a card must be a JSON object")
        for key in ("name", "model", "input"):
            if key not in d:
                raise UserError(f"{where}: the card has no '{key}' field (not an endolift checkpoint card?)")
        if not isinstance(d["model"], Mapping) or "arch" not in d["model"]:
            raise UserError(f"{where}: 'model' must hold the model config (with 'arch')")
        inp = d["input"]
        if not isinstance(inp, Mapping) or not isinstance(inp.get("size"), int) or inp["size"] <= 0:
            raise UserError(f"{where}: 'input.size' must be a positive integer")
        for k in ("mean", "std"):
            if k in inp and (not isinstance(inp[k], list) or len(inp[k]) != 3):
                raise UserError(f"{where}: 'input.{k}' must be three numbers")
        heads = {}
        for h, info in (d.get("heads") or {}).items():
            heads[h] = _head(info, f"{where}: heads.{h}")
        known = {f.name for f in fields(cls)} - {"extra", "input", "heads"}
        kwargs = {k: d[k] for k in known if k in d}
        kwargs.setdefault("schema", 1)
        return cls(
            input=InputSpec(**{k: inp[k] for k in ("size", "resize", "mean", "std") if k in inp}),
            heads=heads,
            extra={k: v for k, v in d.items() if k not in known | {"input", "heads"}},
            **kwargs,
        )


LABEL_SOURCES = ("synthetic", "proxy", "real", "unknown")
_TYPES: dict[str, tuple[tuple[type, ...], bool]] = {  # field -> (allowed types, null allowed); bool is not a number
    "kind": ((str,), False),
    "trained": ((bool,), False),
    "label_source": ((str,), False),
    "validated_on_real": ((bool,), False),
    "label_definition": ((str,), True),
    "n_train_labels": ((int,), False),
    "n_val_labels": ((int,), False),
    "counts": ((dict,), False),
    "baseline": ((dict,), True),
    "validation": ((dict,), True),
    "test": ((dict,), True),
    "training": ((dict,), True),
    "label_declaration": ((dict,), True),
    "evidence": ((dict,), True),
    "signoff": ((dict,), True),
}


def _head(info: Any, where: str) -> HeadCard:
    if not isinstance(info, Mapping):
        raise UserError(f"{where} must be an object")
    for key, (types, nullable) in _TYPES.items():  # strict: "false" (a string) is not false, 1 is not true
        if key not in info or (info[key] is None and nullable):
            continue
        v = info[key]
        if isinstance(v, bool) and bool not in types or not isinstance(v, types):
            names = " or ".join("true/false" if t is bool else t.__name__ for t in types)
            raise UserError(f"{where}.{key} must be {names}{' or null' if nullable else ''}, not {v!r}")
    if info.get("label_source", "unknown") not in LABEL_SOURCES:
        raise UserError(f"{where}.label_source must be one of {', '.join(LABEL_SOURCES)}")
    classes = info.get("classes")
    if not isinstance(classes, list) or len(classes) < 2 or not all(isinstance(c, str) for c in classes):
        raise UserError(f"{where}.classes must be a list of at least two class names")
    if info.get("kind", "nominal") not in KINDS:
        raise UserError(f"{where}.kind must be one of {KINDS}")
    t = info.get("temperature", 1.0)
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not math.isfinite(t) or t <= 0:
        raise UserError(f"{where}.temperature must be a positive number")
    names = {f.name for f in fields(HeadCard)}
    return HeadCard(**{k: v for k, v in info.items() if k in names})


def label_counts(records: Any, heads: dict[str, list[str]]) -> dict[str, dict[str, int]]:
    """head -> class name -> number of records with that label (plus 'unknown')."""
    out = {}
    for h, classes in heads.items():
        counts = {c: 0 for c in classes}
        counts["unknown"] = 0
        for r in records:
            k = r.labels.get(h, -1)
            counts[classes[k] if k >= 0 else "unknown"] += 1
        out[h] = counts
    return out


def training_card(
    config: dict[str, Any],
    *,
    epoch: int,
    metrics: dict[str, float],
    records: dict[str, Any],
    heads: Mapping[str, Any],
    device: str,
    commit: str | None = None,
    init_from: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """The card train.py writes: resolved model config, input spec, heads with their label provenance, data, metrics.

    config: the run's fully resolved config as a plain dict. records: split ("train", "val") -> its records, whose
    labels are counted per head and class (label_counts). heads: the model's heads, name -> models.heads.HeadSpec
    (models.heads.parse_heads of the config's model.heads).
    A head counts as ``validated_on_real`` only when its labels are declared ``real`` (data.label_source) and the
    validation split held labels for it; calibration (training/finish.py) then adds its validation metrics.
    commit: the code's git commit when training started (HEAD may move while a long run goes on).
    init_from: name, date and commit of the checkpoint whose (frozen) segmenter the heads were trained on.
    command: the command line that trained it (``python train.py`` and its overrides), for the model card's recipe.
    """
    import torch

    model_cfg = dict(config["model"], weights_dirs=[])
    sources = config["data"].get("label_source") or {}
    definitions = config["data"].get("label_definition") or {}
    declared_by = config["data"].get("label_declared_by")
    declared_at = config["data"].get("label_declared_at")
    counts = {
        split: label_counts(recs, {h: list(s.classes) for h, s in heads.items()}) for split, recs in records.items()
    }

    def n_known(split: str, h: str) -> int:
        c = counts.get(split, {}).get(h, {})
        return sum(v for k, v in c.items() if k != "unknown")

    entries = {
        h: {
            "classes": list(s.classes),
            "kind": s.kind,
            "trained": True,
            "label_source": sources.get(h, "unknown"),
            "label_definition": definitions.get(h),
            "validated_on_real": sources.get(h) == "real" and n_known("val", h) > 0,
            "label_declaration": {"by": declared_by, "date": declared_at, "command": command}
            if sources.get(h) == "real"
            else None,
            "n_train_labels": n_known("train", h),
            "n_val_labels": n_known("val", h),
            "counts": {split: c[h] for split, c in counts.items() if h in c},
            "temperature": 1.0,
        }
        for h, s in heads.items()
    }
    data = config["data"]
    return {
        "name": config["name"],
        "git_commit": commit,
        "model": model_cfg,
        "heads": entries,
        "epoch": epoch,
        "metrics": metrics,
        "input": {"size": data["size"], "resize": data["resize"], "mean": list(data["mean"]), "std": list(data["std"])},
        "data": {
            "train_sources": data["train_sources"],
            "n_train": len(records["train"]),
            "n_val": len(records["val"]),
        },
        "segmentation": ({"trained": False, "frozen_from": init_from} if init_from else {"trained": True}),
        "training": {
            "device": device,
            "threads": torch.get_num_threads(),
            "precision": config["trainer"]["precision"],
            "command": command,
            "config": config,
        },
    }
