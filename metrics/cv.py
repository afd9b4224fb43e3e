"""Patient-level cross-validation: pool the out-of-fold predictions of every fold into one report.

    python train.py ... data.cv.folds=5 data.cv.fold=0,1,2,3,4 model.head_inputs=image,covariates,fused -m
    python -m metrics.cv multirun/<date>/<time> [--out DIR] [--n-boot 1000]

Each fold's run writes ``oof.json`` (train.py): its held-out patients' frame predictions with the fold's
calibrated probabilities. This command finds every ``oof.json`` under the folder, groups them by variant
(``model.head_inputs``: image / covariates / fused), checks that each variant's folds are complete and disjoint,
and writes ``cv_report.md``, ``cv_results.json`` and one reliability diagram per head: per head AUROC, QWK,
macro-F1, balanced accuracy and ECE, per frame and per case, each with a bootstrap 95% interval resampled by case,
and for binary heads the lesion-area-only baseline. Variants are compared on the same folds (same patients).
Exit code 2 with one line when the folder holds no complete set of folds.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.files import atomic_write
from metrics.heads import heads_markdown, level_cells, score_heads
from metrics.plots import decision_curves, reliability_diagram
from metrics.stats import markdown_table, write_table
from metrics.study import centre_rows, covariate_rows, decision_curve_table, flow_rows, paired_comparisons, repeat_rows
from models.calibration import T_SANE, temperature_flag
from models.card import HeadCard


def write_oof(
    path: Path,
    stem: Path,
    records: Sequence[Any],
    *,
    fold: int,
    variant: str,
    folds: int,
    device: str = "auto",
    splits: dict[str, Any] | None = None,
    cv: dict[str, Any] | None = None,
    group_unit: str = "patient",
) -> None:
    """Predict the held-out fold's records with the (calibrated) checkpoint at ``stem`` into ``path``, with the
    patients of the run's train / validation / held-out parts (``splits``: data.splits.split_summary), so that
    metrics.cv can check again that no held-out patient trained or chose anything."""
    from models.predictor import Predictor, predict_records

    pred = Predictor.from_checkpoint(stem, device=device)
    rows = predict_records(pred, list(records))
    heads = {
        h: {"classes": info.classes, "kind": info.kind, "temperature": info.temperature, "baseline": info.baseline}
        for h, info in pred.card.heads.items()
    }
    for r in rows:  # the fold's own baseline direction (fitted on its validation split) travels with each row
        r["baseline_score"] = {
            h: (info.baseline or {}).get("direction", 1) * r["area_fraction"]
            for h, info in pred.card.heads.items()
            if len(info.classes) == 2 or info.kind == "ordinal"
        }
    with atomic_write(path) as tmp:
        tmp.write_text(
            json.dumps(
                {
                    "fold": fold,
                    "folds": folds,
                    "variant": variant,
                    "repeat": int((cv or {}).get("repeat") or 0),
                    "repeats": int((cv or {}).get("repeats") or 1),
                    "seed": (cv or {}).get("seed"),
                    "group_unit": group_unit,
                    "splits": {k: v.get("units", []) for k, v in (splits or {}).items()},
                    "split_counts": {
                        k: {n: v[n] for n in ("frames", "cases", "patients")} for k, v in (splits or {}).items()
                    },
                    "heads": heads,
                    "rows": rows,
                }
            )
        )


def check_fold_splits(d: dict[str, Any], path: Path) -> None:
    """Refuse a fold whose held-out patients were also in its training or validation part (from the run's saved
    splits), or whose predictions include a patient outside its held-out part."""
    splits = d.get("splits")
    if not splits or "heldout" not in splits:
        raise UserError(f"{path} holds no saved splits (written by an older endolift): rerun the fold")
    held = set(splits["heldout"])
    for part in ("train", "val"):
        both = sorted(held & set(splits.get(part) or []))
        if both:
            raise UserError(f"{path}: patient {both[0]} is both held out and in the {part} part of fold {d['fold']}")
    outside = sorted({r.get("patient") or r["group"] for r in d["rows"]} - held)
    if outside:
        raise UserError(f"{path}: predictions of patient {outside[0]}, who is not in fold {d['fold']}'s held-out part")


def collect(root: Path) -> dict[tuple[str, int], dict[str, Any]]:
    """(variant, repeat) -> {"heads", "rows", "folds", "k", "temperatures", "split_counts", "group_unit"} from every
    oof.json under root, each checked: folds complete, disjoint by patient within the fold (saved splits) and
    across folds."""
    files = sorted(root.rglob("oof.json"))
    if not files:
        raise UserError(f"no oof.json under {root} (run train.py with data.cv.folds=K data.cv.fold=0,..,K-1 -m)")
    by_key: dict[tuple[str, int], dict[str, Any]] = defaultdict(
        lambda: {"rows": [], "folds": {}, "heads": None, "split_counts": {}}
    )
    declared_repeats = 1
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError) as e:
            raise UserError(f"cannot read {f} ({e})") from None
        check_fold_splits(d, f)
        key = (d["variant"], int(d.get("repeat") or 0))
        declared_repeats = max(declared_repeats, int(d.get("repeats") or 1))
        v = by_key[key]
        if d["fold"] in v["folds"]:
            raise UserError(
                f"fold {d['fold']} of variant {key[0]} (repeat {key[1]}) appears twice: {v['folds'][d['fold']]} and "
                f"{f} (point at one sweep's folder)"
            )
        v["folds"][d["fold"]] = str(f)
        v["split_counts"][d["fold"]] = d.get("split_counts") or {}
        v["k"] = d.get("folds") or v.get("k")
        v["group_unit"] = d.get("group_unit", "patient")
        v["heads"] = v["heads"] or {
            h: HeadCard(**dict(info, temperature=float("nan")))  # each fold has its own
            for h, info in d["heads"].items()
        }
        for h, info in d["heads"].items():
            v.setdefault("temperatures", {}).setdefault(h, {})[d["fold"]] = info["temperature"]
        v["rows"] += [dict(r, fold=d["fold"]) for r in d["rows"]]
    for (name, rep), v in by_key.items():
        expected = set(range(v.get("k") or (max(v["folds"]) + 1)))
        if set(v["folds"]) != expected:
            raise UserError(
                f"variant {name} (repeat {rep}): folds {sorted(v['folds'])} of {len(expected)}; missing "
                f"{sorted(expected - set(v['folds']))} (rerun them into the same sweep folder)"
            )
        folds_of = defaultdict(set)
        for r in v["rows"]:
            folds_of[r.get("patient") or r["group"]].add(r["fold"])
        leaked = [g for g, fs in folds_of.items() if len(fs) > 1]
        if leaked:
            raise UserError(f"variant {name} (repeat {rep}): patient {leaked[0]} is in several folds' held-out sets")
    missing = sorted({(n, r) for n, _ in by_key for r in range(declared_repeats)} - set(by_key))
    if missing:
        raise UserError(
            f"data.cv.repeats={declared_repeats} but variant {missing[0][0]} has no repeat {missing[0][1]} "
            "(run data.cv.repeat=0,..,R-1 into the same sweep folder)"
        )
    return dict(by_key)


def _covariate_names(rows: Sequence[dict[str, Any]]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for c in r.get("covariates") or {}:
            if c not in names:
                names.append(c)
    return names


def score_variants(
    by_key: dict[tuple[str, int], dict[str, Any]], *, n_boot: int, min_frames: int, min_confidence: float
) -> tuple[dict[int, dict[str, Any]], dict[int, dict[str, list]]]:
    """repeat -> variant -> head -> score_head result, and repeat -> variant -> rows; with covariates in the rows,
    a ``covariates-lr`` variant: a logistic / ordinal regression on the covariates alone, fitted on the same folds."""
    results: dict[int, dict[str, Any]] = defaultdict(dict)
    rows_by: dict[int, dict[str, list]] = defaultdict(dict)
    for (name, rep), v in sorted(by_key.items()):
        kw = dict(n_boot=n_boot, min_frames=min_frames, min_confidence=min_confidence, interval_unit=v["group_unit"])
        results[rep][name] = score_heads(v["rows"], v["heads"], **kw)
        rows_by[rep][name] = v["rows"]
        covs = _covariate_names(v["rows"])
        if covs and "covariates-lr" not in rows_by[rep]:
            pseudo = covariate_rows(v["rows"], v["heads"], covs)
            results[rep]["covariates-lr"] = score_heads(pseudo, v["heads"], with_baseline=False, **kw)
            rows_by[rep]["covariates-lr"] = pseudo
    return dict(results), dict(rows_by)


def summary_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The paper's main table: one row per variant, head and level, with intervals, calibration and flags."""
    out = []
    for name, heads in sorted(results.items()):
        for h, r in heads.items():
            for level in ("frame", "case"):
                x = r.get(level)
                if not x or x.get("n", x.get("n_scored")) is None:
                    continue
                out.append({"variant": name, "head": h, "level": level, **level_cells(x)})
    return out


