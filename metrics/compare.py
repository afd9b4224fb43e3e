"""Compare two models on the same test images: paired difference of a per-image metric with a bootstrap interval.

    python -m metrics.compare outputs/evaluate/A outputs/evaluate/B [--metric dice] [--n-boot 2000]

A and B are finished evaluate.py output folders; every set both scored (in their metrics.json) is compared on the
images the two share by name (a set whose names differ is refused: the runs did not score the same images). The
interval resamples whole groups: CVC-ClinicDB frames by video sequence (``data/lists/cvc-clinicdb/sequences.csv``:
frames of one sequence are near-duplicates, so resampling frames would make the interval too narrow), every other
image on its own. "B - A" > 0 means B scores higher (better for Dice, worse for HD95 or MAE). Prints a Markdown
table; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from core.errors import UserError
from core.files import atomic_write
from metrics.grading import paired_bootstrap

SEQUENCES = Path(__file__).resolve().parents[1] / "data" / "lists" / "cvc-clinicdb" / "sequences.csv"


def read_per_image(path: Path, metric: str) -> dict[str, float]:
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    if rows and (metric not in rows[0] or "name" not in rows[0]):
        raise UserError(f"{path} has no '{metric}' column (columns: {', '.join(rows[0])}); pick one with --metric")
    try:
        return {r["name"]: float(r[metric]) for r in rows}
    except ValueError as e:
        raise UserError(f"{path}: a '{metric}' value is not a number ({e})") from None


def finished_sets(run: Path) -> set[str]:
    """The sets a finished evaluate.py run scored (its metrics.json, written last): a folder left by a failed run,
    or a set left over from an earlier run into the same folder, is not compared."""
    path = run / "metrics.json"
    if not path.is_file():
        raise UserError(f"{run} has no metrics.json: not a finished evaluate.py run (rerun evaluate.py into it)")
    try:
        return set(json.loads(path.read_text()).get("results", {}))
    except (json.JSONDecodeError, AttributeError) as e:
        raise UserError(f"{path} is not evaluate.py's metrics.json ({e})") from None


def groups_of(names: Sequence[str], sequences: Mapping[str, str]) -> list[str]:
    """Resampling unit of each image: ``clinicdb/<frame>`` -> its sequence; anything else -> the image itself."""
    out = []
    for n in names:
        source, _, frame = n.partition("/")
        seq = sequences.get(frame) if source == "clinicdb" else None
        out.append(f"clinicdb-seq{seq}" if seq else n)
    return out


def load_sequences(path: Path = SEQUENCES) -> dict[str, str]:
    if not path.is_file():
        return {}
    with path.open(newline="") as f:
        return {r["frame"]: r["sequence"] for r in csv.DictReader(f)}


def compare_set(
    a: Mapping[str, float], b: Mapping[str, float], groups: Sequence[str] | None = None, *, n_boot: int = 2000
) -> dict[str, float | int | list[float] | None]:
    """Paired comparison over the images of ``a`` (which ``b`` must score too). NaN values (a metric undefined for
    an image) are left out of both sides."""
    names = sorted(a)
    if set(names) != set(b):
        only = sorted(set(a) ^ set(b))
        raise UserError(f"the two runs scored different images ({len(only)} not in both, e.g. {only[0]})")
    x, y = np.array([a[n] for n in names]), np.array([b[n] for n in names])
    keep = ~(np.isnan(x) | np.isnan(y))
    x, y = x[keep], y[keep]
    g = [gr for gr, k in zip(groups or names, keep, strict=True) if k]
    d = y - x
    ci = paired_bootstrap(lambda pick: float(d[pick].mean()), g, n_boot=n_boot) if len(d) else None
    return {
        "n": int(len(d)),
        "n_groups": len(set(g)),
        "a": float(x.mean()) if len(x) else math.nan,
        "b": float(y.mean()) if len(y) else math.nan,
        "diff": float(d.mean()) if len(d) else math.nan,
        "ci95": ci,
        "b_higher": int((d > 0).sum()),
        "a_higher": int((d < 0).sum()),
    }


def comparison_markdown(results: Mapping[str, Mapping], metric: str, a: str, b: str) -> str:
    lines = [
        f"A = `{a}`, B = `{b}`; per-image {metric}, mean over images; interval: paired bootstrap over groups",
        "",
        "| set | images (groups) | A | B | B - A [95% CI] | images B higher / A higher |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in results.items():
        ci = r["ci95"]
        span = f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""
        lines.append(
            f"| {name} | {r['n']} ({r['n_groups']}) | {r['a']:.3f} | {r['b']:.3f} | {r['diff']:+.3f}{span} "
            f"| {r['b_higher']} / {r['a_higher']} |"
        )
    few = [name for name, r in results.items() if r["n_groups"] < 10]
    if few:
        lines += [
            "",
            f"{', '.join(few)}: fewer than 10 groups, so the interval is little more than the spread of the groups' "
            "own differences; read it as such, not as a confidence interval.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m metrics.compare", description=__doc__.split("\n")[0])
    ap.add_argument("a", type=Path, help="evaluate.py output folder of model A")
    ap.add_argument("b", type=Path, help="evaluate.py output folder of model B")
    ap.add_argument("--metric", default="dice", help="a per_image.csv column (default: dice, i.e. Dice at 0.5)")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = ap.parse_args(argv)
    try:
        return _compare_runs(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _compare_runs(args: argparse.Namespace) -> int:
    for d in (args.a, args.b):
        if not d.is_dir():
            raise UserError(f"{d} is not a folder: give two evaluate.py output folders")
    both = finished_sets(args.a) & finished_sets(args.b)
    sets = sorted(s for s in both if all((d / s / "per_image.csv").is_file() for d in (args.a, args.b)))
    if not sets:
        raise UserError(f"{args.a} and {args.b} share no set (<set>/per_image.csv in both): run evaluate.py on both")
    sequences = load_sequences()
    results = {}
    for s in sets:
        a = read_per_image(args.a / s / "per_image.csv", args.metric)
        b = read_per_image(args.b / s / "per_image.csv", args.metric)
        groups = groups_of(sorted(a), sequences)
        alone = sum(n.startswith("clinicdb/") and not g.startswith("clinicdb-seq") for n, g in zip(sorted(a), groups))
        if alone:
            print(
                f"warning: {s}: {alone} CVC-ClinicDB frames have no sequence in {SEQUENCES}; they are resampled one "
                "by one, which makes the interval too narrow",
                file=sys.stderr,
            )
        try:
            results[s] = compare_set(a, b, groups, n_boot=args.n_boot)
        except UserError as e:
            raise UserError(f"{s}: {e}") from None
    text = comparison_markdown(results, args.metric, str(args.a), str(args.b))
    print(text, end="")
    if args.out:
        with atomic_write(args.out) as tmp:
            tmp.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
