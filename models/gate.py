"""The display gate: whether a head's estimate may reach a clinician, and if not, every reason why.

A head is shown only when its card proves all of the following (each refusal names what is missing):

1. it was trained, on labels declared ``real`` by a named person (``data.label_source.HEAD=real
   data.label_declared_by=NAME`` on the training command line; no shipped config declares labels real);
2. evidence from an evaluation that chose nothing: pooled out-of-fold predictions of a patient-level
   cross-validation (``python -m metrics.cv``) or a locked test split (``evaluate.py``); never the validation split,
   which picked the epoch and the temperature;
3. in that evidence, at least ``min_cases_per_class`` labelled cases of every class;
4. discrimination whose 95% interval excludes chance (binary / nominal: case AUROC lower bound > 0.5; ordinal:
   case QWK lower bound > 0) and clears the configured floors;
5. case-level calibration within bounds (case ECE <= ``max_case_ece``; binary heads: calibration slope within
   ``slope_range`` when the evidence has it);
6. an explicit sign-off for exactly this evidence, written by ``python -m models.approve``.

The card's head entries are bound to the weights (models/checkpoint.py: their digests sit in the safetensors
metadata, written by the sign-off), so a hand edit is refused when the card is read, naming the field. The rule's
numbers are recorded with the evidence at sign-off (they are bound too), so a later setting cannot loosen them.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from core.errors import UserError
from models.card import HeadCard, ModelCard


@dataclass(frozen=True)
class GateRule:
    min_cases_per_class: int = 20
    min_auroc: float = 0.5  # the case AUROC's lower 95% bound must exceed this (binary and nominal heads)
    min_qwk: float = 0.0  # the case QWK's lower 95% bound must exceed this (ordinal heads)
    max_case_ece: float = 0.15
    slope_range: tuple[float, float] = (0.5, 2.0)  # binary heads: case-level calibration slope

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> GateRule:
        d = dict(d or {})
        if "slope_range" in d:
            d["slope_range"] = tuple(d["slope_range"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


EVIDENCE_SOURCES = ("cv", "test")  # pooled out-of-fold predictions | a locked test split


def digest(value: Any) -> str:
    """A stable SHA-256 of a JSON value (sorted keys): what the sign-off and the weights' metadata bind."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def discrimination(kind: str, n_classes: int) -> str:
    """The metric whose interval must exclude chance: QWK for ordinal heads of 3+ grades, else AUROC."""
    return "qwk" if kind == "ordinal" and n_classes > 2 else "auroc"


def evidence_from_results(res: dict[str, Any], *, source: str, where: str, rule: GateRule) -> dict[str, Any]:
    """The card's ``evidence`` entry from one head's metrics.heads.score_head result (case level)."""
    case = res.get("case")
    if not case:  # every case is one frame (e.g. one image per patient): the case level is the frame level
        f = res["frame"]
        case = {k: f.get(k) for k in ("auroc", "qwk", "ece", "confusion", "ci95", "calibration", "degenerate")}
        case.update(n_cases=f.get("n_cases"), n_scored=f.get("n"), abstained=0)
    classes = list(res["classes"])
    confusion = case.get("confusion") or []
    per_class = {c: int(sum(row)) for c, row in zip(classes, confusion)} if confusion else {c: 0 for c in classes}
    metric = discrimination(res["kind"], len(classes))
    ci = (case.get("ci95") or {}).get(metric)
    return {
        "source": source,
        "where": where,
        "level": "case",
        "interval_unit": res.get("interval_unit", "patient"),
        "n_cases": case.get("n_cases"),
        "n_scored": case.get("n_scored"),
        "abstained": case.get("abstained"),
        "cases_per_class": per_class,
        "metric": metric,
        "value": case.get(metric),
        "ci95": ci,
        "case_ece": case.get("ece"),
        "calibration": case.get("calibration"),
        "degenerate": case.get("degenerate"),
        "rule": asdict(rule),
    }


