"""De-identification of endoscopy pictures: burned-in text found and filled wherever it is, the scope's surround
blacked out, names replaced by keyed pseudonyms.

Endoscopes burn patient name, ID, birth date, exam date, clock, device and centre into the picture, in the black
surround and over the tissue. The field of view (data/scope.py) cannot remove text drawn inside it, so text is
found by a maintained scene-text detector: PaddleOCR's PP-OCRv4 detection network (DB, differentiable
binarisation), the ONNX file that rapidocr-onnxruntime 1.4.4 ships, run through ONNX Runtime
(``checkpoints/ocr/``; its README says where it comes from). Every text box is filled with solid black, not
blurred (blurred large text can stay legible), in every picture written.

Video adds a temporal cue: overlay text is static while the tissue moves. The detector runs on the first frame,
every ``every`` frames and at scene changes; its boxes persist between runs (a box is dropped only when two runs in
a row no longer find it), and a static-overlay mask, built from the first frames of each scene (pixels that keep
their value and their edges while the tissue around them moves), adds static strokes the detector missed, on every
frame, for the cost of an array fill.

Fail closed: on every frame the detector runs on, it runs again on the redacted picture; a frame on which text is
still found is counted and named (``Redactor.stats()``), and infer.py reports it (summary.json, the report's
banner, exit code 2 unless review.deid_check=warn). Frames between detector runs are covered by the persisting
boxes and the static mask but are not checked one by one: stats() says how many were checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DETECTOR = ROOT / "checkpoints" / "ocr" / "ppocr_v4_det.onnx"
DETECTOR_NAME = "PP-OCRv4 text detection (PaddleOCR, via rapidocr-onnxruntime 1.4.4), ONNX Runtime"


# --- the text detector ------------------------------------------------------------------------------------------


class TextDetector:
    """Scene-text boxes in an RGB picture: PP-OCRv4's DB detector, with its usual post-processing (probability > 0.3,
    regions scoring >= 0.5, boxes grown by the unclip ratio 1.6) done on axis-aligned boxes, then padded, since a
    box is filled and a filled box must cover the whole glyphs.

    ``max_side``: the picture is scaled down so its longer side is at most this (multiples of 32); 1920 keeps
    1080p at full resolution, where 10-pixel text is still found."""

    def __init__(
        self,
        path: str | Path = DEFAULT_DETECTOR,
        *,
        max_side: int = 1920,
        threads: int = 1,
        thresh: float = 0.3,
        box_thresh: float = 0.5,
        unclip: float = 1.6,
        pad: float = 0.25,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise UserError(
                f"text detector not found: {path} (review.deidentify needs it; it ships in checkpoints/ocr/, "
                "see its README)"
            )
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.max_side, self.thresh, self.box_thresh, self.unclip, self.pad = max_side, thresh, box_thresh, unclip, pad
        self.lock = threading.Lock()  # one session, used from the decode thread and, for stills, the main one

    def probability(self, image: np.ndarray) -> tuple[np.ndarray, float, float]:
        """The detector's text-probability map, and the x / y scale from map to picture."""
        h, w = image.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        nh, nw = max(32, int(round(h * s / 32)) * 32), max(32, int(round(w * s / 32)) * 32)
        small = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        x = (small[:, :, ::-1].astype(np.float32) / 127.5 - 1.0).transpose(2, 0, 1)[None]  # BGR, mean/std 0.5
        with self.lock:
            prob = self.session.run(None, {self.input: np.ascontiguousarray(x)})[0][0, 0]
        return prob, w / nw, h / nh

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """H x W x 3 uint8 RGB -> text boxes (x0, y0, x1, y1), picture pixels, x1/y1 exclusive."""
        prob, sx, sy = self.probability(image)
        h, w = image.shape[:2]
        bitmap = (prob > self.thresh).astype(np.uint8)
        n, _, stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
        boxes = []
        for i in range(1, n):
            x, y, bw, bh, _ = (int(v) for v in stats[i])
            if min(bw, bh) < 2:
                continue
            if float(prob[y : y + bh, x : x + bw][bitmap[y : y + bh, x : x + bw] > 0].mean()) < self.box_thresh:
                continue
            d = bw * bh * self.unclip / (2 * (bw + bh))  # DB's unclip distance for a rectangle
            d += self.pad * bh  # and a margin: a filled box must cover every stroke
            boxes.append(
                (
                    max(0, int((x - d) * sx)),
                    max(0, int((y - d) * sy)),
                    min(w, int(np.ceil((x + bw + d) * sx))),
                    min(h, int(np.ceil((y + bh + d) * sy))),
                )
            )
        return boxes


