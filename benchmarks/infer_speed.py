"""Inference speed on this machine: model-only images/s, and end-to-end video frames/s with the model's share.

python benchmarks/infer_speed.py [--checkpoint CKPT] [--compare OTHER ...] [--loops 2] [--repeats 3] [--device cuda]
python benchmarks/infer_speed.py --profiles [--loops 2] [--repeats 3]   # profile=fast vs profile=accurate
1. model only, at the checkpoint's input size: batch 1 and 8, fp32 vs bf16 (+ channels_last); ratios against fp32
   batch 1.
2. end to end (decode + model + smoothing + masks/probs PNGs + JSONL + overlay + H.264 encode, report off; the
   README's default outputs) on the bundled 384x288 clip and on a 1920x1080 clip made by upscaling it, for the
   serial mode (review.streaming=false: the same stages in one thread) and the streaming path (the default,
   stages overlapping in threads), bf16 and fp32; ratio streaming / serial in this run (medians of --repeats
   alternating runs: shared machines are noisy), and the streaming masks' Dice against the serial ones (1.0: the
   same stages write the same files). The model's share is the time inside predict().
3. the targets (1920x1080 >= 20 and 384x288 >= 40 frames/s, streaming bf16 on the CPU, profile=fast), met or not,
   and with --compare the streaming ratio of --checkpoint to each other checkpoint in the same run.
With --profiles instead: the end-to-end streaming frames/s of each configs/profile/ (its checkpoint, input size, TTA
and reliability, at infer.py's default precision), the profiles alternating within each repeat; the ratio accurate /
fast; the targets checked for profile=fast.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from data.video import VideoWriter, read_frames  # noqa: E402
from models.predictor import Predictor  # noqa: E402
from models.predictor_settings import PROFILE_KEYS, as_paths, profile_file  # noqa: E402
from models.runtime import autocast  # noqa: E402
from review.options import ReviewOptions  # noqa: E402
from review.pipeline import process_input  # noqa: E402


def model_only(pred: Predictor, batch: int, precision: str, reps: int = 5) -> float:
    x = torch.randn(batch, 3, pred.size, pred.size).contiguous(memory_format=torch.channels_last).to(pred.device)
    model = pred.model
    sync = torch.cuda.synchronize if pred.device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for i in range(reps + 1):
            if i == 1:
                sync()
                t0 = time.perf_counter()
            with autocast(pred.device, precision):
                model(x)
        sync()
    return batch * reps / (time.perf_counter() - t0)


def end_to_end(pred: Predictor, video: Path, out: Path, streaming: bool) -> tuple[float, float, int]:
    spent = [0.0]
    original = pred.predict

    def timed(images, *args, **kwargs):
        t = time.perf_counter()
        r = original(images, *args, **kwargs)
        spent[0] += time.perf_counter() - t
        return r

    pred.predict = timed
    t0 = time.perf_counter()
    summary = process_input(video, predictor=pred, out_dir=out, opts=ReviewOptions(report=False, streaming=streaming))
    total = time.perf_counter() - t0
    pred.predict = original
    return summary["frames"] / total, spent[0] / total, summary["frames"]


def mask_agreement(a: Path, b: Path) -> float:
    """Lowest per-frame Dice between two runs' masks/ (1.0 where both are empty)."""
    worst = 1.0
    for pa in sorted((a / "masks").iterdir()):
        x = cv2.imread(str(pa), cv2.IMREAD_GRAYSCALE) > 0
        y = cv2.imread(str(b / "masks" / pa.name), cv2.IMREAD_GRAYSCALE) > 0
        s = x.sum() + y.sum()
        worst = min(worst, 1.0 if s == 0 else 2 * (x & y).sum() / s)
    return float(worst)


TARGETS = {"1920x1080": 20.0, "384x288": 40.0}  # frames/s end to end, streaming, bf16, CPU (README "Profiles")


def bench(
    checkpoint: str, device: str, clips: dict[str, Path], tmp: Path, repeats: int, tag: str
) -> dict[str, list[float]]:
    """Every figure for one checkpoint; returns the streaming bf16/fp16 runs' frames/s per clip."""
    pred = Predictor.from_checkpoint(checkpoint, device=device)
    print(f"--- {checkpoint} ({pred.size}x{pred.size} input)")
    half = "fp16" if pred.device.type == "cuda" else "bf16"
    base = None
    for batch in (1, 8):
        for precision in ("fp32", half):
            ips = model_only(pred, batch, precision)
            base = base or ips
            print(f"model only  {pred.size}px batch {batch} {precision}: {ips:6.1f} images/s  (x{ips / base:.2f})")
    fast = {}
    for precision in (half, "fp32"):
        pred.precision = precision
        for name, path in clips.items():
            res: dict[bool, list[float]] = {False: [], True: []}
            shares: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(repeats):  # alternating, so a slow spell of a shared machine hits both paths
                for streaming in (False, True):
                    out = tmp / f"out{tag}_{name}_{precision}_{streaming}_{rep}"
                    fps, share, n = end_to_end(pred, path, out, streaming)
                    res[streaming].append(fps)
                    shares[streaming].append(share)
            for streaming in (False, True):
                runs = res[streaming]
                med = statistics.median(runs)
                label = "streaming" if streaming else "serial   "
                print(
                    f"end to end  {name:9s} {precision} {label}: {med:6.1f} frames/s (median of {len(runs)} runs, "
                    f"{min(runs):.1f}-{max(runs):.1f}) over {n} frames ({1000 / med:.1f} ms a frame), "
                    f"model {100 * statistics.median(shares[streaming]):.0f}%"
                    + (f"  (x{med / statistics.median(res[False]):.2f} vs serial)" if streaming else "")
                )
            serial, stream = (tmp / f"out{tag}_{name}_{precision}_{s}_0" for s in (False, True))
            print(
                f"            {name:9s} {precision} masks, streaming vs serial: min Dice "
                f"{mask_agreement(serial, stream):.4f}"
            )
            if precision == half:
                fast[name] = res[True]
    return fast


