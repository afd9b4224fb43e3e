"""Proof that review.deidentify removes burned-in patient data, on real endoscopy frames.
(Over 350 lines on purpose: one self-contained proof, from planting the text to the figures, read top to bottom.)

Synthetic PHI (names, IDs, birth and exam dates, a running clock, device and centre; several fonts, 10-40 px,
white / yellow / green; in the surround and over the tissue; static through the clip) is burned into
  1. the bundled CVC-ClinicDB clip (samples/clinicdb_seq6.mp4, 384x288), and
  2. a 1920x1080 clip made of Kvasir-SEG frames (../shared/data/kvasir-seg), each shown for a second while the view
     drifts and zooms (the tissue moves), inside a vignetted round field on a grey 17-21 surround, with a
     picture-in-picture box,
then infer.py's pipeline runs on each clip without and with de-identification. Printed:
  - OCR character recall of the PHI strings (Tesseract, independent of the detector used to redact), on the input
    frames (before), on every kind of picture the run wrote (after): original video, overlay video, key frames, and
    on the frames before any PHI was burned in (without_phi: what OCR matches by chance, the floor of "after");
  - text-box recall (burned strings whose glyph pixels were all filled, per frame) and the tissue area lost:
    tissue in the field of view filled where no PHI was, measured on the de-identifier's own output before video
    compression. For Kvasir-SEG the source image's own black frame and boxes (filling them loses nothing) and its
    left quarter, where the processor burned its own dates and clocks (text, but at places not known), are not
    counted as tissue (source_tissue); field_filled is the older figure over the whole field, all of those in;
  - Dice of the lesion masks with against without de-identification, outside the PHI boxes;
  - the time of both runs (speed cost): --repeats alternated pairs, the median of the pairs' ratios, and the
    process CPU time of each run (less sensitive to other jobs on a shared machine).

python benchmarks/deid_proof.py [--seconds 8] [--ocr-every 20] [--repeats 3]     (needs Debian's tesseract-ocr)
"""

from __future__ import annotations

import argparse
import difflib
import glob
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data.deid import Redactor  # noqa: E402
from data.text_detection import TextDetector  # noqa: E402
from data.video import VideoWriter, read_frames  # noqa: E402

KVASIR = ROOT.parent / "shared" / "data" / "kvasir-seg" / "images"
COLOURS = [(255, 255, 255), (255, 255, 0), (0, 255, 0)]
FONT_FILES = sorted(glob.glob("/usr/share/fonts/truetype/*/*.ttf"))


def phi_strings(rng: np.random.Generator) -> list[str]:
    first = rng.choice(["JOHN", "MARIA", "AHMED", "KERSTIN", "LUCA", "YUKI"])
    last = rng.choice(["DOE", "MUELLER", "OKAFOR", "ROSSI", "NGUYEN", "LARSEN"])
    return [
        f"{last}^{first}",
        f"ID {rng.integers(10**7, 10**8)}",
        f"DOB {rng.integers(1930, 2005)}-0{rng.integers(1, 10)}-{rng.integers(10, 29)}",
        f"{rng.integers(2019, 2027)}/1{rng.integers(0, 3)}/0{rng.integers(1, 10)}",
        f"ST {rng.choice(['MARY', 'LUKE', 'ANNE'])} HOSPITAL",
        f"CV-{rng.integers(100, 999)} OLYMPUS",
    ]


def font(size: int, k: int):
    from PIL import ImageFont

    if FONT_FILES:
        return ImageFont.truetype(FONT_FILES[k % len(FONT_FILES)], size)
    return ImageFont.load_default(size)


