"""De-identification of endoscopy pictures: burned-in text found and filled wherever it is, the scope's surround
blacked out, names replaced by keyed pseudonyms.

Endoscopes burn patient name, ID, birth date, exam date, clock, device and centre into the picture, in the black
surround and over the tissue. The field of view (data/scope.py) cannot remove text drawn inside it, so text is
found by a maintained scene-text detector: PaddleOCR's PP-OCRv4 detection network (DB, differentiable
binarisation), the ONNX file that rapidocr-onnxruntime 1.4.4 ships, run through ONNX Runtime
(``checkpoints/ocr/``; its README says where it comes from). Every text box is filled with one flat colour, never
blurred (blurred large text can stay legible), in every picture written; everything outside the field of view is
filled black, so the detector looks only inside the field's box.

Video adds a temporal cue: overlay text is static while the tissue moves. The detector runs on the first frame,
every ``every`` frames and at scene changes; its boxes persist between runs (a box is dropped only when two runs in
a row no longer find it), and a static-overlay mask, built from the first frames of each scene (pixels that keep
their value and their edges while the tissue around them moves), adds static strokes the detector missed, on every
frame, for the cost of an array fill. The field of view is followed over frames (data.scope.FieldOfView): one
frame's bright region loses dark tissue at the rim, the maximum over recent frames does not.

Fail closed: on every frame the detector runs on, it runs again on the redacted picture (residual_text). With the
text filled the detector reads more into what is left: faint text that bright text had outshone, and also
specular highlights and clusters of glints; so what it finds counts as text only where the picture shows a line
of glyphs (glyph_line: thin strokes of one height side by side). Such text is filled and the picture checked
again; a frame on which text is still found after that is counted and named (``Redactor.stats``), and infer.py
reports it (summary.json, the report's banner, exit code 2 unless review.deid_check=warn). Frames between detector
runs are covered by the persisting boxes and the static mask but are not checked one by one: the summary says how
many were checked.
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

from core.errors import UserError

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
        small = image if (nh, nw) == (h, w) else cv2.resize(image, (nw, nh), interpolation=_interp(s))
        # BGR, mean/std 0.5, one pass: (x / 127.5 - 1) on the flipped channels, then to 1 x 3 x H x W
        x = cv2.dnn.blobFromImage(small, 1 / 127.5, mean=(127.5, 127.5, 127.5), swapRB=True)
        with self.lock:
            prob = self.session.run(None, {self.input: x})[0][0, 0]
        return prob, w / nw, h / nh

    def regions(
        self, prob: np.ndarray, *, exclude: np.ndarray | None = None, min_side: int = 2
    ) -> list[tuple[int, int, int, int]]:
        """DB's text kernels in a probability map (map pixels, x1/y1 exclusive): regions above the threshold, at least
        ``min_side`` high and wide, whose mean probability reaches the box threshold; ``exclude`` (map-sized) > 0
        is left out."""
        bitmap = prob > self.thresh
        if exclude is not None:
            bitmap &= exclude == 0
        bitmap = bitmap.astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(bitmap, connectivity=8)
        found = []
        for i in range(1, n):
            x, y, bw, bh, _ = (int(v) for v in stats[i])
            if min(bw, bh) < min_side:
                continue
            if float(prob[y : y + bh, x : x + bw][labels[y : y + bh, x : x + bw] == i].mean()) < self.box_thresh:
                continue
            found.append((x, y, x + bw, y + bh))
        return found

    def grow(
        self, kernel: tuple[int, int, int, int], sx: float, sy: float, shape: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """A kernel (map pixels) -> the box to fill (picture pixels): DB's unclip distance for a rectangle, and a
        margin (a filled box must cover every stroke)."""
        x0, y0, x1, y1 = kernel
        bw, bh = x1 - x0, y1 - y0
        d = bw * bh * self.unclip / (2 * (bw + bh)) + self.pad * bh
        h, w = shape
        return (
            max(0, int((x0 - d) * sx)),
            max(0, int((y0 - d) * sy)),
            min(w, int(np.ceil((x1 + d) * sx))),
            min(h, int(np.ceil((y1 + d) * sy))),
        )

    def detect(
        self, image: np.ndarray, region: tuple[int, int, int, int] | None = None
    ) -> list[tuple[int, int, int, int]]:
        """H x W x 3 uint8 RGB -> text boxes (x0, y0, x1, y1), picture pixels, x1/y1 exclusive. ``region``: look
        only inside this box of the picture (the field of view, when everything outside it is filled anyway)."""
        ox, oy, crop = _crop(image, region)
        prob, sx, sy = self.probability(crop)
        boxes = [self.grow(k, sx, sy, crop.shape[:2]) for k in self.regions(prob)]
        return [(x0 + ox, y0 + oy, x1 + ox, y1 + oy) for x0, y0, x1, y1 in boxes]


def _interp(scale: float) -> int:
    return cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR


def _crop(image: np.ndarray, region: tuple[int, int, int, int] | None) -> tuple[int, int, np.ndarray]:
    if region is None:
        return 0, 0, image
    x0, y0, x1, y1 = region
    return x0, y0, image[y0:y1, x0:x1]


def box_mask(shape: tuple[int, int], boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """H x W uint8 0/1: the union of the boxes."""
    m = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def keep_bytes(keep: np.ndarray) -> np.ndarray:
    """H x W 0/1 -> H x W x 3 0/255, the mask fill ANDs a picture with."""
    k = (keep > 0).astype(np.uint8) * 255
    return cv2.merge([k, k, k])


def fill(
    image: np.ndarray,
    hide: np.ndarray | None,
    boxes: Iterable[tuple[int, int, int, int]] = (),
    *,
    ring: int = 4,
    keep: np.ndarray | None = None,
) -> np.ndarray:
    """A copy of ``image`` with the pixels where ``hide`` > 0 (or, given instead, ``keep`` == 0) set to solid black
    (never blurred), and each of ``boxes`` filled with one flat colour, the median of a ``ring``-pixel band around
    it (on the tissue a black rectangle's sharp edges look like text to a detector, and to a reader like a lesion's
    shadow; a flat patch of the surrounding colour carries nothing of what was under it either). ``keep`` may be
    H x W 0/1 or, ready to use, H x W x 3 0/255 (keep_bytes)."""
    if keep is None and hide is not None:
        keep = (hide == 0).astype(np.uint8)
    if keep is not None and keep.ndim == 2:
        keep = keep_bytes(keep)
    # blacking out is one AND with a byte mask (a boolean-indexed assignment over 1080p costs ten times more)
    out = image.copy() if keep is None else cv2.bitwise_and(image, keep)
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
        if keep is not None:  # black wins where a box reaches into what is filled black
            cut = keep[y0:y1, x0:x1, 0] == 0
            if cut.any():
                out[y0:y1, x0:x1][cut] = 0
    return out


def glyph_line(
    image: np.ndarray,
    kernel: tuple[int, int, int, int],
    *,
    hidden: np.ndarray | None = None,
    contrast: int = 40,
    min_height: int = 5,
    thin: float = 2.5,
) -> int:
    """How many glyphs of one line of text the picture shows around a text kernel (picture pixels): thin strokes
    standing out from their surround in one colour channel (a top-hat or black-hat a little larger than the
    kernel's height, at least ``contrast`` grey levels), each at least ``min_height`` high, ``thin`` times higher
    than its stroke is wide, and not wider than twice its height; the most that share a height and a middle
    (within 30% / 35% of a height) and follow each other at gaps under 1.5 heights. Text scores one per
    character; a specular highlight is one thick blob, a cluster of glints is round dots, neither a line of
    glyphs. ``hidden`` > 0 (filled) is not looked at."""
    x0, y0, x1, y1 = kernel
    h, w = image.shape[:2]
    kh = max(1, y1 - y0)
    a0, b0 = max(0, x0 - max(4, kh)), max(0, y0 - max(4, int(1.5 * kh)))
    a1, b1 = min(w, x1 + max(4, kh)), min(h, y1 + max(4, int(1.5 * kh)))
    crop = image[b0:b1, a0:a1]
    if crop.size == 0:
        return 0
    off = None if hidden is None else hidden[b0:b1, a0:a1] > 0
    k = int(np.clip(2 * kh, 9, 61)) | 1
    se = cv2.getStructuringElement(cv2.MORPH_RECT, (k, k))
    best = 0
    # each channel and polarity alone: green text on red tissue stands out in one channel, and a maximum over
    # channels would mix the text's bright strokes with the gaps between them
    for op in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        for c in range(crop.shape[2]):
            hat = cv2.morphologyEx(np.ascontiguousarray(crop[:, :, c]), op, se)
            if off is not None:
                hat[off] = 0
            # half the strongest contrast: strokes apart from their anti-aliased halo (a fixed floor alone joins
            # glints' halos into stroke-like arcs)
            level = max(contrast, 0.5 * float(hat.max()))
            best = max(best, _glyphs_in_line(hat >= level, min_height=min_height, thin=thin))
    return best


def _glyphs_in_line(ink: np.ndarray, *, min_height: int, thin: float) -> int:
    ink = ink.astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    dist = cv2.distanceTransform(ink, cv2.DIST_L2, 3)
    glyphs = []
    for i in range(1, n):
        x, y, gw, gh, _ = (int(v) for v in stats[i])
        if gh < min_height or gw > 2 * gh:
            continue
        stroke = 2 * float(dist[y : y + gh, x : x + gw][labels[y : y + gh, x : x + gw] == i].max())
        if gh >= thin * stroke:
            glyphs.append((x, y, gw, gh))
    best = 0
    for _, sy, _, sh in glyphs:
        mid = sy + sh / 2
        line = sorted(g for g in glyphs if abs(g[3] - sh) <= 0.3 * sh and abs(g[1] + g[3] / 2 - mid) <= 0.35 * sh)
        run = 1
        best = max(best, 1)
        for g, nxt in zip(line, line[1:]):
            run = run + 1 if nxt[0] - (g[0] + g[2]) <= 1.5 * sh else 1
            best = max(best, run)
    return best


def residual_text(
    detector: TextDetector,
    redacted: np.ndarray,
    hidden: np.ndarray,
    *,
    region: tuple[int, int, int, int] | None = None,
    margin: int = 3,
    min_side: int = 4,
    min_glyphs: int = 3,
) -> list[tuple[int, int, int, int]]:
    """Readable text left on a redacted picture: regions of the detector's probability map (> its threshold,
    scoring >= its box threshold) outside ``hidden`` grown by ``margin`` map pixels (the edge of a fill is not
    text), at least ``min_side`` map pixels high and wide, where the picture shows a line of at least
    ``min_glyphs`` glyphs (glyph_line). Returns the boxes to fill, in picture pixels, as detect does.

    Why both: with every line of text filled, the detector reads more into what is left than it did on the
    unredacted picture (it weighs a region against the whole picture), and specular highlights and clusters of
    glints then score like text; faint text that bright text had outshone is found too, and that is what the
    check is for. The glyph test tells the one from the other: strokes of one height side by side."""
    ox, oy, crop = _crop(redacted, region)
    hid = hidden if region is None else hidden[oy : oy + crop.shape[0], ox : ox + crop.shape[1]]
    prob, sx, sy = detector.probability(crop)
    mh, mw = prob.shape
    near = cv2.resize((hid > 0).astype(np.uint8), (mw, mh), interpolation=cv2.INTER_NEAREST)
    near = cv2.dilate(near, cv2.getStructuringElement(cv2.MORPH_RECT, (2 * margin + 1, 2 * margin + 1)))
    found = []
    for k in detector.regions(prob, exclude=near, min_side=min_side):
        x0, y0, x1, y1 = k
        px = (int(x0 * sx), int(y0 * sy), int(np.ceil(x1 * sx)), int(np.ceil(y1 * sy)))
        if glyph_line(crop, px, hidden=hid) >= min_glyphs:
            b = detector.grow(k, sx, sy, crop.shape[:2])
            found.append((b[0] + ox, b[1] + oy, b[2] + ox, b[3] + oy))
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
    found_by_check: int = 0  # text boxes the check found on a redacted picture, filled before it was written
    hidden_in_view: float = 0.0  # sum over frames of the field-of-view fraction filled (text over the tissue)
    static_frames: int = 0  # frames that the static-overlay mask added to


class Redactor:
    """De-identifies a stream of frames (a video) or single pictures (``every=1``, no temporal cue): every text box
    filled, and with ``surround`` everything outside the field of view filled too (for a video
    data.scope.FieldOfView, which follows the field over frames; for a picture data.scope.content_area).
    ``every``: frames between detector runs; ``scene_change``: mean absolute grey difference (0-255, on a
    64 x 36 thumbnail) from the last run's frame that triggers a run (and a new static-overlay window).

    With ``surround`` the detector looks only inside the field of view's bounding box (grown by ``reach``
    pixels): everything outside the field is filled black whatever it holds, and at 1080p a round field's box is
    half the frame. Fail closed: after redaction the check (residual_text) looks again at the picture written; a
    line of text it finds is filled and the picture checked once more (up to ``rounds`` times), and a frame on
    which text is still found is counted (stats.residual)."""

    def __init__(
        self,
        detector: TextDetector,
        *,
        every: int = 50,
        surround: bool = True,
        temporal: bool = True,
        scene_change: float = 25.0,
        reach: int = 8,
        rounds: int = 2,
    ) -> None:
        from data.scope import FieldOfView

        self.detector, self.every, self.surround, self.temporal = detector, max(1, every), surround, temporal
        self.scene_change, self.reach, self.rounds = scene_change, reach, rounds
        self.held: list[tuple[tuple[int, int, int, int], int]] = []  # (box, runs in a row it was missed)
        self.static = StaticOverlay()
        self.fov = FieldOfView()
        self.area: np.ndarray | None = None
        self.thumb: np.ndarray | None = None
        self.last_run = -(10**9)
        self.stats = DeidStats()
        self._filled: tuple[Any, Any, float] | None = None  # boxes, field -> view fraction filled (stats)
        self._kept: tuple[Any, np.ndarray] | None = None  # field -> its byte mask for fill

    def _field(self, image: np.ndarray, small: np.ndarray | None, look: bool) -> np.ndarray:
        """The field of view: for a video followed on every frame (data.scope.FieldOfView: a few milliseconds);
        otherwise found again when the detector runs (``look``)."""
        from data.scope import content_area, cut_boxes, picture_in_picture

        h, w = image.shape[:2]
        if small is not None:
            return self.fov(image, small)
        if look or self.area is None or self.area.shape != (h, w):
            if not self.surround:
                return np.ones((h, w), np.uint8)
            area = content_area(image)
            return cut_boxes(area, picture_in_picture(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), area))
        return self.area

    def _region(self) -> tuple[int, int, int, int] | None:
        """Where the detector looks: the field of view's box, or everything."""
        if not self.surround or self.area is None:
            return None
        h, w = self.area.shape
        rows, cols = np.flatnonzero(self.area.any(axis=1)), np.flatnonzero(self.area.any(axis=0))
        if not len(rows):
            return None
        r = self.reach
        x0, y0, x1, y1 = max(0, cols[0] - r), max(0, rows[0] - r), min(w, cols[-1] + 1 + r), min(h, rows[-1] + 1 + r)
        return None if (x1 - x0) * (y1 - y0) >= 0.9 * h * w else (int(x0), int(y0), int(x1), int(y1))

    def __call__(self, image: np.ndarray, index: int | None = None) -> np.ndarray:
        i = self.stats.frames if index is None else index
        self.stats.frames += 1
        h, w = image.shape[:2]
        video = self.every > 1 and self.temporal
        small = self.fov.small(image) if video and self.surround else None  # also the scene thumbnail's source
        thumb = cv2.resize(
            small if small is not None else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
            (64, 36),
            interpolation=cv2.INTER_AREA,
        ).astype(np.float32)
        scene = self.thumb is not None and float(np.abs(thumb - self.thumb).mean()) > self.scene_change
        resized = self.area is None or self.area.shape != (h, w)
        run = self.every == 1 or resized or i - self.last_run >= self.every
        if scene and not run:
            self.stats.refreshes_on_scene_change += 1
        if scene and self.temporal:
            self.static.reset()
        if resized:
            self.fov.reset()
        # not reset at a scene change: the scope's aperture stays when the view jumps (a changed one is followed
        # as the maximum decays), and one frame alone would bring back the notches the maximum is there to fill
        self.area = self._field(image, small, run or scene)
        new: list[tuple[int, int, int, int]] = []
        if run or scene:
            self.last_run, self.thumb = i, thumb
            new = self.detector.detect(image, self._region())
            self.stats.boxes += len(new)
            self.stats.frames_with_text += bool(new)
            # boxes persist: one still found, or missed by only this run, stays; new ones join
            kept = [(b, 0 if _covered(b, new) else m + 1) for b, m in self.held]
            self.held = [(b, m) for b, m in kept if m < 2] + [
                (b, 0) for b in new if not _covered(b, [x for x, _ in kept])
            ]
        if video:
            self.static.offer(image)
        static = self.static.boxes((h, w)) if video else []
        if static:
            self.stats.static_frames += 1
        boxes = [b for b, _ in self.held] + new + static
        keep = self._keep() if self.surround else None
        out = fill(image, None, boxes, keep=keep)
        if run or scene:  # fail closed: look again at what is written, fill what is still read, look again
            self.stats.checked += 1
            region = self._region()
            for r in range(self.rounds + 1):
                hidden = box_mask((h, w), boxes)
                if self.surround:
                    hidden |= self.area == 0
                more = residual_text(self.detector, out, hidden, region=region)
                if not more:
                    break
                if r == self.rounds:
                    self.stats.residual.append(i)
                    break
                self.stats.found_by_check += len(more)
                self.held += [(b, 0) for b in more]
                boxes += more
                out = fill(image, None, boxes, keep=keep)
        self.stats.hidden_in_view += self._view_filled(boxes, (h, w))
        return out

    def _keep(self) -> np.ndarray:
        """The field as fill's byte mask, made again only when the field changes."""
        if self._kept is None or self._kept[0] is not self.area:
            self._kept = (self.area, keep_bytes(self.area))
        return self._kept[1]

    def _view_filled(self, boxes: list[tuple[int, int, int, int]], shape: tuple[int, int]) -> float:
        """The fraction of the field of view that the boxes fill (computed again only when boxes or field change)."""
        key = tuple(boxes)
        if self._filled is None or self._filled[0] != key or self._filled[1] is not self.area:
            area = self.area if self.area is not None else np.ones(shape, np.uint8)
            text = box_mask(shape, boxes)
            self._filled = (key, self.area, float((text & area).sum()) / max(1, int(area.sum())))
        return self._filled[2]

    def summary(self) -> dict[str, Any]:
        """What summary.json says about the de-identification of this input."""
        s = self.stats
        return {
            "detector": DETECTOR_NAME,
            "frames": s.frames,
            "frames_checked": s.checked,
            "frames_with_text": s.frames_with_text,
            "text_boxes": s.boxes,
            "text_boxes_found_by_check": s.found_by_check,
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
