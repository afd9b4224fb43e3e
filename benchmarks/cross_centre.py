"""Cross-centre accuracy: train on one hospital's images, test on another's (README "Cross-centre accuracy").

    python benchmarks/cross_centre.py --recipe baseline                      # the shipped recipe, both directions
    python benchmarks/cross_centre.py --recipe domain --overrides augment=domain   # a candidate, compared to it
    python benchmarks/cross_centre.py --recipe baseline --tag tta --eval-overrides tta=true   # inference settings
    python benchmarks/cross_centre.py --recipe baseline --tag ens --eval-overrides \
        'ensemble=[outputs/xc/domain/{direction}/checkpoints/best]'     # {direction}: kvasir, then clinicdb
    python benchmarks/cross_centre.py --collect        # every recipe's summary, one row each (README's table)

Direction ``kvasir``: train on all 1000 Kvasir-SEG images (configs/data/xc_kvasir.yaml), test on all 612 CVC-ClinicDB
frames (intervals resample whole video sequences). Direction ``clinicdb``: train on CVC-ClinicDB, test on all 1000
Kvasir-SEG images. Each run trains with ``python train.py experiment=polyp_pranet data=xc_<direction> <overrides>``
into outputs/xc/<recipe>/<direction> (resumed from its last epoch when interrupted; skipped when finished), scores it
with evaluate.py into outputs/xc/<recipe>/eval_<direction>, and reports Dice@0.5, toolbox Dice, lesion recall (all
and small lesions, metrics/lesions.py), Dice on small-lesion frames and, for Kvasir-SEG, on the Kvasir-Sessile
subset, with 95% intervals; a recipe other than the baseline is compared with it image by image
(``python -m metrics.compare``, paired, resampling sequences). Writes outputs/xc/<recipe>/summary.{json,md}.
Models are chosen on these numbers, never on the standard test lists. ``--tag T --eval-overrides ...`` scores a
recipe's trained models again with other inference settings (evaluate.py overrides: tta, tta_views, input_size,
ensemble), into outputs/xc/<recipe>/eval_<direction>@T and summary@T.{json,md}, compared with the recipe's plain
scoring. The plain scoring runs profile=fast (the checkpoint's training size, no TTA, one pass a frame).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.files import atomic_write, write_json_atomic  # noqa: E402
from metrics.compare import compare_set, groups_of, load_sequences, read_per_image  # noqa: E402
from metrics.grading import paired_bootstrap  # noqa: E402
from metrics.lesions import SMALL_FRACTION  # noqa: E402
from metrics.stats import markdown_table  # noqa: E402

DIRECTIONS = {"kvasir": "clinicdb_all", "clinicdb": "kvasir_all"}  # trained on -> test set
SESSILE = "kvasir-seg/splits/kvasir_sessile_subset.txt"


def run(cmd: list[str], log: Path) -> None:
    print("$", shlex.join(cmd), flush=True)
    with log.open("a") as f:
        done = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise SystemExit(f"failed ({done.returncode}): {shlex.join(cmd)}; see {log}")


def train(recipe: str, direction: str, overrides: list[str], out: Path) -> None:
    run_dir = out / direction
    if (run_dir / "checkpoints" / "best.safetensors").is_file() and (run_dir / "checkpoints" / "best.json").is_file():
        card = json.loads((run_dir / "checkpoints" / "best.json").read_text())
        if card.get("epoch") == card["training"]["config"]["trainer"]["max_epochs"] or (run_dir / "done").exists():
            return
    cmd = [sys.executable, "train.py", "experiment=polyp_pranet", f"data=xc_{direction}", *overrides]
    cmd += ["trainer.progress=false", f"hydra.run.dir={run_dir}"]
    last = run_dir / "checkpoints" / "last.safetensors"
    if last.is_file():
        cmd.append(f"trainer.resume={last}")
    run(cmd, out / f"train_{direction}.log")
    (run_dir / "done").touch()


def evaluate(direction: str, out: Path, tag: str = "", overrides: list[str] = ()) -> Path:
    """The direction's test set scored by evaluate.py (profile=fast, then ``overrides``) into eval_<direction>[@tag]."""
    eval_dir = out / (f"eval_{direction}@{tag}" if tag else f"eval_{direction}")
    if not (eval_dir / "metrics.json").is_file():
        ckpt = out / direction / "checkpoints" / "best"
        cmd = [sys.executable, "evaluate.py", "profile=fast", f"checkpoint={ckpt}", f"data=xc_{direction}"]
        cmd += [o.replace("{direction}", direction) for o in overrides] + [f"out_dir={eval_dir}"]
        run(cmd, out / f"evaluate_{direction}{'@' + tag if tag else ''}.log")
    return eval_dir


