"""After training: each head's temperature fitted on the validation split and recorded in the best checkpoint's
card with the validation metrics before and after scaling (the fit itself is models/calibration.py's), and in a
cross-validation fold the held-out records predicted into oof.json for ``python -m metrics.cv``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from models.calibration import PRIOR_SD, T_BOUNDS, fit_temperature, temperature_flag
from models.checkpoint import read_card, write_card
from models.heads import head_probabilities


def calibrate_checkpoint(
    stem: Any,
    records: Sequence[Any],
    *,
    device: str = "auto",
    batch_size: int = 8,
    n_boot: int = 1000,
    min_frames: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Fit each head's temperature on ``records`` (the validation split) with the checkpoint at ``stem``, then
    rewrite its card with, per head: temperature, baseline direction (binary heads) and validation metrics
    (before and after scaling, with case-resampled 95% intervals). Returns the heads' validation results."""
    from metrics.heads import area_baseline_direction, score_heads
    from models.predictor import Predictor, predict_records  # looked up at call time (tests stand in for them)

    pred = Predictor.from_checkpoint(stem, device=device)
    pred.temperatures = {h: 1.0 for h in pred.heads}
    rows = predict_records(pred, list(records), batch_size=batch_size, progress="calibrate" if progress else None)
    card = read_card(stem)
    for h, info in card.heads.items():
        # informative frames only (data.quality.is_informative at the threshold this training used, from the card):
        # the frames a case estimate uses
        known = [r for r in rows if r["labels"].get(h, -1) >= 0 and r["informative"]]
        info.temperature = 1.0  # never keep a temperature fitted on other data
        if len(set(r["labels"][h] for r in known)) < 2:
            continue  # one class (or none) cannot calibrate: the NLL would fall forever as T shrinks
        cases = np.array([r["group"] for r in known])
        case_level = len(set(cases)) < len(cases)  # some case has several frames: fit where it is displayed
        t = fit_temperature(
            np.array([r["logits"][h] for r in known]),
            np.array([r["labels"][h] for r in known]),
            info.kind,
            cases=cases if case_level else None,
        )
        info.temperature = round(t, 4)
        info.training = dict(
            info.training or {},
            temperature_fit={
                "level": "case" if case_level else "frame",
                "frames": len(known),
                "cases": len(set(cases)),
                "informative_only": True,
                "bounds": list(T_BOUNDS),
                "prior_sd_log_t": PRIOR_SD,
                "flag": temperature_flag(t),
            },
        )
        if len(info.classes) == 2 or info.kind == "ordinal":  # the area baseline ranks binary and graded heads
            info.baseline = {"feature": "predicted lesion area fraction", "direction": area_baseline_direction(rows, h)}
        for r in rows:
            r["probs"][h] = head_probabilities(torch.tensor([r["logits"][h]]), info.kind, t)[0].tolist()
    results = score_heads(rows, card.heads, n_boot=n_boot, min_frames=min_frames)
    for h, res in results.items():
        card.heads[h].validation = _compact(res)
    write_card(stem, card)
    return results


def _compact(res: dict[str, Any]) -> dict[str, Any]:
    """Drop the bulky parts (reliability bins) from a head's results for the card."""
    out = {k: v for k, v in res.items() if k not in ("classes", "kind", "temperature")}
    out["frame"] = {k: v for k, v in res["frame"].items() if k != "reliability"}
    return out


def finish_heads(
    stem: Any,
    val_records: Sequence[Any],
    heldout: Sequence[Any],
    *,
    oof: Any,
    variant: str,
    cv: dict[str, Any],
    splits: dict[str, Any] | None = None,
    group_unit: str = "patient",
    device: str = "auto",
    n_boot: int = 1000,
    min_frames: int = 3,
    progress: bool = False,
) -> None:
    """After training: calibrate the best checkpoint's heads on the validation records, then (in a
    cross-validation fold, ``cv``: the data.cv settings) predict the held-out records into ``oof`` for metrics.cv."""
    if val_records:
        calibrate_checkpoint(stem, val_records, device=device, n_boot=n_boot, min_frames=min_frames, progress=progress)
    if heldout:
        from metrics.cv import write_oof

        write_oof(
            oof,
            stem,
            heldout,
            fold=cv["fold"],
            folds=cv["folds"],
            variant=variant,
            device=device,
            splits=splits,
            cv=cv,
            group_unit=group_unit,
        )
