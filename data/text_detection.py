"""Burned-in text found in endoscopy pictures: a scene-text detector, the check that looks again at a redacted picture,
and, in video, overlay strokes that stay put while the tissue moves. data.deid fills what is found here.

Endoscopes burn patient name, ID, birth date, exam date, clock, device and centre into the picture, in the black
surround and over the tissue. The field of view (data/scope.py) cannot remove text drawn inside it, so text is
found by a maintained scene-text detector: PaddleOCR's PP-OCRv4 detection network (DB, differentiable
binarisation), the ONNX file that rapidocr-onnxruntime 1.4.4 ships, run through ONNX Runtime
(``checkpoints/ocr/``; its README says where it comes from).

Video adds a temporal cue: overlay text is static while the tissue moves. A static-overlay mask (StaticOverlay),
built from the first frames of each scene (pixels that keep their value and their edges while the tissue around
them moves), adds static strokes the detector missed.

With the text filled the detector reads more into what is left: faint text that bright text had outshone, and also
specular highlights and clusters of glints; so what it finds on a redacted picture (residual_text) counts as text
only where the picture shows a line of glyphs (glyph_line: thin strokes of one height side by side).
"""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DETECTOR = ROOT / "checkpoints" / "ocr" / "ppocr_v4_det.onnx"
DETECTOR_NAME = "PP-OCRv4 text detection (PaddleOCR, via rapidocr-onnxruntime 1.4.4), ONNX Runtime"


# --- the text detector ------------------------------------------------------------------------------------------------


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


# --- the check after redaction: a line of glyphs ----------------------------------------------------------------------


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


# --- the temporal cue: static overlay ---------------------------------------------------------------------------------


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
