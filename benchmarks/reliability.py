"""Does the reliability score flag the frames the model gets wrong? Measured on frames from a centre the model never
trained on (the cross-centre protocol, README "Cross-centre accuracy").

    python benchmarks/reliability.py --checkpoint outputs/xc/baseline/kvasir/checkpoints/best \\
        --data xc_kvasir --set clinicdb_all --out outputs/xc/reliability_kvasir

For every test frame: Dice@0.5 at the frame's resolution of the model's map as profile=accurate computes it with the
score (flip TTA: the frame's and its mirror's logits averaged; ``--judge plain``: the single view, profile=fast's;
both before review's speck removal and field-of-view mask), and each candidate
score (higher = more reliable): ``flip`` (agreement with the mirrored view), ``scale`` (with the view at 1.25x the
input size), ``flip_scale`` (mean pairwise agreement of the three views), ``soft``
(models.reliability.soft_confidence, no extra pass) and ``max_prob`` (the lesion probability itself, the naive
baseline); with ``--ensemble CKPT ...`` every view averages the models, as ``ensemble=`` does, and ``members`` scores
the checkpoint's mask against its members' (ensemble disagreement). Reports each score's AUROC for "Dice < 0.5" (a
failure) with a 95% interval resampling whole groups (CVC-ClinicDB sequences), and the worst frames by the chosen
score. Writes per_frame.csv, reliability.json, reliability.md and worst.png under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.files import atomic_write, write_csv_atomic, write_json_atomic  # noqa: E402
from data.datasets import load_raw, records_from_sources  # noqa: E402
from data.transforms import normalise_batch  # noqa: E402
from metrics.grading import binary_auroc, case_resamples, interval  # noqa: E402
from metrics.stats import markdown_table  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.reliability import LOW_RELIABILITY, mask_agreement, soft_confidence, view_agreement  # noqa: E402

SCORES = ("flip", "scale", "flip_scale", "soft", "max_prob")
FAIL_DICE = 0.5


def test_sources(data: str, test_set: str) -> list[dict]:
    """The test set's sources from configs/data/<data>.yaml, with ${paths.shared_data} resolved."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(ROOT / "configs"), version_base=None):
        cfg = compose("evaluate", overrides=[f"data={data}"])
    from omegaconf import OmegaConf

    sets = OmegaConf.to_container(cfg.data.test_sets, resolve=True)
    if test_set not in sets:
        raise SystemExit(f"--set {test_set}: configs/data/{data}.yaml has test sets {', '.join(sets)}")
    return sets[test_set]


@torch.no_grad()
def views(pred: Predictor, image: np.ndarray, scale: float = 1.25) -> dict[str, np.ndarray]:
    """The model's probability maps of one frame on its S x S grid: as is, mirrored back, at ``scale`` x S, and
    ``tta``: the sigmoid of the first two's mean logits (models/predictor.py's flip TTA). With ensemble members
    (``pred.members``) each view averages every model's logits, as the predictor does, and ``own`` / ``others`` are
    the checkpoint's and the members' (mean) maps of the frame as is."""
    s = pred.size
    out, logits_of = {}, {}
    for name, size, flip in (("base", s, False), ("flip", s, True), ("scale", int(round(s * scale / 32)) * 32, False)):
        small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
        x = normalise_batch([small], mean=pred.mean, std=pred.std)
        if flip:
            x = torch.flip(x, dims=[3])
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=pred.precision == "bf16"):
            own = pred.model(x, None)["mask"].float()
            others = [m.mask_logits(x).float() for m in pred.members]
        logits = torch.stack([own, *others]).mean(0)
        if name == "base" and others:
            out["own"] = torch.sigmoid(own)[0, 0].numpy()
            out["others"] = torch.sigmoid(torch.stack(others).mean(0))[0, 0].numpy()
        if flip:
            logits = torch.flip(logits, dims=[3])
        if size != s:
            logits = F.interpolate(logits, size=(s, s), mode="bilinear", align_corners=False)
        out[name] = torch.sigmoid(logits)[0, 0].numpy()
        logits_of[name] = logits
    out["tta"] = torch.sigmoid((logits_of["base"] + logits_of["flip"]) / 2)[0, 0].numpy()
    return out


def frame_scores(v: dict[str, np.ndarray]) -> dict[str, float]:
    scores = {
        "flip": mask_agreement(v["base"], v["flip"]),
        "scale": mask_agreement(v["base"], v["scale"]),
        "flip_scale": view_agreement([v["base"], v["flip"], v["scale"]]),
        "soft": soft_confidence(v["base"]),
        "max_prob": float(v["base"].max()),
    }
    if "own" in v:  # ensemble disagreement: the checkpoint's mask against its members'
        scores["members"] = mask_agreement(v["own"], v["others"])
    return scores


def auroc_table(rows: list[dict], n_boot: int) -> list[dict]:
    fail = np.array([r["dice"] < FAIL_DICE for r in rows])
    groups = [r["group"] for r in rows]
    table = []
    for s in [k for k in (*SCORES, "members") if k in rows[0]]:
        risk = -np.array([r[s] for r in rows])  # low reliability = high risk of failure
        point = binary_auroc(risk, fail)
        boots = [binary_auroc(risk[i], fail[i]) for i in case_resamples(groups, n_boot)]
        ci = interval([b for b in boots if b is not None], n_boot)
        table.append({"score": s, "auroc": point, "ci_low": ci[0] if ci else None, "ci_high": ci[1] if ci else None})
    return table


