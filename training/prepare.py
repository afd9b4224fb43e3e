"""Before the first epoch: the run's label declarations checked, and the built model readied for training (its
segmenter copied from another checkpoint and frozen when asked, its covariates standardised)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from core.errors import UserError
from models.card import LABEL_SOURCES
from models.checkpoint import init_segmenter
from models.heads import set_covariate_stats
from models.net import EndoNet


def declare_labels(data: dict, *, heads: list[str], select_on: str | None) -> None:
    """Check the run's label declarations before any work: a head's labels are ``real`` only when a named person
    says so on this run (data.label_declared_by), never by a config default; the date is recorded in the card."""
    sources = data.get("label_source") or {}
    for h, src in sources.items():
        if src not in LABEL_SOURCES:
            raise UserError(f"data.label_source.{h}={src!r} is invalid: it must be one of {', '.join(LABEL_SOURCES)}")
    real = [h for h, src in sources.items() if src == "real"]
    by = data.get("label_declared_by")
    if real and not (isinstance(by, str) and by.strip()):
        raise UserError(
            f"data.label_source declares {', '.join(real)} real (clinicians' annotation): add "
            "data.label_declared_by='YOUR NAME', who vouches for the labels (recorded in the card with the date)"
        )
    if real:
        data["label_declared_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    if select_on not in (None, "all") and select_on not in heads:
        raise UserError(f"trainer.select_on={select_on!r} is not a head of this model ({', '.join(heads) or 'none'})")


def prepare_for_training(
    model: EndoNet,
    *,
    init_from: str | None = None,
    freeze: str | None = None,
    covariate_rows: Sequence[Sequence[float]] = (),
    input_size: int | None = None,
    resize: str | None = None,
) -> dict[str, Any] | None:
    """Before training: copy the segmenter of ``init_from``, freeze it (freeze="segmentation": only the heads
    train), and standardise covariates with the training rows. With a frozen segmenter, ``input_size``/``resize``
    (the data's) must match init_from's. Returns init_from's provenance (for the card)."""
    frozen = freeze == "segmentation"  # a frozen segmenter must see frames as it was trained; fine-tuning may differ
    init = (
        init_segmenter(model, init_from, input_size=input_size if frozen else None, resize=resize if frozen else None)
        if init_from
        else None
    )
    if frozen:
        model.freeze_segmentation()
    elif freeze:
        raise UserError(f"trainer.freeze '{freeze}' is unknown: use segmentation or null")
    if len(covariate_rows):
        set_covariate_stats(model, covariate_rows)
    return init