def box_mask(shape: tuple[int, int], boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """H x W uint8 0/1: the union of the boxes."""
    m = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def fill(
    image: np.ndarray, hide: np.ndarray, boxes: Iterable[tuple[int, int, int, int]] = (), *, ring: int = 4
) -> np.ndarray:
    """A copy of ``image`` with the pixels where ``hide`` > 0 set to solid black (never blurred), and each of
    ``boxes`` filled with one flat colour, the median of a ``ring``-pixel band around it (on the tissue a black
    rectangle's sharp edges look like text to a detector, and to a reader like a lesion's shadow; a flat patch of
    the surrounding colour carries nothing of what was under it either)."""
    out = image.copy()
    h, w = image.shape[:2]
    for x0, y0, x1, y1 in boxes:
        a0, b0, a1, b1 = max(0, x0 - ring), max(0, y0 - ring), min(w, x1 + ring), min(h, y1 + ring)
        band = np.concatenate(
            [
                image[b0:y0, a0:a1].reshape(-1, 3),
                image[y1:b1, a0:a1].reshape(-1, 3),
                image[y0:y1, a0:x0].reshape(-1, 3),
                image[y0:y1, x1:a1].reshape(-1, 3),
            ]
        )
        out[y0:y1, x0:x1] = np.median(band, axis=0).astype(np.uint8) if len(band) else 0
    out[hide > 0] = 0
    return out


def residual_text(
    detector: TextDetector, redacted: np.ndarray, hidden: np.ndarray, *, margin: int = 3, min_side: int = 4
) -> list[tuple[int, int, int, int]]:
    """Text the detector still finds on a redacted picture, away from what was filled: regions of its probability
    map (> its threshold, scoring >= its box threshold) outside ``hidden`` grown by ``margin`` map pixels (the edge
    of a fill is not text), at least ``min_side`` map pixels high and wide (a glint is not a line of text).
    Returns their boxes in picture pixels."""
    prob, sx, sy = detector.probability(redacted)
    mh, mw = prob.shape
    near = cv2.resize((hidden > 0).astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST)
    near = cv2.dilate(near, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1, 2 * margin + 1)))
    bitmap = ((prob > detector.thresh) & (near == 0)).astype(np.uint8)
    n, _, stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
    found = []
    for i in range(1, n):
        x, y, bw, bh, _ = (int(v) for v in stats[i])
        if min(bw, bh) < min_side:
            continue
        if float(prob[y : y + bh, x : x + bw][bitmap[y : y + bh, x : x + bw] > 0].mean()) < detector.box_thresh:
            continue
        found.append((int(x * sx), int(y * sy), int(np.ceil((x + bw) * sx)), int(np.ceil((y + bh) * sy))))
    return found


# --- the temporal cue: static overlay --------------------------------------------------------------------------