def write_tables(out: Path, name: str, rows: list[dict[str, Any]], caption: str, md: list[str]) -> None:
    """A table as Markdown into the report and as CSV + LaTeX files beside it."""
    if not rows:
        return
    write_table(rows, out / name, caption=caption)
    md += [f"### {caption}", "", markdown_table(rows), "", f"(`{name}.csv`, `{name}.tex`)", ""]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pool cross-validation folds into cv_report.md")
    ap.add_argument("root", help="the sweep folder holding each fold's run (with its oof.json)")
    ap.add_argument("--out", default=None, help="output folder (default: ROOT)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--min-frames", type=int, default=3, help="case-level: informative frames needed, else abstain")
    ap.add_argument("--min-confidence", type=float, default=0.0, help="case-level: abstain below this confidence")
    a = ap.parse_args(argv)
    try:
        by_key = collect(Path(a.root))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out or a.root)
    out.mkdir(parents=True, exist_ok=True)
    rule = dict(min_frames=a.min_frames, min_confidence=a.min_confidence)
    per_repeat, rows_by = score_variants(by_key, n_boot=a.n_boot, **rule)
    primary = min(per_repeat)
    results, variants = per_repeat[primary], rows_by[primary]
    by_frame = any(v["group_unit"] == "frame" for v in by_key.values())
    unit_text = "frames (data.group=frame: each frame its own case)" if by_frame else "patients"
    md = [
        "# Cross-validation report",
        "",
        f"Pooled out-of-fold predictions under `{a.root}`; 95% intervals: {a.n_boot} bootstrap resamples of "
        f"{unit_text}. Each fold's probabilities are calibrated on that fold's own validation split; no held-out "
        "patient chose anything (checked again here from each run's saved splits). "
        f"{'Repeat ' + str(primary) + ' in detail; the spread over repeats below.' if len(per_repeat) > 1 else ''}",
        "",
    ]
    for name, res in sorted(results.items()):
        v = by_key.get((name, primary))
        temps = "; ".join(
            f"{h}: " + ", ".join(f"fold {k} {t:.2f}" for k, t in sorted(ts.items()))
            for h, ts in (v or {}).get("temperatures", {}).items()
        )
        flags = [
            f"{h} temperature {t:.2f} in fold {k} is outside [{T_SANE[0]:.2f}, {T_SANE[1]:.2f}]"
            for h, ts in (v or {}).get("temperatures", {}).items()
            for k, t in ts.items()
            if temperature_flag(t)
        ]
        what = "covariates only (logistic regression, same folds)" if v is None else "head inputs"
        md += [f"## Variant `{name}` ({what})", ""]
        if v is not None:
            md += [f"Folds {sorted(v['folds'])}. Temperatures (each fold's own): {temps}", ""]
        md += [f"**Flag:** {x}" for x in flags] + ([""] if flags else [])
        md.append(heads_markdown(res))
        for h, r in res.items():
            if r["frame"].get("reliability"):
                reliability_diagram(
                    out / f"reliability_{name}_{h}.png",
                    {"frames": r["frame"]["reliability"]},
                    f"{h} ({name}), out-of-fold",
                    svg=True,
                )
                md.append(f"![reliability {h} {name}](reliability_{name}_{h}.png)\n")
    write_tables(out, "table_heads", summary_rows(results), "Heads per variant and level", md)
    heads = sorted({h for r in results.values() for h in r})
    kinds = {h: info.kind for v in by_key.values() for h, info in v["heads"].items()}
    comparisons, net, centres = [], [], []
    for h in heads:
        comparisons += paired_comparisons(variants, h, kinds[h], n_boot=a.n_boot, **rule)
        curves, table = decision_curve_table(variants, h, **rule)
        if curves:
            decision_curves(out / f"decision_curve_{h}.png", curves, f"{h}: net benefit of the decisive class")
            md.append(f"![decision curve {h}](decision_curve_{h}.png)\n")
            net += table
        info = next(v["heads"][h] for v in by_key.values() if h in v["heads"])
        for name, rows in sorted(variants.items()):
            centres += [dict(c, variant=name) for c in centre_rows(rows, h, info, n_boot=a.n_boot, **rule)]
    write_tables(out, "table_comparisons", comparisons, "Paired comparisons (same cases, patient bootstrap)", md)
    write_tables(out, "table_decision_curve", net, "Net benefit at chosen thresholds", md)
    write_tables(out, "table_centres", centres, "Per centre", md)
    first = by_key[min(k for k in by_key if k[1] == primary)]
    flow = flow_rows(first["split_counts"], first["rows"], heads, **rule)
    write_tables(out, "table_flow", flow, "Patient flow per fold (TRIPOD+AI item 20)", md)
    if len(per_repeat) > 1:
        write_tables(out, "table_repeats", repeat_rows(per_repeat), f"Spread over {len(per_repeat)} repeats", md)
        with atomic_write(out / "cv_repeats.json") as tmp:
            tmp.write_text(json.dumps({str(k): v for k, v in per_repeat.items()}, indent=2, default=float))
    doc = {
        name: {
            "folds": sorted(by_key[(name, primary)]["folds"]) if (name, primary) in by_key else None,
            "n_rows": len(variants[name]),
            "heads": res,
        }
        for name, res in results.items()
    }
    with atomic_write(out / "cv_results.json") as tmp:
        tmp.write_text(json.dumps(doc, indent=2, default=float))
    with atomic_write(out / "cv_report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written to {out / 'cv_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