def training_hours(run_dir: Path) -> float | None:
    """Hours of training steps: each epoch's training images over its logged throughput (metrics.csv), summed. A run
    resumed after an interruption or slowed by other jobs is counted by its own pace; validation and start-up (about
    10% more) are not counted."""
    import csv

    metrics, splits = run_dir / "metrics.csv", run_dir / "splits.json"
    if not (metrics.is_file() and splits.is_file()):
        return None
    n = json.loads(splits.read_text())["parts"]["train"]["frames"]
    with metrics.open(newline="") as f:
        rates = [float(r["train/images_per_s"]) for r in csv.DictReader(f) if r.get("train/images_per_s")]
    return round(sum(n / r for r in rates) / 3600, 2) if rates else None


def with_interval(value, names: list[str], groups: list[str], metric, n_boot: int) -> dict:
    """A point value and its 95% interval over resamples of whole groups (``metric`` of an index set)."""
    return {"value": value, "ci": paired_bootstrap(metric, groups, n_boot=n_boot)}


def direction_summary(eval_dir: Path, test_set: str, data_root: Path, n_boot: int) -> dict:
    import csv

    with (eval_dir / test_set / "per_image.csv").open(newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda r: r["name"])
    names = [r["name"] for r in rows]
    groups = groups_of(names, load_sequences())
    dice = np.array([float(r["dice"]) for r in rows])
    small_total = np.array([int(r["small_lesions"]) for r in rows])
    small_found = np.array([int(r["small_found"]) for r in rows])
    small_frame = np.array([float(r["gt_fraction"]) < SMALL_FRACTION for r in rows])
    metrics = json.loads((eval_dir / "metrics.json").read_text())["results"][test_set]["segmentation"]

    def recall(idx):
        t = small_total[idx].sum()
        return float(small_found[idx].sum() / t) if t else None

    def mean_where(mask):
        return lambda idx: float(dice[idx][mask[idx]].mean()) if mask[idx].any() else None

    every = np.arange(len(rows))
    out = {
        "images": len(rows),
        "dice@0.5": with_interval(float(dice.mean()), names, groups, lambda i: float(dice[i].mean()), n_boot),
        "toolbox_dice": metrics.get("mean_dice"),
        "small_lesions": int(small_total.sum()),
        "small_recall": with_interval(recall(every), names, groups, recall, n_boot),
        "small_frames": int(small_frame.sum()),
        "small_frame_dice": with_interval(
            mean_where(small_frame)(every), names, groups, mean_where(small_frame), n_boot
        ),
    }
    if test_set == "kvasir_all":
        sessile_names = {f"kvasir/{Path(n).stem}" for n in (data_root / SESSILE).read_text().split()}
        sessile = np.array([n in sessile_names for n in names])
        out["sessile_images"] = int(sessile.sum())
        out["sessile_dice"] = with_interval(mean_where(sessile)(every), names, groups, mean_where(sessile), n_boot)
    return out


def fmt(v: dict | float | None) -> str:
    if isinstance(v, dict):
        ci = v["ci"]
        return f"{v['value']:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else f"{v['value']:.3f}"
    return "" if v is None else f"{v:.3f}"


def short(v: dict | None) -> str:
    """A value with its interval, compactly: 0.812 [0.78, 0.84]."""
    if not v or v.get("value") is None:
        return ""
    ci = v.get("ci")
    return f"{v['value']:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{v['value']:.3f}"


def earlier_directions(path: Path, summary: dict) -> dict:
    """The directions an earlier call of the same recipe and settings summarised into ``path`` (one direction at a
    time, e.g. ``--directions clinicdb`` then ``--directions kvasir``), so that each call adds to the summary; {}
    when there is none or its settings differ."""
    if not path.is_file():
        return {}
    earlier = json.loads(path.read_text())
    same = all(earlier.get(k) == summary.get(k) for k in ("recipe", "overrides", "tag", "eval_overrides"))
    return dict(earlier.get("directions") or {}) if same else {}


