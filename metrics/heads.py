"""Score attribute heads from per-frame prediction rows: per frame, per case, with case-resampled intervals,
calibration before and after temperature scaling, and the lesion-area-only baseline for binary heads.

A row (models.predictor.predict_records) is {"id", "group", "labels": {head: int}, "logits": {head: [m]},
"probs": {head: [K]} (calibrated), "area_fraction": float (the predicted lesion area as a fraction of the
frame), "informative": bool}, and optionally "patient" (the
independent unit when one patient has several cases). Every interval resamples patients (else cases) whole.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metrics.grading import bootstrap, c_index, paired_bootstrap, reliability_bins, scores
from models.card import HeadCard
from models.heads import aggregate_case, head_probabilities


def resampling_unit(row: Mapping[str, Any]) -> str:
    """The resampling unit of a row: its patient when known, else its case."""
    return row.get("patient") or row["group"]


def _labelled_frames(rows: Sequence[Mapping[str, Any]], head: str, key: str = "probs"):
    """(probs or logits N x K, labels, resampling units, predicted lesion area fractions, informative flags) of
    the rows with a known label for ``head``; None when there is none."""
    known = [r for r in rows if r["labels"].get(head, -1) >= 0 and head in r[key]]
    if not known:
        return None
    return (
        np.array([r[key][head] for r in known], dtype=np.float64),
        np.array([r["labels"][head] for r in known]),
        [resampling_unit(r) for r in known],
        np.array([r["area_fraction"] for r in known]),
        np.array([bool(r["informative"]) for r in known]),
    )


def area_baseline_direction(rows: Sequence[Mapping[str, Any]], head: str) -> int:
    """The direction of the head's lesion-area-only baseline (_lesion_area_baseline): +1 when a larger predicted
    lesion goes with a higher class on these rows (the area's AUROC, or concordance for more classes, >= 0.5), else
    -1. Fitted on validation and recorded in the card (baseline.direction)."""
    frames = _labelled_frames(rows, head)
    if frames is None:
        return 1
    auc = c_index(frames[3], frames[1])  # the AUROC for two classes, ordinal concordance for more
    return 1 if auc is None or auc >= 0.5 else -1


def case_estimates(
    rows: Sequence[Mapping[str, Any]], head: str, *, min_frames: int, min_confidence: float
) -> list[dict[str, Any]]:
    """Each labelled case's aggregate (models.heads.aggregate_case: the displayed rule) with its id, label (its
    frames' most frequent known label) and patient, sorted by case id; abstained cases included."""
    by_group: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["labels"].get(head, -1) >= 0 and head in r["probs"]:
            by_group[r["group"]].append(r)
    out = []
    for g, rs in sorted(by_group.items()):
        agg = aggregate_case(
            np.array([r["probs"][head] for r in rs]),
            np.array([r["informative"] for r in rs]),
            min_frames=min_frames,
            min_confidence=min_confidence,
        )
        label = int(np.bincount([r["labels"][head] for r in rs]).argmax())
        out.append(
            dict(agg, case=g, label=label, unit=resampling_unit(rs[0]), k=len(rs[0]["probs"][head]), n_rows=len(rs))
        )
    return out


def case_scores(
    rows: Sequence[Mapping[str, Any]], head: str, *, min_frames: int, min_confidence: float
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """(probs, labels, units) of the cases that did not abstain (units: each case's patient, for resampling), and
    how many cases abstained (case_estimates)."""
    est = case_estimates(rows, head, min_frames=min_frames, min_confidence=min_confidence)
    kept = [e for e in est if not e["abstain"]]
    k = est[0]["k"] if est else 0
    return (
        np.array([e["probs"] for e in kept]).reshape(-1, k),
        np.array([e["label"] for e in kept], dtype=int),
        [e["unit"] for e in kept],
        len(est) - len(kept),
    )


def _decisive_class_calibration(probs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Logistic recalibration slope / intercept of the decisive class: class 1 of a binary head, the highest
    class (F2, non-lifting) of a graded one."""
    from metrics.stats import calibration_slope_intercept

    top = probs.shape[1] - 1
    out = calibration_slope_intercept(probs[:, top], labels == top)
    out["of"] = "class 1" if top == 1 else "the highest class"
    return out


def _reviewer_checks(probs: np.ndarray, labels: np.ndarray, kind: str) -> dict[str, Any]:
    """What a reviewer asks beside the point metrics: calibration slope / intercept, a degenerate-predictor flag,
    and for graded heads the mean absolute grade error."""
    from metrics.stats import degenerate, expected_grade_mae, ordinal_mae

    out: dict[str, Any] = {"calibration": _decisive_class_calibration(probs, labels), "degenerate": degenerate(probs)}
    if kind == "ordinal" and probs.shape[1] > 2:
        out.update(grade_mae=ordinal_mae(probs, labels), expected_grade_mae=expected_grade_mae(probs, labels))
    return out


def _lesion_area_baseline(
    rows, head, info, probs, labels, lesion_area, units, *, n_boot: int, seed: int
) -> dict[str, Any] | None:
    """The lesion-area-only baseline: rank frames by predicted lesion area (direction fitted on validation) and
    compare its concordance with the head's (AUROC for two classes; ordinal C-index of the expected grade for
    graded heads), with a paired interval of the difference. None for nominal heads of 3+ classes."""
    k = probs.shape[1]
    if k > 2 and info.kind != "ordinal":
        return None
    direction = int((info.baseline or {}).get("direction", 1))
    known = [r for r in rows if r["labels"].get(head, -1) >= 0 and head in r["probs"]]
    base = np.array(
        [
            r["baseline_score"][head] if head in r.get("baseline_score", {}) else direction * a
            for r, a in zip(known, lesion_area)
        ]
    )
    score = probs[:, 1] if k == 2 else probs @ np.arange(k)  # the expected grade
    name = "AUROC" if k == 2 else "ordinal C-index"
    return {
        "what": f"{name} of ranking frames by predicted lesion area alone "
        f"({'larger' if direction > 0 else 'smaller'} = higher class; direction fitted on validation)",
        "metric": name,
        "head": c_index(score, labels),
        "auroc": c_index(base, labels),
        "ci95": paired_bootstrap(lambda i: c_index(base[i], labels[i]), units, n_boot=n_boot, seed=seed),
        "head_minus_baseline_ci95": paired_bootstrap(
            lambda i: _difference(c_index(score[i], labels[i]), c_index(base[i], labels[i])),
            units,
            n_boot=n_boot,
            seed=seed,
        ),
    }


def score_head(
    rows: Sequence[Mapping[str, Any]],
    head: str,
    info: HeadCard,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_frames: int = 1,
    min_confidence: float = 0.0,
    interval_unit: str = "patient",
    with_baseline: bool = True,
) -> dict[str, Any] | None:
    """Every metric of one head, per frame and per case. ``info``: the card's entry for the head (classes, kind,
    temperature, baseline), a models.card.HeadCard. Intervals resample patients (``resampling_unit``); interval_unit
    ``frame`` records that each frame was its own case (data.group=frame). None when no row has a label."""
    frames = _labelled_frames(rows, head)
    if frames is None:
        return None
    probs, labels, units, lesion_area, informative = frames
    cases = [r["group"] for r in rows if r["labels"].get(head, -1) >= 0 and head in r["probs"]]
    t = info.temperature
    out: dict[str, Any] = {
        "classes": list(info.classes),
        "kind": info.kind,
        "temperature": t if t == t else None,  # None: pooled over folds with their own
        "interval_unit": interval_unit,
    }
    frame = scores(probs, labels)
    frame.update(
        n=len(labels),
        n_cases=len(set(cases)),
        n_patients=len(set(units)),
        n_informative=int(informative.sum()),
        ci95=bootstrap(probs, labels, units, n_boot=n_boot, seed=seed),
        reliability=reliability_bins(probs, labels),
        **_reviewer_checks(probs, labels, info.kind),
    )
    raw = _labelled_frames(rows, head, "logits")
    if raw is not None:  # calibration before temperature scaling, on the same frames
        p1 = head_probabilities(torch.from_numpy(raw[0]), out["kind"]).numpy()
        frame["ece_before_temperature"] = scores(p1, raw[1])["ece"]
    out["frame"] = frame
    base = (
        _lesion_area_baseline(rows, head, info, probs, labels, lesion_area, units, n_boot=n_boot, seed=seed)
        if with_baseline
        else None
    )
    if base is not None:
        out["area_baseline"] = base
    if len(set(cases)) < len(cases):  # some case has several frames: score cases too
        cp, cl, cu, abstained = case_scores(rows, head, min_frames=min_frames, min_confidence=min_confidence)
        case: dict[str, Any] = {
            "n_cases": len(set(cases)),
            "abstained": abstained,
            "abstention_rate": abstained / max(1, len(set(cases))),
            "rule": {"min_frames": min_frames, "min_confidence": min_confidence},
        }
        if len(cl):
            case.update(scores(cp, cl), n_scored=len(cl), ci95=bootstrap(cp, cl, cu, n_boot=n_boot, seed=seed))
            case.update(_reviewer_checks(cp, cl, info.kind), n_patients=len(set(cu)))
        out["case"] = case
    return out


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def score_heads(rows: Sequence[Mapping[str, Any]], heads: Mapping[str, HeadCard], **kw: Any) -> dict[str, Any]:
    out = {}
    for h, info in heads.items():
        s = score_head(rows, h, info, **kw)
        if s is not None:
            out[h] = s
    return out


def level_cells(x: Mapping[str, Any]) -> dict[str, Any]:
    """One level's (frame or case) results as table cells: n, AUROC and QWK with intervals, ECE, calibration,
    grade error and the degenerate-predictor flag (the columns every reviewer's table shares)."""
    ci, cal = x.get("ci95") or {}, x.get("calibration") or {}
    return {
        "n": x.get("n_scored", x.get("n")),
        "AUROC [95% CI]": value_with_interval(x.get("auroc"), ci.get("auroc")),
        "QWK [95% CI]": value_with_interval(x.get("qwk"), ci.get("qwk")),
        "ECE": x.get("ece"),
        "calibration slope": cal.get("slope"),
        "calibration intercept": cal.get("intercept"),
        "grade MAE": x.get("grade_mae"),
        "flag": x.get("degenerate") or "",
    }


def value_with_interval(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def _interval_cells(level: Mapping[str, Any]) -> str:
    """One level's AUROC, QWK, macro-F1, balanced accuracy and ECE with their intervals, as Markdown cells."""
    metrics = ("auroc", "qwk", "macro_f1", "balanced_accuracy", "ece")
    return " | ".join(value_with_interval(level[m], level["ci95"].get(m)) for m in metrics) + " |"


def heads_markdown(results: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """A markdown table per head: frame-level (and case-level) metrics with 95% intervals, baseline beside."""
    lines = [f"### {title}"] if title else []
    for h, r in results.items():
        f = r["frame"]
        temp = f"; temperature {r['temperature']:.2f}" if r["temperature"] is not None else ""
        if r.get("interval_unit") == "frame":
            temp += "; intervals by frame (data.group=frame)"
        lines += [
            f"\n**{h}** ({r['kind']}, classes {', '.join(r['classes'])}{temp})\n",
            "| level | n | AUROC | QWK | macro-F1 | balanced acc. | ECE |",
            "|---|---|---|---|---|---|---|",
            f"| {'frame' if f['n'] > f['n_cases'] else 'case (one row each)'} | {f['n']} ({f['n_cases']} cases) | "
            + _interval_cells(f),
        ]
        c = r.get("case")
        if c and c.get("n_scored"):
            lines.append(
                f"| case (abstained {c['abstained']}/{c['n_cases']}) | {c['n_scored']} | " + _interval_cells(c)
            )
        b = r.get("area_baseline")
        if b:
            metric = b.get("metric", "AUROC")
            col = (
                "| area-only baseline | {n} | {v} | | | | |"
                if metric == "AUROC"
                else "| area-only baseline | {n} | | {v} | | | |"
            )
            lines.append(col.format(n=f["n"], v=f"{value_with_interval(b['auroc'], b['ci95'])} ({metric})"))
            d = b["head_minus_baseline_ci95"]
            if d:
                lines.append(
                    f"\nHead {metric} ({b.get('head', float('nan')):.3f}) minus baseline {metric}, 95% interval: "
                    f"[{d[0]:+.3f}, {d[1]:+.3f}]"
                )
        for level, x in (("frame", f), ("case", c or {})):
            cal = x.get("calibration") or {}
            if cal.get("slope") is not None:
                lines.append(
                    f"\nCalibration per {level} ({cal.get('of')}): slope {cal['slope']:.2f}, intercept "
                    f"{cal['intercept']:.2f}"
                    + (f"; mean absolute grade error {x['grade_mae']:.2f}" if x.get("grade_mae") is not None else "")
                )
            if x.get("degenerate"):
                lines.append(f"\n**Flag: degenerate predictor per {level}: {x['degenerate']}**")
        if "ece_before_temperature" in f:
            lines.append(f"\nECE before temperature scaling {f['ece_before_temperature']:.3f}, after {f['ece']:.3f}")
        lines.append(
            f"\nConfusion matrix per frame (rows = truth {', '.join(r['classes'])}): {f['confusion']}"
            + (f"; per case: {c['confusion']}" if c and c.get("n_scored") else "")
        )
    return "\n".join(lines) + "\n"