def refuse_ensemble_results(doc: dict[str, Any], where: Any) -> None:
    """evaluate.py's metrics.json computed with other checkpoints averaged in (ensemble=) is no checkpoint's own
    evidence: not its card's test results (models.export --metrics), not a head's sign-off (models.approve)."""
    if (doc.get("checkpoint") or {}).get("ensemble"):
        raise UserError(
            f"{where} was computed with other checkpoints averaged in (ensemble=): evaluate the checkpoint alone "
            "(evaluate.py profile=fast, or ensemble=null)"
        )


def evidence_refusals(info: HeadCard, evidence: dict[str, Any] | None) -> list[str]:
    """Why ``evidence`` (an ``evidence`` entry) does not support showing the head; empty = it does."""
    if not evidence:
        return [
            "no evidence from a locked test split or pooled out-of-fold predictions (python -m metrics.cv or "
            "evaluate.py, then python -m models.approve)"
        ]
    out = []
    rule = GateRule.from_dict(evidence.get("rule"))
    if evidence.get("source") not in EVIDENCE_SOURCES:
        out.append(f"evidence source {evidence.get('source')!r} chose something (only {EVIDENCE_SOURCES} count)")
    if evidence.get("interval_unit") == "frame":
        out.append("evidence intervals are by frame (data.group=frame), not by patient")
    per_class = evidence.get("cases_per_class") or {}
    short = {c: per_class.get(c, 0) for c in info.classes if per_class.get(c, 0) < rule.min_cases_per_class}
    if short:
        out.append(
            f"too few labelled cases: {', '.join(f'{c} {n}' for c, n in short.items())} "
            f"(at least {rule.min_cases_per_class} per class)"
        )
    metric, ci = evidence.get("metric"), evidence.get("ci95")
    floor = rule.min_qwk if metric == "qwk" else rule.min_auroc
    if metric not in ("auroc", "qwk") or not _is_interval(ci):
        out.append(f"no case-level {metric or 'discrimination'} interval")
    elif not ci[0] > floor:
        out.append(f"case {metric.upper()} 95% interval [{ci[0]:.3f}, {ci[1]:.3f}] does not exclude {floor:g}")
    ece = evidence.get("case_ece")
    if not _is_number(ece):
        out.append("no case-level calibration (ECE)")
    elif ece > rule.max_case_ece:
        out.append(f"case-level ECE {ece:.3f} > {rule.max_case_ece:g}")
    slope = (evidence.get("calibration") or {}).get("slope")
    lo, hi = rule.slope_range
    if len(info.classes) == 2 and _is_number(slope) and not lo <= slope <= hi:
        out.append(f"case-level calibration slope {slope:.2f} outside [{lo:g}, {hi:g}]")
    if evidence.get("degenerate"):
        out.append(f"degenerate predictor: {evidence['degenerate']}")
    return out


def refusals(card: ModelCard, head: str) -> list[str]:
    """Every reason the card does not let ``head`` be shown to a clinician; empty = shown."""
    info = card.heads.get(head)
    if info is None:
        return ["not available: no validated model"]
    out = []
    if info.trained is not True:
        out.append("not trained")
    if info.label_source != "real":
        out.append(f"labels are '{info.label_source}', not declared real")
    elif not (info.label_declaration or {}).get("by"):
        out.append("nobody is named as declaring the labels real (data.label_declared_by)")
    out += evidence_refusals(info, info.evidence)
    so = info.signoff or {}
    if not so.get("by"):
        out.append("not signed off (python -m models.approve CHECKPOINT --head HEAD --by NAME)")
    elif info.evidence and so.get("evidence_sha256") != digest(info.evidence):
        out.append("the sign-off is for other evidence")
    return out


def shown(card: ModelCard, head: str) -> bool:
    return not refusals(card, head)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_interval(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_number(x) for x in v)