def collect(root: Path) -> str:
    """One row per summary under outputs/xc/ (a recipe, or a rescoring of one): both directions' Dice@0.5, the
    paired difference with its reference (a recipe: the baseline recipe; a rescoring: the same models scored
    plainly), small-lesion recall and training hours."""
    rows = []
    for path in sorted(root.glob("*/summary*.json")):
        s = json.loads(path.read_text())
        row = {"recipe": s["recipe"] + (f" @{s['tag']}" if s.get("tag") else "")}
        command = ["--recipe", s["recipe"]]
        command += ["--overrides", *s["overrides"]] if s.get("overrides") else []
        command += ["--tag", s["tag"], "--eval-overrides", *s["eval_overrides"]] if s.get("tag") else []
        command += ["--directions", *s["directions"]] if set(s["directions"]) != set(DIRECTIONS) else []
        row["command (benchmarks/cross_centre.py ...)"] = f"`{shlex.join(command)}`"
        for d, test in DIRECTIONS.items():
            r = s["directions"].get(d) or {}
            vs = r.get("vs_baseline") or {}
            label = f"{d}->{test.split('_')[0]}"
            row[f"{label} Dice@0.5"] = short(r.get("dice@0.5"))
            row[f"{label} vs reference"] = (
                f"{vs['diff']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]" if vs.get("ci95") else ""
            )
            row[f"{label} small recall"] = short(r.get("small_recall"))
        hours = [(s["directions"].get(d) or {}).get("train_hours") for d in DIRECTIONS]
        shown = " + ".join("?" if h is None else f"{h:.2f}" for h in hours)
        row["train h (kvasir + clinicdb)"] = "" if s.get("tag") or all(h is None for h in hours) else shown
        rows.append(row)
    return markdown_table(rows) if rows else "no summaries under " + str(root)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--collect", action="store_true", help="print every recipe's summary as one table, and stop")
    ap.add_argument("--recipe", help="a name for this recipe: outputs/xc/<recipe>/")
    ap.add_argument("--overrides", nargs="*", default=[], help="train.py overrides on top of experiment=polyp_pranet")
    ap.add_argument("--baseline", default="baseline", help="the recipe to compare with (outputs/xc/<baseline>/)")
    ap.add_argument("--directions", nargs="+", default=list(DIRECTIONS), choices=list(DIRECTIONS))
    ap.add_argument("--data-root", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--tag", default="", help="name of a rescoring with --eval-overrides (eval_<direction>@TAG)")
    ap.add_argument("--eval-overrides", nargs="*", default=[], help="evaluate.py overrides, e.g. tta=true")
    args = ap.parse_args()
    if args.collect:
        print(collect(ROOT / "outputs" / "xc"))
        return
    if not args.recipe:
        raise SystemExit("--recipe NAME is needed (or --collect)")
    if bool(args.tag) != bool(args.eval_overrides):
        raise SystemExit("--tag and --eval-overrides go together: a rescoring needs a name and its settings")
    out = ROOT / "outputs" / "xc" / args.recipe
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"recipe": args.recipe, "overrides": args.overrides}
    if args.tag:
        summary.update(tag=args.tag, eval_overrides=args.eval_overrides)
    name = f"summary@{args.tag}" if args.tag else "summary"
    summary["directions"] = earlier_directions(out / f"{name}.json", summary)  # a one-direction call adds to them
    for d in args.directions:
        t0 = time.time()
        train(args.recipe, d, args.overrides, out)
        eval_dir = evaluate(d, out, args.tag, args.eval_overrides)
        test_set = DIRECTIONS[d]
        s = direction_summary(eval_dir, test_set, args.data_root, args.n_boot)
        s["train_hours"] = None if args.tag else training_hours(out / d)  # a rescoring trains nothing
        s["this_call_s"] = round(time.time() - t0)
        # a rescoring is compared with the same models scored plainly; a recipe with the baseline recipe
        base_eval = out / f"eval_{d}" if args.tag else ROOT / "outputs" / "xc" / args.baseline / f"eval_{d}"
        if (args.tag or args.recipe != args.baseline) and (base_eval / test_set / "per_image.csv").is_file():
            a = read_per_image(base_eval / test_set / "per_image.csv", "dice")
            b = read_per_image(eval_dir / test_set / "per_image.csv", "dice")
            s["vs_baseline"] = compare_set(a, b, groups_of(sorted(a), load_sequences()), n_boot=args.n_boot)
        summary["directions"][d] = s
    write_json_atomic(out / f"{name}.json", summary)
    table = []
    for d in args.directions:  # this call's directions; the summary may hold earlier ones too
        s = summary["directions"][d]
        vs = s.get("vs_baseline") or {}
        table.append(
            {
                "recipe": args.recipe + (f" @{args.tag} ({' '.join(args.eval_overrides)})" if args.tag else ""),
                "trained on -> tested on": f"{d} -> {DIRECTIONS[d]}",
                "Dice@0.5 [95% CI]": fmt(s["dice@0.5"]),
                "toolbox Dice": fmt(s["toolbox_dice"]),
                "small-lesion recall": fmt(s["small_recall"]) + f" (n={s['small_lesions']})",
                "small-frame Dice": fmt(s["small_frame_dice"]) + f" (n={s['small_frames']})",
                "sessile Dice": fmt(s.get("sessile_dice")),
                "vs reference [95% CI]": (
                    f"{vs['diff']:+.3f} [{vs['ci95'][0]:+.3f}, {vs['ci95'][1]:+.3f}]" if vs.get("ci95") else ""
                ),
                "train h": s["train_hours"],
            }
        )
    md = markdown_table(table)
    with atomic_write(out / f"{name}.md") as tmp:
        tmp.write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