class StaticOverlay:
    """Strokes that stay put while the tissue moves: over ``window`` frames of a scene (at a width of ``width``
    pixels), pixels whose grey level varies by less than ``still`` while they sit on an edge (local contrast >=
    ``edge``). Small, compact groups of them are overlay text or symbols; the long ring of the scope's own edge and
    large areas (a still scene, the scope held against the wall) are not taken. ``mask(shape)``: the result at a
    picture's size, dilated; None until the window is full."""

    def __init__(self, *, window: int = 8, width: int = 640, still: float = 10.0, edge: float = 60.0) -> None:
        self.window, self.width, self.still, self.edge = window, width, still, edge
        self.reset()

    def reset(self) -> None:
        self.lo = self.hi = self.edges = None
        self.n = 0
        self.result: np.ndarray | None = None
        self._boxes: tuple[tuple[int, int], list[tuple[int, int, int, int]]] | None = None

    def offer(self, image: np.ndarray) -> None:
        if self.result is not None or self.n >= self.window:
            return
        h, w = image.shape[:2]
        s = self.width / w
        grey = cv2.cvtColor(
            cv2.resize(image, (self.width, max(8, int(h * s))), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY
        ).astype(np.int16)
        k = cv2.getStructuringElement(cv2.MORPH_RECT, (3, 3))
        edges = cv2.morphologyEx(grey.astype(np.uint8), cv2.MORPH_GRADIENT, k) >= self.edge
        if self.lo is None:
            self.lo, self.hi, self.edges = grey.copy(), grey.copy(), edges
        else:
            np.minimum(self.lo, grey, out=self.lo)
            np.maximum(self.hi, grey, out=self.hi)
            self.edges &= edges
        self.n += 1
        if self.n == self.window:
            self.result = self._finish()

    def _finish(self) -> np.ndarray:
        static = ((self.hi - self.lo) < self.still) & self.edges
        h, w = static.shape
        moving = (self.hi - self.lo) >= self.still
        if moving.mean() < 0.2:  # the scene hardly moved: stillness says nothing about overlays
            return np.zeros_like(static, np.uint8)
        grown = cv2.dilate(static.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_RECT, (7, 3)))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(grown, connectivity=8)
        keep = np.zeros(n, bool)
        for i in range(1, n):
            x, y, bw, bh, area = (int(v) for v in stats[i])
            # text-sized and compact: not the field's rim (a long thin ring) nor a large still region
            keep[i] = 3 <= bh <= 0.15 * h and bw <= 0.5 * w and area >= 0.2 * bw * bh and area >= 6
        return keep[labels].astype(np.uint8)

    def boxes(self, shape: tuple[int, int]) -> list[tuple[int, int, int, int]]:
        """The static overlay's groups as boxes at a picture's size (each filled with one colour, like text)."""
        if self._boxes is not None and self._boxes[0] == shape:
            return self._boxes[1]
        m = self.mask(shape)
        if m is None:
            return []
        n, _, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        self._boxes = (shape, [(int(x), int(y), int(x + bw), int(y + bh)) for x, y, bw, bh, _ in stats[1:]])
        return self._boxes[1]

    def mask(self, shape: tuple[int, int]) -> np.ndarray | None:
        if self.result is None:
            return None
        m = cv2.resize(self.result, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        pad = max(3, shape[1] // self.width * 2)
        return cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * pad + 1, 2 * pad + 1)))


# --- the redactor ------------------------------------------------------------------------------------------------


@dataclass
class DeidStats:
    frames: int = 0
    checked: int = 0  # frames the detector ran on, and ran again on after redaction
    refreshes_on_scene_change: int = 0
    frames_with_text: int = 0  # checked frames on which text was found (and filled)
    residual: list[int] = field(default_factory=list)  # checked frames with text still found after redaction
    boxes: int = 0  # text boxes found, over all checked frames
    hidden_in_view: float = 0.0  # sum over frames of the field-of-view fraction filled (text over the tissue)
    static_frames: int = 0  # frames that the static-overlay mask added to


