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

from data.errors import UserError
from data.io import atomic_write
from metrics.heads import fmt_ci, heads_markdown, score_heads
from metrics.plots import reliability_diagram
from models.card import HeadCard


def write_oof(
    path: Path, stem: Path, records: Sequence[Any], *, fold: int, variant: str, folds: int, device: str = "auto"
) -> None:
    """Predict the held-out fold's records with the (calibrated) checkpoint at ``stem`` into ``path``."""
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
            if len(info.classes) == 2
        }
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps({"fold": fold, "folds": folds, "variant": variant, "heads": heads, "rows": rows}))


def collect(root: Path) -> dict[str, dict[str, Any]]:
    """variant -> {"heads", "rows", "folds"} from every oof.json under root."""
    files = sorted(root.rglob("oof.json"))
    if not files:
        raise UserError(f"no oof.json under {root} (run train.py with data.cv.folds=K data.cv.fold=0,..,K-1 -m)")
    by_variant: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows": [], "folds": {}, "heads": None})
    for f in files:
        try:
            d = json.loads(f.read_text())
        except (json.JSONDecodeError, OSError) as e:
            raise UserError(f"cannot read {f} ({e})") from None
        v = by_variant[d["variant"]]
        if d["fold"] in v["folds"]:
            raise UserError(
                f"fold {d['fold']} of variant {d['variant']} appears twice: {v['folds'][d['fold']]} and "
                f"{f} (point at one sweep's folder)"
            )
        v["folds"][d["fold"]] = str(f)
        v["k"] = d.get("folds") or v.get("k")
        v["heads"] = v["heads"] or {
            h: HeadCard(**dict(info, temperature=float("nan")))  # each fold has its own
            for h, info in d["heads"].items()
        }
        for h, info in d["heads"].items():
            v.setdefault("temperatures", {}).setdefault(h, {})[d["fold"]] = info["temperature"]
        v["rows"] += [dict(r, fold=d["fold"]) for r in d["rows"]]
    for name, v in by_variant.items():
        expected = set(range(v.get("k") or (max(v["folds"]) + 1)))
        if set(v["folds"]) != expected:
            raise UserError(
                f"variant {name}: folds {sorted(v['folds'])} of {len(expected)}; missing "
                f"{sorted(expected - set(v['folds']))} (rerun them into the same sweep folder)"
            )
        groups_per_fold = defaultdict(set)
        for r in v["rows"]:
            groups_per_fold[r["group"]].add(r["fold"])
        leaked = [g for g, fs in groups_per_fold.items() if len(fs) > 1]
        if leaked:
            raise UserError(f"variant {name}: case {leaked[0]} is in several folds' held-out sets")
    return dict(by_variant)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Pool cross-validation folds into cv_report.md")
    ap.add_argument("root", help="the sweep folder holding each fold's run (with its oof.json)")
    ap.add_argument("--out", default=None, help="output folder (default: ROOT)")
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--min-frames", type=int, default=3, help="case-level: informative frames needed, else abstain")
    ap.add_argument("--min-confidence", type=float, default=0.0, help="case-level: abstain below this confidence")
    a = ap.parse_args(argv)
    try:
        variants = collect(Path(a.root))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(a.out or a.root)
    out.mkdir(parents=True, exist_ok=True)
    results, md = (
        {},
        [
            "# Cross-validation report",
            "",
            f"Pooled out-of-fold predictions under `{a.root}`; 95% intervals: {a.n_boot} bootstrap "
            "resamples of cases (patients). Each fold's probabilities are calibrated on that fold's own "
            "validation split; no held-out patient chose anything.",
            "",
        ],
    )
    for name, v in sorted(variants.items()):
        folds = sorted(v["folds"])
        res = score_heads(
            v["rows"], v["heads"], n_boot=a.n_boot, min_frames=a.min_frames, min_confidence=a.min_confidence
        )
        results[name] = {"folds": folds, "n_rows": len(v["rows"]), "heads": res}
        temps = "; ".join(
            f"{h}: " + ", ".join(f"fold {k} {t:.2f}" for k, t in sorted(ts.items()))
            for h, ts in v.get("temperatures", {}).items()
        )
        md += [
            f"## Variant `{name}` (head inputs), folds {folds}",
            "",
            f"Temperatures (each fold's own): {temps}",
            "",
            heads_markdown(res),
        ]
        for h, r in res.items():
            curves = {"frames": r["frame"]["reliability"]}
            reliability_diagram(out / f"reliability_{name}_{h}.png", curves, f"{h} ({name}), out-of-fold")
            md.append(f"![reliability {h} {name}](reliability_{name}_{h}.png)\n")
    if len(results) > 1:  # the comparison a study needs: what do the images add to the covariates?
        md += [
            "## Variants side by side (same folds, same patients)",
            "",
            "| head | variant | frame AUROC | frame QWK | case AUROC | case QWK |",
            "|---|---|---|---|---|---|",
        ]
        for h in sorted({h for r in results.values() for h in r["heads"]}):
            for name, r in sorted(results.items()):
                x = r["heads"].get(h)
                if x:
                    c = x.get("case", {})
                    md.append(
                        f"| {h} | {name} | {fmt_ci(x['frame']['auroc'], x['frame']['ci95']['auroc'])} | "
                        f"{fmt_ci(x['frame']['qwk'], x['frame']['ci95']['qwk'])} | "
                        f"{fmt_ci(c.get('auroc'), c.get('ci95', {}).get('auroc'))} | "
                        f"{fmt_ci(c.get('qwk'), c.get('ci95', {}).get('qwk'))} |"
                    )
    with atomic_write(out / "cv_results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=float))
    with atomic_write(out / "cv_report.md") as tmp:
        tmp.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"written to {out / 'cv_report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