def profile_predictor(name: str, device: str) -> Predictor:
    """The predictor configs/profile/<name>.yaml describes (its checkpoints relative to the repository)."""
    p = profile_file(name)
    how = {k: p[k] for k in PROFILE_KEYS if k not in ("checkpoint", "ensemble")}
    ensemble = [str(ROOT / e) for e in as_paths(p["ensemble"])]
    pred = Predictor.from_checkpoint(ROOT / p["checkpoint"], device=device, ensemble=ensemble, **how)
    pred.profile = name
    return pred


def bench_profiles(device: str, clips: dict[str, Path], tmp: Path, repeats: int) -> dict[str, dict[str, list[float]]]:
    """profile -> clip -> frames/s of each streaming run (the profiles alternate within a repeat)."""
    preds = {name: profile_predictor(name, device) for name in ("fast", "accurate")}
    res: dict[str, dict[str, list[float]]] = {n: {c: [] for c in clips} for n in preds}
    for rep in range(repeats):
        for clip, path in clips.items():
            for name, pred in preds.items():
                fps, _, _ = end_to_end(pred, path, tmp / f"profile_{name}_{clip}_{rep}", streaming=True)
                res[name][clip].append(fps)
    for clip in clips:
        med = {n: statistics.median(res[n][clip]) for n in preds}
        for n, pred in preds.items():
            r = res[n][clip]
            print(
                f"profile={n:8s} {clip:9s} ({pred.size} px, tta {pred.tta}, reliability {pred.reliability}): "
                f"{med[n]:6.1f} frames/s end to end (median of {len(r)}, {min(r):.1f}-{max(r):.1f})"
            )
        print(f"                  {clip:9s} accurate / fast: x{med['accurate'] / med['fast']:.2f}")
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default=str(ROOT / "checkpoints" / "endolift_polyp_unet_mnv2"))
    ap.add_argument("--compare", nargs="*", default=[], help="other checkpoints measured in the same run")
    ap.add_argument("--clip", default=str(ROOT / "samples" / "clinicdb_seq6.mp4"))
    ap.add_argument("--loops", type=int, default=2, help="repeat the clip this many times for the timing")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (fp16 replaces bf16 there)")
    ap.add_argument("--repeats", type=int, default=3, help="end-to-end runs per setting (the median is reported)")
    ap.add_argument("--profiles", action="store_true", help="profile=fast vs profile=accurate, end to end")
    a = ap.parse_args()
    if a.profiles and (a.compare or a.checkpoint != ap.get_default("checkpoint")):
        raise SystemExit("--profiles measures the checkpoints configs/profile/ names: no --checkpoint or --compare")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        frames = [f.image for f in read_frames(a.clip)] * a.loops
        clips = {}
        for name, size in (("384x288", None), ("1920x1080", (1920, 1080))):
            path = tmp / f"clip_{name}.mp4"
            h, w = frames[0].shape[:2]
            ww, hh = size or (w, h)
            with VideoWriter(path, fps=25, width=ww, height=hh, crf=18) as vw:
                for f in frames:
                    vw.write(f if size is None else cv2.resize(f, size, interpolation=cv2.INTER_CUBIC))
            clips[name] = path
        if a.profiles:
            results = {a.checkpoint: bench_profiles(a.device, clips, tmp, a.repeats)["fast"]}
        else:
            results = {
                ck: bench(ck, a.device, clips, tmp, a.repeats, str(i))
                for i, ck in enumerate([a.checkpoint, *a.compare])
            }
    first = {name: statistics.median(runs) for name, runs in results[a.checkpoint].items()}
    for ck in a.compare:
        other = {name: statistics.median(runs) for name, runs in results[ck].items()}
        ratios = ", ".join(f"{name} x{first[name] / fps:.2f}" for name, fps in other.items())
        print(f"{a.checkpoint} vs {ck}, streaming end to end (medians): {ratios}")
    if a.device == "cpu":
        for name, target in TARGETS.items():
            runs = results[a.checkpoint][name]
            met = sum(r >= target for r in runs)
            print(
                f"target {name} >= {target:.0f} frames/s end to end (streaming, bf16"
                + (", profile=fast" if a.profiles else "")
                + f"): median {first[name]:.1f}, "
                f"{'met' if first[name] >= target else 'NOT met'} ({met} of {len(runs)} runs at or above)"
            )


if __name__ == "__main__":
    main()