class Redactor:
    """De-identifies a stream of frames (a video) or single pictures (``every=1``, no temporal cue): every text box
    filled, and with ``surround`` everything outside the field of view (data.scope.content_area) filled too.
    ``every``: frames between detector runs; ``scene_change``: mean absolute grey difference (0-255, on a
    64 x 36 thumbnail) from the last run's frame that triggers a run (and a new static-overlay window)."""

    def __init__(
        self,
        detector: TextDetector,
        *,
        every: int = 50,
        surround: bool = True,
        temporal: bool = True,
        scene_change: float = 25.0,
    ) -> None:
        self.detector, self.every, self.surround, self.temporal = detector, max(1, every), surround, temporal
        self.scene_change = scene_change
        self.held: list[tuple[tuple[int, int, int, int], int]] = []  # (box, runs in a row it was missed)
        self.static = StaticOverlay()
        self.area: np.ndarray | None = None
        self.thumb: np.ndarray | None = None
        self.last_run = -(10**9)
        self.stats = DeidStats()

    def _thumb(self, image: np.ndarray) -> np.ndarray:
        return cv2.resize(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), (64, 36), interpolation=cv2.INTER_AREA).astype(
            np.float32
        )

    def __call__(self, image: np.ndarray, index: int | None = None) -> np.ndarray:
        from data.scope import content_area

        i = self.stats.frames if index is None else index
        self.stats.frames += 1
        h, w = image.shape[:2]
        thumb = self._thumb(image)
        scene = self.thumb is not None and float(np.abs(thumb - self.thumb).mean()) > self.scene_change
        run = self.every == 1 or self.area is None or self.area.shape != (h, w) or i - self.last_run >= self.every
        if scene and not run:
            self.stats.refreshes_on_scene_change += 1
        if scene and self.temporal:
            self.static.reset()
        new: list[tuple[int, int, int, int]] = []
        if run or scene:
            self.last_run, self.thumb = i, thumb
            if self.surround:
                self.area = content_area(image)
            elif self.area is None or self.area.shape != (h, w):
                self.area = np.ones((h, w), np.uint8)
            new = self.detector.detect(image)
            self.stats.boxes += len(new)
            self.stats.frames_with_text += bool(new)
            # boxes persist: one still found, or missed by only this run, stays; new ones join
            kept = [(b, 0 if _covered(b, new) else m + 1) for b, m in self.held]
            self.held = [(b, m) for b, m in kept if m < 2] + [
                (b, 0) for b in new if not _covered(b, [x for x, _ in kept])
            ]
        if self.temporal and self.every > 1:
            self.static.offer(image)
        boxes = [b for b, _ in self.held] + new
        static = self.static.boxes((h, w)) if self.temporal and self.every > 1 else []
        if static:
            self.stats.static_frames += 1
            boxes += static
        text = box_mask((h, w), boxes)
        self.stats.hidden_in_view += float((text & self.area).sum()) / max(1, int(self.area.sum()))
        surround = (self.area == 0) if self.surround else np.zeros((h, w), bool)
        out = fill(image, surround, boxes)
        if run or scene:  # fail closed: look again at what is written
            self.stats.checked += 1
            if residual_text(self.detector, out, text | surround):
                self.stats.residual.append(i)
        return out

    def summary(self) -> dict[str, Any]:
        """What summary.json says about the de-identification of this input."""
        s = self.stats
        return {
            "detector": DETECTOR_NAME,
            "frames": s.frames,
            "frames_checked": s.checked,
            "frames_with_text": s.frames_with_text,
            "text_boxes": s.boxes,
            "scene_changes": s.refreshes_on_scene_change,
            "frames_with_static_overlay": s.static_frames,
            "mean_view_fraction_filled": round(s.hidden_in_view / max(1, s.frames), 5),
            "residual_text_frames": s.residual[:100],
            "residual_text_frame_count": len(s.residual),
            "passed": not s.residual,
        }

    def frames(self, frames: Iterable[Any]) -> Iterator[Any]:
        """De-identify a stream of data.video.Frame, in its order: each frame's ``shown`` becomes the picture that
        may be written (its ``image`` stays for the model, so that the lesion masks do not change)."""
        for f in frames:
            f.shown = self(f.image, f.index)
            yield f


def _covered(box: tuple[int, int, int, int], others: Iterable[tuple[int, int, int, int]]) -> bool:
    """Whether ``box`` overlaps one of ``others`` (the same text found again)."""
    x0, y0, x1, y1 = box
    return any(min(x1, b[2]) > max(x0, b[0]) and min(y1, b[3]) > max(y0, b[1]) for b in others)


# --- names -------------------------------------------------------------------------------------------------------

KEY_ENV = "ENDOLIFT_NAME_KEY"


def name_key() -> bytes:
    """The secret behind pseudonyms: $ENDOLIFT_NAME_KEY, else a random key kept in ~/.config/endolift/name.key
    (created on first use, mode 0600). The same key gives the same pseudonym for the same recording, so a hospital
    that keeps the key can link outputs to cases; without it a pseudonym says nothing."""
    env = os.environ.get(KEY_ENV)
    if env:
        return env.encode()
    home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config") / "endolift"
    path = home / "name.key"
    if not path.is_file():
        home.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def content_digest(path: str | Path, *, chunk: int = 1 << 20) -> bytes:
    """A digest of a file's content (its size, first and last MiB): the same recording, whatever its name."""
    path = Path(path)
    h = hashlib.sha256()
    if path.is_dir():
        for p in sorted(q for q in path.iterdir() if q.is_file()):
            h.update(content_digest(p, chunk=chunk))
        return h.digest()
    size = path.stat().st_size
    h.update(str(size).encode())
    with path.open("rb") as f:
        h.update(f.read(chunk))
        if size > 2 * chunk:
            f.seek(-chunk, os.SEEK_END)
            h.update(f.read(chunk))
    return h.digest()


def pseudonym(path: str | Path, *, key: bytes | None = None, prefix: str = "case") -> str:
    """``case-<16 hex>``: a keyed hash (HMAC-SHA256) of the input's content, never of its name."""
    mac = hmac.new(key if key is not None else name_key(), content_digest(path), hashlib.sha256)
    return f"{prefix}-{mac.hexdigest()[:16]}"
