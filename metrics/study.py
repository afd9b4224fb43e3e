"""What a clinical paper's reviewer asks of a cross-validated head, from pooled out-of-fold rows (metrics.cv).

Each function takes rows (metrics/heads.py's row format, plus ``fold`` and, where known, ``patient``, ``centre`` and
``covariates``) and returns plain table rows (lists of dicts) that metrics.cv writes as Markdown, CSV and LaTeX:

- ``covariate_rows``: the covariates-only comparison model, a logistic (nominal) or Frank & Hall ordinal logistic
  regression on the case's clinical covariates, fitted out-of-fold on the same folds (metrics.covariate_model);
- ``paired_comparisons``: every pair of inputs (image / covariates / fused) on the same cases: the case-level
  difference with a paired bootstrap interval resampled by patient, and DeLong's test for binary AUROC;
- ``decision_curve_table``: net benefit of binary heads' case probabilities (and of the decisive class of graded
  heads) against treat-all / treat-none;
- ``centre_rows``: the case-level metrics per centre (or device) when the manifest has a ``centre`` column;
- ``flow_rows``: the patient flow (TRIPOD+AI item 20): patients, cases and frames per fold and part, and per head the
  held-out cases that were labelled, abstained (and why) and scored;
- ``repeat_rows``: repeated cross-validation's spread of the case-level metric over repeats.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from metrics.grading import auroc, scores
from metrics.heads import case_estimates, level_cells, resampling_unit, value_with_interval


def case_table(rows: Sequence[Mapping[str, Any]], head: str, *, min_frames: int, min_confidence: float):
    """case id -> (probs K, label, patient) of the cases that did not abstain (metrics.heads.case_estimates). When
    every case is one frame (e.g. one image per patient), the case is the frame: no case abstains for having one."""
    if len({r["group"] for r in rows}) == len(rows):
        min_frames = 1
    est = case_estimates(rows, head, min_frames=min_frames, min_confidence=min_confidence)
    return {e["case"]: (np.asarray(e["probs"]), e["label"], e["unit"]) for e in est if not e["abstain"]}


def covariate_rows(
    rows: Sequence[Mapping[str, Any]], heads: Mapping[str, Any], covariates: Sequence[str]
) -> list[dict[str, Any]]:
    """One pseudo-row per case with the out-of-fold probabilities of a covariates-only regression per head (every
    case's row is informative; the case's fold is its rows' fold). Empty without covariates."""
    from metrics.covariate_model import covariate_regression_oof

    if not covariates:
        return []
    cases: dict[str, dict[str, Any]] = {}
    for r in rows:
        c = cases.setdefault(
            r["group"],
            {"fold": r["fold"], "patient": resampling_unit(r), "centre": r.get("centre"), "labels": defaultdict(list)},
        )
        c["covariates"] = r.get("covariates") or {}
        for h, v in r["labels"].items():
            if v >= 0:
                c["labels"][h].append(v)
    ids = sorted(cases)
    x = np.array([[_number_or_nan(cases[g]["covariates"].get(name)) for name in covariates] for g in ids], np.float64)
    folds = np.array([cases[g]["fold"] for g in ids])
    out = [
        {
            "id": g,
            "group": g,
            "patient": cases[g]["patient"],
            "centre": cases[g]["centre"],
            "fold": cases[g]["fold"],
            "labels": {},
            "probs": {},
            "logits": {},
            "area_fraction": 0.0,
            "informative": True,
        }
        for g in ids
    ]
    for h, info in heads.items():
        y = np.array(
            [Counter(cases[g]["labels"][h]).most_common(1)[0][0] if cases[g]["labels"][h] else -1 for g in ids]
        )
        if (y >= 0).sum() < 2 or len(np.unique(folds)) < 2:
            continue
        p = covariate_regression_oof(x, y, folds, kind=info.kind, n_classes=len(info.classes))
        for row, label, prob in zip(out, y, p):
            row["labels"][h] = int(label)
            row["probs"][h] = prob.tolist()
    return out


def _number_or_nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _decisive_class_risk(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(risk, outcome) of the decisive class: class 1 of a binary head, the highest grade of a graded one."""
    top = probs.shape[1] - 1
    return probs[:, top], labels == top


def paired_comparisons(
    variants: Mapping[str, Sequence[Mapping[str, Any]]],
    head: str,
    kind: str,
    *,
    min_frames: int,
    min_confidence: float,
    n_boot: int,
) -> list[dict[str, Any]]:
    """Every pair of variants on the cases that none of them abstained on: case AUROC (binary) or QWK (graded)
    difference with a paired, patient-resampled bootstrap interval; binary heads add DeLong's test."""
    from metrics.stats import delong_test, paired_bootstrap_diff

    tables = {
        name: case_table(rows, head, min_frames=min_frames, min_confidence=min_confidence)
        for name, rows in variants.items()
    }
    tables = {k: v for k, v in tables.items() if v}
    out = []
    names = sorted(tables)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            common = sorted(set(tables[a]) & set(tables[b]))
            if len(common) < 4:
                continue
            pa = np.array([tables[a][g][0] for g in common])
            pb = np.array([tables[b][g][0] for g in common])
            y = np.array([tables[a][g][1] for g in common])
            units = [tables[a][g][2] for g in common]
            metric_name = "qwk" if kind == "ordinal" and pa.shape[1] > 2 else "auroc"

            def metric(p, labels, m=metric_name):
                return scores(p, labels)[m] if m == "qwk" else auroc(p, labels)

            d = paired_bootstrap_diff(metric, pa, pb, y, units, n_boot=n_boot)
            row = {
                "head": head,
                "a": a,
                "b": b,
                "cases": len(common),
                "metric": f"case {metric_name.upper()}",
                "value a": d["a"],
                "value b": d["b"],
                "a - b [95% CI]": value_with_interval(d["diff"], d["ci95"]),
                "DeLong p": None,
            }
            if pa.shape[1] == 2:
                dl = delong_test(pa[:, 1], pb[:, 1], y == 1)
                row["DeLong p"] = dl["p"]
            out.append(row)
    return out


def decision_curve_table(
    variants: Mapping[str, Sequence[Mapping[str, Any]]],
    head: str,
    *,
    min_frames: int,
    min_confidence: float,
    thresholds: Sequence[float] = (0.1, 0.2, 0.3, 0.4, 0.5),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(full curves per variant for the figure, net benefit at a few thresholds for the table) of the case-level
    risk of the head's decisive class."""
    from metrics.stats import decision_curve, net_benefit

    curves, table = {}, []
    for name, rows in sorted(variants.items()):
        t = case_table(rows, head, min_frames=min_frames, min_confidence=min_confidence)
        if len(t) < 4:
            continue
        risk, y = _decisive_class_risk(np.array([v[0] for v in t.values()]), np.array([v[1] for v in t.values()]))
        if y.all() or not y.any():
            continue
        curves[name] = decision_curve(risk, y)
        for r in net_benefit(risk, y, thresholds):
            table.append({"head": head, "variant": name, "cases": len(t), **{k: round(v, 4) for k, v in r.items()}})
    return curves, table


def centre_rows(
    rows: Sequence[Mapping[str, Any]], head: str, info: Any, *, min_frames: int, min_confidence: float, n_boot: int
) -> list[dict[str, Any]]:
    """Case-level results per centre (rows' ``centre``); empty when no row names a centre."""
    from metrics.heads import score_head

    centres = sorted({r.get("centre") for r in rows if r.get("centre")})
    out = []
    for c in centres:
        res = score_head(
            [r for r in rows if r.get("centre") == c],
            head,
            info,
            n_boot=n_boot,
            min_frames=min_frames,
            min_confidence=min_confidence,
        )
        if res is None:
            continue
        lvl = res.get("case") or res["frame"]
        out.append({"head": head, "centre": c, **level_cells(lvl)})
    return out


def flow_rows(
    folds: Mapping[int, Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    heads: Sequence[str],
    *,
    min_frames: int,
    min_confidence: float,
) -> list[dict[str, Any]]:
    """The patient flow: per fold, the train / validation / held-out parts (patients, cases, frames, from each
    run's saved splits), and per head the held-out cases with a label, abstained (by reason) and scored."""
    out = []
    for f, counts in sorted(folds.items()):
        for part in ("train", "val", "heldout"):
            c = counts.get(part) or {}
            out.append({"fold": f, "part": part, "patients": c.get("patients"), "cases": c.get("cases"),
                        "frames": c.get("frames"), "head": "", "excluded": ""})  # fmt: skip
        held = [r for r in rows if r["fold"] == f]
        for h in heads:
            est = case_estimates(held, h, min_frames=min_frames, min_confidence=min_confidence)
            reasons = Counter(_abstention_reason_group(e["reason"]) for e in est if e["abstain"])
            kept = [e for e in est if not e["abstain"]]
            unlabelled = len({r["group"] for r in held}) - len(est)
            excluded = [f"{unlabelled} cases unlabelled"] if unlabelled else []
            excluded += [f"{n} abstained: {why}" for why, n in sorted(reasons.items())]
            out.append(
                {
                    "fold": f,
                    "part": "heldout scored",
                    "patients": len({e["unit"] for e in kept}),
                    "cases": len(kept),
                    "frames": sum(e["n_rows"] for e in kept),
                    "head": h,
                    "excluded": "; ".join(excluded) or "none",
                }
            )
    return out


def _abstention_reason_group(text: str | None) -> str:
    """Group abstention reasons ('2 informative frames < 3' and '1 informative frames < 3' alike)."""
    text = text or "no frames"
    if "informative frames <" in text:
        return "too few informative frames"
    if text.startswith("confidence"):
        return "low confidence"
    return text.split("(")[0].strip()


def repeat_rows(per_repeat: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Spread over repeats of the case-level AUROC and QWK per variant and head: per_repeat: repeat -> variant ->
    head -> score_head result."""
    acc: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for variants in per_repeat.values():
        for v, heads in variants.items():
            for h, res in heads.items():
                lvl = res.get("case") or res["frame"]
                for m in ("auroc", "qwk"):
                    if lvl.get(m) is not None:
                        acc[(v, h, m)].append(float(lvl[m]))
    return [
        {
            "variant": v,
            "head": h,
            "metric": f"case {m.upper()}",
            "repeats": len(xs),
            "mean": round(float(np.mean(xs)), 4),
            "sd": round(float(np.std(xs, ddof=1)), 4) if len(xs) > 1 else None,
            "min": round(min(xs), 4),
            "max": round(max(xs), 4),
        }
        for (v, h, m), xs in sorted(acc.items())
    ]
