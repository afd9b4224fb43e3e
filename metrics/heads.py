"""Score attribute heads from per-frame prediction rows: per frame, per case, with case-resampled intervals,
calibration before and after temperature scaling, and the lesion-area-only baseline for binary heads.

A row (models.predictor.predict_records) is {"id", "group", "labels": {head: int}, "logits": {head: [m]},
"probs": {head: [K]} (calibrated), "area_fraction": float, "informative": bool}.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from metrics.grading import binary_auroc, bootstrap, paired_bootstrap, reliability_bins, scores
from models.card import HeadCard
from models.heads import aggregate_case, head_probabilities


def _arrays(rows: Sequence[Mapping[str, Any]], head: str, key: str = "probs"):
    known = [r for r in rows if r["labels"].get(head, -1) >= 0 and head in r[key]]
    if not known:
        return None
    return (
        np.array([r[key][head] for r in known], dtype=np.float64),
        np.array([r["labels"][head] for r in known]),
        [r["group"] for r in known],
        np.array([r["area_fraction"] for r in known]),
        np.array([bool(r["informative"]) for r in known]),
    )


def area_direction(rows: Sequence[Mapping[str, Any]], head: str) -> int:
    """+1 when a larger predicted lesion means the positive class (on these rows), else -1. Fit on validation."""
    arr = _arrays(rows, head)
    if arr is None:
        return 1
    auc = binary_auroc(arr[3], arr[1] == 1)
    return 1 if auc is None or auc >= 0.5 else -1


def case_scores(
    rows: Sequence[Mapping[str, Any]], head: str, *, min_frames: int, min_confidence: float
) -> tuple[np.ndarray, np.ndarray, list[str], int]:
    """Aggregate each case's frames (models.heads.aggregate_case). Returns (probs, labels, groups) of the cases that
    did not abstain, and how many cases abstained. A case's label is its frames' most frequent known label."""
    by_group: dict[str, list] = defaultdict(list)
    for r in rows:
        if r["labels"].get(head, -1) >= 0 and head in r["probs"]:
            by_group[r["group"]].append(r)
    probs, labels, groups, abstained = [], [], [], 0
    for g, rs in sorted(by_group.items()):
        agg = aggregate_case(
            np.array([r["probs"][head] for r in rs]),
            np.array([r["informative"] for r in rs]),
            min_frames=min_frames,
            min_confidence=min_confidence,
        )
        if agg["abstain"]:
            abstained += 1
            continue
        probs.append(agg["probs"])
        labels.append(np.bincount([r["labels"][head] for r in rs]).argmax())
        groups.append(g)
    k = len(next(iter(by_group.values()))[0]["probs"][head]) if by_group else 0
    return np.array(probs).reshape(-1, k), np.array(labels, dtype=int), groups, abstained


def score_head(
    rows: Sequence[Mapping[str, Any]],
    head: str,
    info: HeadCard,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    min_frames: int = 1,
    min_confidence: float = 0.0,
) -> dict[str, Any] | None:
    """Every metric of one head, per frame and per case. ``info``: the card's entry for the head (classes, kind,
    temperature, baseline), a models.card.HeadCard. Returns None when no row has a label for the head."""
    arr = _arrays(rows, head)
    if arr is None:
        return None
    probs, labels, groups, area, informative = arr
    t = info.temperature
    out: dict[str, Any] = {
        "classes": list(info.classes),
        "kind": info.kind,
        "temperature": t if t == t else None,
    }  # None: pooled over folds with their own
    frame = scores(probs, labels)
    frame.update(
        n=len(labels),
        n_cases=len(set(groups)),
        n_informative=int(informative.sum()),
        ci95=bootstrap(probs, labels, groups, n_boot=n_boot, seed=seed),
        reliability=reliability_bins(probs, labels),
    )
    raw = _arrays(rows, head, "logits")
    if raw is not None:  # calibration before temperature scaling, on the same frames
        p1 = head_probabilities(torch.from_numpy(raw[0]), out["kind"]).numpy()
        frame["ece_before_temperature"] = scores(p1, raw[1])["ece"]
    out["frame"] = frame
    if probs.shape[1] == 2:
        direction = int((info.baseline or {}).get("direction", 1))
        known = [r for r in rows if r["labels"].get(head, -1) >= 0 and head in r["probs"]]
        base = np.array(
            [
                r["baseline_score"][head] if head in r.get("baseline_score", {}) else direction * a
                for r, a in zip(known, area)
            ]
        )
        out["area_baseline"] = {
            "what": "AUROC of ranking frames by predicted lesion area alone "
            f"({'larger' if direction > 0 else 'smaller'} = positive; direction fitted on validation)",
            "auroc": binary_auroc(base, labels == 1),
            "ci95": paired_bootstrap(lambda i: binary_auroc(base[i], labels[i] == 1), groups, n_boot=n_boot, seed=seed),
            "head_minus_baseline_ci95": paired_bootstrap(
                lambda i: _diff(binary_auroc(probs[i, 1], labels[i] == 1), binary_auroc(base[i], labels[i] == 1)),
                groups,
                n_boot=n_boot,
                seed=seed,
            ),
        }
    if len(set(groups)) < len(groups):  # some case has several frames: score cases too
        cp, cl, cg, abstained = case_scores(rows, head, min_frames=min_frames, min_confidence=min_confidence)
        case: dict[str, Any] = {
            "n_cases": len(set(groups)),
            "abstained": abstained,
            "abstention_rate": abstained / max(1, len(set(groups))),
            "rule": {"min_frames": min_frames, "min_confidence": min_confidence},
        }
        if len(cl):
            case.update(scores(cp, cl), n_scored=len(cl), ci95=bootstrap(cp, cl, cg, n_boot=n_boot, seed=seed))
        out["case"] = case
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def score_heads(rows: Sequence[Mapping[str, Any]], heads: Mapping[str, HeadCard], **kw: Any) -> dict[str, Any]:
    out = {}
    for h, info in heads.items():
        s = score_head(rows, h, info, **kw)
        if s is not None:
            out[h] = s
    return out


def fmt_ci(value: float | None, ci: Sequence[float] | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{value:.3f}"


def heads_markdown(results: Mapping[str, Mapping[str, Any]], title: str = "") -> str:
    """A markdown table per head: frame-level (and case-level) metrics with 95% intervals, baseline beside."""
    lines = [f"### {title}"] if title else []
    for h, r in results.items():
        f = r["frame"]
        temp = f"; temperature {r['temperature']:.2f}" if r["temperature"] is not None else ""
        lines += [
            f"\n**{h}** ({r['kind']}, classes {', '.join(r['classes'])}{temp})\n",
            "| level | n | AUROC | QWK | macro-F1 | balanced acc. | ECE |",
            "|---|---|---|---|---|---|---|",
            f"| frame | {f['n']} ({f['n_cases']} cases) | "
            + " | ".join(
                fmt_ci(f[m], f["ci95"].get(m)) for m in ("auroc", "qwk", "macro_f1", "balanced_accuracy", "ece")
            )
            + " |",
        ]
        c = r.get("case")
        if c and c.get("n_scored"):
            lines.append(
                f"| case (abstained {c['abstained']}/{c['n_cases']}) | {c['n_scored']} | "
                + " | ".join(
                    fmt_ci(c[m], c["ci95"].get(m)) for m in ("auroc", "qwk", "macro_f1", "balanced_accuracy", "ece")
                )
                + " |"
            )
        b = r.get("area_baseline")
        if b:
            lines.append(f"| area-only baseline | {f['n']} | {fmt_ci(b['auroc'], b['ci95'])} | | | | |")
            d = b["head_minus_baseline_ci95"]
            if d:
                lines.append(f"\nHead AUROC minus baseline AUROC, 95% interval: [{d[0]:+.3f}, {d[1]:+.3f}]")
        if "ece_before_temperature" in f:
            lines.append(f"\nECE before temperature scaling {f['ece_before_temperature']:.3f}, after {f['ece']:.3f}")
        lines.append(
            f"\nConfusion matrix per frame (rows = truth {', '.join(r['classes'])}): {f['confusion']}"
            + (f"; per case: {c['confusion']}" if c and c.get("n_scored") else "")
        )
    return "\n".join(lines) + "\n"