def at_threshold(rows: list[dict], score: str, threshold: float) -> dict:
    """What marking frames below ``threshold`` does: frames marked, failures (Dice < FAIL_DICE) among them, and the
    share of all failures they catch."""
    fail = np.array([r["dice"] < FAIL_DICE for r in rows])
    marked = np.array([r[score] < threshold for r in rows])
    return {
        "score": score,
        "threshold": threshold,
        "marked": int(marked.sum()),
        "marked_fraction": round(float(marked.mean()), 4),
        "failures_marked": int((marked & fail).sum()),
        "failures": int(fail.sum()),
        "failures_caught": round(float((marked & fail).sum() / max(1, fail.sum())), 4),
        "failure_rate_marked": round(float(fail[marked].mean()), 4) if marked.any() else None,
        "failure_rate_unmarked": round(float(fail[~marked].mean()), 4) if (~marked).any() else None,
    }


def worst_figure(path: Path, rows: list[dict], records: dict, score: str, n: int = 10) -> None:
    """The n frames the score trusts least: image, truth outline (green), prediction outline (red), score, Dice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picked = sorted(rows, key=lambda r: r[score])[:n]
    fig, axes = plt.subplots(2, (n + 1) // 2, figsize=(3 * ((n + 1) // 2), 6.4))
    for ax, r in zip(axes.flat, picked):
        raw = load_raw(records[r["id"]])
        img = raw["image"].copy()
        for m, colour in ((raw["mask"], (0, 255, 0)), (r["_pred"], (255, 0, 0))):
            cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(img, cs, -1, colour, max(2, img.shape[1] // 200))
        ax.imshow(img)
        ax.set_title(f"{r['id']}\n{score} {r[score]:.2f}  Dice {r['dice']:.2f}", fontsize=8)
        ax.axis("off")
    for ax in list(axes.flat)[len(picked) :]:
        ax.axis("off")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", required=True, help="a configs/data name, e.g. xc_kvasir")
    ap.add_argument("--set", required=True, help="one of that config's test_sets")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument(
        "--choose", default="flip", choices=(*SCORES, "members"), help="the score whose worst frames are shown"
    )
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument(
        "--judge",
        default="tta",
        choices=("tta", "plain"),
        help="the mask a frame's Dice is measured on: tta (the mean of the two views, what profile=accurate writes "
        "with the score) or plain (the single view, what profile=fast writes)",
    )
    ap.add_argument(
        "--ensemble", nargs="+", default=None, help="checkpoints averaged with --checkpoint (scores 'members' too)"
    )
    ap.add_argument("--limit", type=int, default=None, help="first N frames only (a quick look)")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pred = Predictor.from_checkpoint(args.checkpoint, device="cpu", precision="bf16", ensemble=args.ensemble)
    records = records_from_sources(test_sources(args.data, args.set))[: args.limit]
    rows = []
    for i, rec in enumerate(records):
        raw = load_raw(rec)
        v = views(pred, raw["image"])
        h, w = raw["mask"].shape
        judged = v["base"] if args.judge == "plain" else v["tta"]
        full = cv2.resize(judged, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
        truth = raw["mask"].astype(bool)
        dice = 2 * (full & truth).sum() / max(1, full.sum() + truth.sum())
        rows.append({"id": rec.id, "group": rec.group, "dice": float(dice), **frame_scores(v), "_pred": full})
        if (i + 1) % 100 == 0:
            print(f"{i + 1}/{len(records)} frames", flush=True)
    table = auroc_table(rows, args.n_boot)
    args.out.mkdir(parents=True, exist_ok=True)
    write_csv_atomic(args.out / "per_frame.csv", [{k: v for k, v in r.items() if k != "_pred"} for r in rows])
    n_fail = sum(r["dice"] < FAIL_DICE for r in rows)
    summary = {
        "checkpoint": str(args.checkpoint),
        "ensemble": args.ensemble,
        "data": args.data,
        "set": args.set,
        "judged_on": args.judge,
        "frames": len(rows),
        "failures": n_fail,
        "mean_dice": float(np.mean([r["dice"] for r in rows])),
        "auroc": table,
        # the shipped rule (models.reliability: the flip view, marked below LOW_RELIABILITY) and nearby thresholds
        "marking": [at_threshold(rows, "flip", t) for t in (0.5, 0.6, LOW_RELIABILITY, 0.8, 0.9)],
    }
    write_json_atomic(args.out / "reliability.json", summary)
    md = (
        f"{args.set} ({len(rows)} frames, {n_fail} with Dice < {FAIL_DICE} on the {args.judge} mask), "
        f"checkpoint {args.checkpoint}\n\n"
        + markdown_table(table)
        + f"\n\nMarking frames whose flip agreement is below a threshold (shipped: {LOW_RELIABILITY}):\n\n"
        + markdown_table(summary["marking"])
    )
    with atomic_write(args.out / "reliability.md") as tmp:
        tmp.write_text(md + "\n")
    worst_figure(args.out / "worst.png", rows, {r.id: r for r in records}, args.choose)
    print(md)
    print(json.dumps({"out": str(args.out)}))


if __name__ == "__main__":
    main()