class Burner:
    """Draws a fixed set of PHI strings (and a clock that counts seconds) at fixed places, with their glyph masks."""

    def __init__(self, shape: tuple[int, int], tissue: np.ndarray, rng: np.random.Generator, scale: float) -> None:
        self.h, self.w = shape
        self.items = []
        strings = phi_strings(rng) + ["CLOCK"]
        ys, xs = np.nonzero(tissue)
        for k, s in enumerate(strings):
            size = int(rng.integers(10, 41) * scale) if scale < 1 else int(rng.integers(10, 41))
            size = max(9, size)
            over = k % 2 == 1  # every other string over the tissue, the rest in the surround (or where it falls)
            f = font(size, int(rng.integers(0, 10**6)))
            for _ in range(50):
                if over:
                    j = int(rng.integers(len(ys)))
                    x, y = int(xs[j]), int(ys[j])
                else:
                    x, y = int(rng.integers(2, max(3, self.w // 4))), int(rng.integers(2, self.h - size - 2))
                box = f.getbbox("88:88:88" if s == "CLOCK" else s)
                if (
                    x + box[2] < self.w - 2
                    and y + box[3] < self.h - 2
                    and not any(self._overlap((x, y, x + box[2], y + box[3]), it["box"]) for it in self.items)
                ):
                    break
            self.items.append(
                {"text": s, "font": f, "xy": (x, y), "colour": COLOURS[k % 3], "box": (x, y, x + box[2], y + box[3])}
            )

    @staticmethod
    def _overlap(a, b) -> bool:
        return min(a[2], b[2]) > max(a[0], b[0]) - 4 and min(a[3], b[3]) > max(a[1], b[1]) - 4

    def texts(self, t: float) -> list[str]:
        clock = time.strftime("%H:%M:%S", time.gmtime(14 * 3600 + 23 * 60 + int(t)))
        return [clock if it["text"] == "CLOCK" else it["text"] for it in self.items]

    def burn(self, image: np.ndarray, t: float) -> tuple[np.ndarray, list[np.ndarray]]:
        from PIL import Image, ImageDraw

        pil = Image.fromarray(image)
        d = ImageDraw.Draw(pil)
        glyphs = []
        for it, text in zip(self.items, self.texts(t)):
            m = Image.new("L", (self.w, self.h), 0)
            ImageDraw.Draw(m).text(it["xy"], text, fill=255, font=it["font"])
            d.text(it["xy"], text, fill=it["colour"], font=it["font"])
            glyphs.append(np.array(m) > 96)
        return np.array(pil), glyphs


def source_tissue(image: np.ndarray, *, overlay_column: float = 0.25) -> np.ndarray:
    """Where a Kvasir-SEG image shows tissue that the tissue-lost figure can be measured on: not its black frame
    and black boxes (dark regions connected to the image border: filling them black loses nothing), and not its
    left quarter, where the processor burned its own text (dates, times, counters: text the de-identifier must
    fill, but whose exact place is not known, so it can count neither as PHI nor as tissue)."""
    h, w = image.shape[:2]
    dark = (cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) < 20).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    x, y, bw, bh = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    edge = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    edge[0] = False
    keep = ~edge[labels]
    keep[:, : int(overlay_column * w)] = False
    return keep.astype(np.uint8)


def kvasir_clip(seconds: float, fps: int, rng: np.random.Generator):
    """1920x1080 frames from Kvasir-SEG images: a drifting, zooming view in a vignetted round field on a grey
    surround, a picture-in-picture box; yields (frame, field of view, measured tissue: source_tissue in view)."""
    h, w = 1080, 1920
    files = sorted(KVASIR.glob("*.jpg"))
    picks = [files[i] for i in rng.choice(len(files), int(np.ceil(seconds)), replace=False)]
    cx, cy, r = 1180, 540, 520
    yy, xx = np.mgrid[0:h, 0:w]
    dist = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / r
    disc = (dist <= 1).astype(np.uint8)
    vignette = np.clip(1.0 - 0.45 * dist**2, 0.35, 1.0)[:, :, None]
    surround = (17 + rng.integers(0, 5, (h, w, 1))).repeat(3, 2).astype(np.uint8)
    for k in range(int(seconds * fps)):
        img = cv2.cvtColor(cv2.imread(str(picks[k // fps])), cv2.COLOR_BGR2RGB)
        u = (k % fps) / fps
        zoom = 1.0 + 0.25 * u
        ih, iw = img.shape[:2]
        cw, ch = int(iw / zoom), int(ih / zoom)
        x0, y0 = int((iw - cw) * u), int((ih - ch) * (1 - u) / 2)
        view = cv2.resize(img[y0 : y0 + ch, x0 : x0 + cw], (2 * r, 2 * r), interpolation=cv2.INTER_CUBIC)
        src = cv2.resize(
            source_tissue(img)[y0 : y0 + ch, x0 : x0 + cw], (2 * r, 2 * r), interpolation=cv2.INTER_NEAREST
        )
        measured = np.zeros((h, w), np.uint8)
        measured[cy - r : cy + r, cx - r : cx + r] = src & disc[cy - r : cy + r, cx - r : cx + r]
        frame = surround.copy()
        tissue = (view.astype(np.float32) * vignette[cy - r : cy + r, cx - r : cx + r]).astype(np.uint8)
        sub = frame[cy - r : cy + r, cx - r : cx + r]
        np.copyto(sub, tissue, where=disc[cy - r : cy + r, cx - r : cx + r, None] > 0)
        frame[760:1000, 60:380] = cv2.resize(img, (320, 240), interpolation=cv2.INTER_AREA)  # picture in picture
        cv2.rectangle(frame, (58, 758), (381, 1001), (190, 190, 190), 2)
        yield frame, disc, measured


def clinicdb_clip():
    frames = [f.image for f in read_frames(ROOT / "samples" / "clinicdb_seq6.mp4")]
    grey = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
    tissue = (cv2.GaussianBlur(grey, (5, 5), 0) > 30).astype(np.uint8)
    for f in frames:
        yield f, tissue, tissue


def tesseract(image: np.ndarray, upscale: float) -> str:
    if upscale != 1:
        image = cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2GRAY))
    p = subprocess.run(["tesseract", "stdin", "stdout", "--psm", "11"], input=buf.tobytes(), capture_output=True)
    return p.stdout.decode("utf-8", "replace")


def char_recall(strings: list[str], text: str, *, min_block: int = 3) -> tuple[int, int]:
    """Characters of ``strings`` found in the OCR ``text`` (in runs of >= min_block), and their total."""
    norm = "".join(text.upper().split())
    found = total = 0
    for s in strings:
        s = "".join(s.upper().split())
        total += len(s)
        sm = difflib.SequenceMatcher(None, s, norm, autojunk=False)
        found += sum(b.size for b in sm.get_matching_blocks() if b.size >= min_block)
    return found, total


def dice_outside(a: np.ndarray, b: np.ndarray, outside: np.ndarray) -> float | None:
    a, b = (a > 0) & outside, (b > 0) & outside
    s = int(a.sum() + b.sum())
    return None if s == 0 else 2.0 * float((a & b).sum()) / s


def video_frames(path: Path) -> list[np.ndarray]:
    return [f.image for f in read_frames(path)]


def run_case(
    name: str, frames_iter, *, fps: int, scale: float, ocr_every: int, upscale: float, work: Path, repeats: int = 3
) -> dict:
    from models.predictor import Predictor
    from review.options import ReviewOptions
    from review.pipeline import process_input

    rng = np.random.default_rng(17)
    raw = list(frames_iter)
    h, w = raw[0][0].shape[:2]
    burner = Burner((h, w), raw[0][1], rng, scale)
    clip = work / f"{name}.mp4"
    burned, glyphs, texts = [], [], []
    with VideoWriter(clip, fps=fps, width=w, height=h, crf=16, preset="veryfast") as vw:
        for k, (frame, _, _) in enumerate(raw):
            b, g = burner.burn(frame, k / fps)
            burned.append(b)
            glyphs.append(g)
            texts.append(burner.texts(k / fps))
            vw.write(b)
    tissue = raw[0][1] > 0
    phi_box = np.zeros((h, w), bool)
    for it in burner.items:
        x0, y0, x1, y1 = it["box"]
        phi_box[max(0, y0 - 6) : y1 + 6, max(0, x0 - 6) : x1 + 6] = True

    # the de-identifier alone, on the frames as decoded (no compression after it): box recall, tissue lost
    decoded = video_frames(clip)
    red = Redactor(TextDetector(), every=max(1, int(round(2.0 * fps))))
    hits = n_boxes = 0
    lost, disc_filled = [], []
    for k, f in enumerate(decoded):
        out = red(f, k)
        filled = np.any(out != f, axis=2) | (out.max(2) == 0)
        for g in glyphs[k]:
            if g.any():
                n_boxes += 1
                hits += filled[g].mean() >= 0.95
        measured = (raw[k][2] > 0) & ~phi_box  # tissue in view: not the source's own black boxes nor its text
        lost.append(float((filled & measured).sum()) / max(1, int(measured.sum())))
        disc_filled.append(float((filled & tissue & ~phi_box).sum()) / max(1, int((tissue & ~phi_box).sum())))

    predictor = Predictor.from_checkpoint(ROOT / "checkpoints" / "endolift_polyp_unet_mnv2", device="cpu")
    times: dict[str, list[float]] = {"plain": [], "deid": []}
    cpu: dict[str, list[float]] = {"plain": [], "deid": []}
    outs = {}
    for _ in range(repeats):  # alternated: a shared machine is noisy, so each pair is compared, then the median
        for mode in ("plain", "deid"):
            out = work / f"{name}_{mode}"
            shutil.rmtree(out, ignore_errors=True)
            opts = ReviewOptions(deidentify=mode == "deid", original_video=True, key_frames=6)
            t0, c0 = time.perf_counter(), time.process_time()
            summary = process_input(clip, predictor=predictor, out_dir=out, opts=opts)
            times[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)  # all threads: less sensitive to other jobs than wall time
            outs[mode] = (out, summary)
    pairs = [d / p - 1 for d, p in zip(times["deid"], times["plain"])]

    # lesion masks, with against without de-identification, outside the PHI boxes (and inside the field of view)
    dices = []
    for mp in sorted((outs["plain"][0] / "masks").glob("*.png")):
        a = cv2.imread(str(mp), cv2.IMREAD_GRAYSCALE)
        b = cv2.imread(str(outs["deid"][0] / "masks" / mp.name), cv2.IMREAD_GRAYSCALE)
        d = dice_outside(a, b, ~phi_box & tissue)
        if d is not None:
            dices.append(d)

    # OCR: the input frames against every picture the de-identified run wrote
    out = outs["deid"][0]
    stem = clip.stem
    pictures = {
        "original video": video_frames(out / f"{stem}_original.mp4"),
        "overlay video": video_frames(out / f"{stem}_overlay.mp4"),
    }

    def no_captions(img: np.ndarray) -> np.ndarray:
        """The overlay's own caption bands blanked (its lesion line and time code at the top, the legend at the
        bottom: review/overlay.py), so that OCR of its words is not counted as PHI; the same rows of the original
        video are read in full."""
        ih, iw = img.shape[:2]
        line = int(28 * max(0.35, min(ih, iw) / 700) / 0.7)
        img = img.copy()
        img[: int(1.3 * line)] = 0
        img[ih - int(1.6 * line) :] = 0
        return img

    before, chance = [0, 0], [0, 0]
    after = {k: [0, 0] for k in [*pictures, "key frames"]}
    for k in range(0, len(burned), ocr_every):
        shown = [(before, burned[k]), (after["original video"], pictures["original video"][k])]
        # the same strings looked for on the frame before any PHI was burned in: what OCR matches by chance (runs
        # of 3 characters read into tissue texture and the source's own dates and clocks), the floor of "after"
        shown.append((chance, raw[k][0]))
        shown.append((after["overlay video"], no_captions(pictures["overlay video"][k])))
        for acc, img in shown:
            f_, t_ = char_recall(texts[k], tesseract(img, upscale))
            acc[0] += f_
            acc[1] += t_
    for kf in sorted((out / "keyframes").glob("*.jpg")):
        k = int(kf.stem.rsplit("_", 1)[1])
        img = no_captions(cv2.cvtColor(cv2.imread(str(kf)), cv2.COLOR_BGR2RGB))
        f_, t_ = char_recall(texts[k], tesseract(img, upscale))
        after["key frames"][0] += f_
        after["key frames"][1] += t_
    deid = outs["deid"][1]["deidentification"]
    return {
        "case": name,
        "size": f"{w}x{h}",
        "frames": len(burned),
        "phi_strings": len(burner.items),
        "ocr_char_recall_before": round(before[0] / max(1, before[1]), 4),
        "ocr_char_recall_after": {k: round(v[0] / max(1, v[1]), 4) for k, v in after.items()},
        "ocr_char_recall_without_phi": round(chance[0] / max(1, chance[1]), 4),
        "text_box_recall": round(hits / max(1, n_boxes), 4),
        "text_boxes": n_boxes,
        "tissue_area_lost_mean": round(float(np.mean(lost)), 4),
        "tissue_area_lost_max": round(float(np.max(lost)), 4),
        "field_filled_mean": round(float(np.mean(disc_filled)), 4),  # whole field, the source's own overlays too
        "mask_dice_outside_phi_mean": round(float(np.mean(dices)), 4) if dices else None,
        "mask_dice_outside_phi_min": round(float(np.min(dices)), 4) if dices else None,
        "mask_frames_compared": len(dices),
        "seconds_plain": [round(t, 2) for t in times["plain"]],
        "seconds_deid": [round(t, 2) for t in times["deid"]],
        "slowdown": round(float(np.median(pairs)), 3),  # median over the alternated pairs of runs
        "slowdown_pairs": [round(x, 3) for x in pairs],
        "slowdown_min_over_min": round(min(times["deid"]) / min(times["plain"]) - 1, 3),
        "cpu_seconds_plain": [round(t, 2) for t in cpu["plain"]],
        "cpu_seconds_deid": [round(t, 2) for t in cpu["deid"]],
        "cpu_slowdown": round(float(np.median(cpu["deid"]) / np.median(cpu["plain"]) - 1), 3),
        "deid_summary": {
            k: deid.get(k)
            for k in ("frames_checked", "frames_with_text", "text_boxes", "text_boxes_found_by_check", "passed")
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="length of the 1080p Kvasir clip")
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--ocr-every", type=int, default=20, help="OCR every Nth frame")
    ap.add_argument("--repeats", type=int, default=3, help="alternated pairs of timed runs (plain, de-identified)")
    ap.add_argument("--out", type=Path, default=None, help="write the figures as JSON here too")
    a = ap.parse_args()
    if not shutil.which("tesseract"):
        sys.exit("tesseract not found: apt-get install tesseract-ocr")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        results.append(
            run_case(
                "clinicdb", clinicdb_clip(), fps=25, scale=0.6, ocr_every=4, upscale=3, work=work, repeats=a.repeats
            )
        )
        print(json.dumps(results[-1], indent=1), flush=True)
        if KVASIR.is_dir():
            rng = np.random.default_rng(3)
            clip = kvasir_clip(a.seconds, a.fps, rng)
            results.append(
                run_case(
                    "kvasir1080",
                    clip,
                    fps=a.fps,
                    scale=1.0,
                    ocr_every=a.ocr_every,
                    upscale=1,
                    work=work,
                    repeats=a.repeats,
                )
            )
            print(json.dumps(results[-1], indent=1), flush=True)
        else:
            print(f"Kvasir-SEG not found at {KVASIR}: the 1080p case is skipped")
    if a.out:
        a.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
