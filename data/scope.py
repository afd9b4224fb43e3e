"""The endoscope's content area: the bright circular/octagonal field of view inside the black frame.

Scopes burn text, clocks and picture-in-picture boxes into the black border (see Kvasir-SEG); predictions there
are meaningless, so they are masked out, and ``deidentify`` fills everything outside the field (data/deid.py finds
the text inside it). For de-identification, FieldOfView follows a video's field over frames and cuts out
picture-in-picture boxes that reach into the field (picture_in_picture).
"""

from __future__ import annotations

import cv2
import numpy as np


def border_level(grey: np.ndarray, *, ring: float = 0.02) -> float:
    """The surround's grey level: a low percentile of the frame's outer ring (the field of view rarely fills the
    whole ring, and text there is a small share of it). 0-5 for a black surround, 15-30 for the grey ones some
    processors draw."""
    h, w = grey.shape
    r = max(2, int(round(min(h, w) * ring)))
    band = np.concatenate([grey[:r].ravel(), grey[-r:].ravel(), grey[:, :r].ravel(), grey[:, -r:].ravel()])
    return float(np.percentile(band, 25))


def content_area(
    image: np.ndarray, *, threshold: int | None = None, min_fraction: float = 0.2, margin: int = 10
) -> np.ndarray:
    """H x W x 3 uint8 RGB -> H x W uint8 0/1 mask of the field of view.

    The largest connected region brighter than the surround (``threshold``, by default the surround's own level
    plus ``margin``, at least 20: black and grey surrounds alike), after a blur and an opening that detaches thin
    bridges to burned-in overlays. Its holes are filled (dark lumen and shadows stay in); its convex hull is taken
    when the region is nearly convex, as a scope's field is (vignetting darkens the rim, the hull restores it), and
    otherwise the region itself, closed, so that a hull never swallows text or a picture-in-picture box attached
    to the field. Falls back to the whole frame when nothing plausible (< min_fraction of the frame) is found.
    """
    h, w = image.shape[:2]
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (5, 5), 0)
    thr = threshold if threshold is not None else int(min(60.0, max(20.0, border_level(grey) + margin)))
    bright = (grey > thr).astype(np.uint8)
    k = max(3, (min(h, w) // 40) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    bright = cv2.morphologyEx(bright, cv2.MORPH_OPEN, kernel)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(bright, connectivity=8)
    if n <= 1:
        return np.ones((h, w), np.uint8)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[largest, cv2.CC_STAT_AREA] < min_fraction * h * w:
        return np.ones((h, w), np.uint8)
    contours, _ = cv2.findContours((labels == largest).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    region = np.zeros((h, w), np.uint8)
    cv2.fillPoly(region, contours, 1)  # holes filled
    hull = cv2.convexHull(np.concatenate(contours))
    out = np.zeros((h, w), np.uint8)
    cv2.fillPoly(out, [hull], 1)
    if region.sum() >= 0.93 * out.sum():
        return out
    return cv2.morphologyEx(region, cv2.MORPH_CLOSE, kernel)


def picture_in_picture(
    grey: np.ndarray, area: np.ndarray, *, min_side: float = 0.08, max_fraction: float = 0.25, gap: int = 4
) -> list[tuple[int, int, int, int]]:
    """Picture-in-picture boxes that overlap the field of view (x0, y0, x1, y1; x1/y1 exclusive), found in a grey
    picture with its field ``area``: a corner where a horizontal and a vertical straight edge, each at least
    ``min_side`` of the picture's shorter side, meet (within ``gap`` pixels), spanning a box of at most
    ``max_fraction`` of the picture that reaches into the field. A box apart from the field is outside it
    already; one that overlaps it is bright like tissue, so content_area keeps it. Tissue has no long straight
    edges meeting at a right angle; a scope's round or octagonal rim has no such corner (the octagon's straight
    sides meet its diagonals)."""
    h, w = grey.shape
    edges = cv2.Canny(cv2.GaussianBlur(grey, (3, 3), 0), 50, 150)
    near = cv2.dilate(edges, np.ones((5, 5), np.uint8)) > 0
    length = max(8, int(min_side * min(h, w)))
    found = cv2.HoughLinesP(edges, 1, np.pi / 180, threshold=length // 2, minLineLength=length, maxLineGap=2)
    if found is None:
        return []
    flat, tall = [], []
    for x0, y0, x1, y1 in found[:, 0]:
        if abs(int(y1) - int(y0)) <= 1:
            flat.append((int(y0), min(int(x0), int(x1)), max(int(x0), int(x1))))  # y, x from, x to
        elif abs(int(x1) - int(x0)) <= 1:
            tall.append((int(x0), min(int(y0), int(y1)), max(int(y0), int(y1))))  # x, y from, y to
    boxes = []
    for y, xa, xb in flat:
        for x, ya, yb in tall:
            # an L: an end of each segment at the corner (x, y), each running away from it
            if not (xa - gap <= x <= xb + gap and ya - gap <= y <= yb + gap):
                continue
            at_x = abs(x - xa) <= gap or abs(x - xb) <= gap
            at_y = abs(y - ya) <= gap or abs(y - yb) <= gap
            if not (at_x and at_y):
                continue
            bx0, bx1 = (x, xb) if abs(x - xa) <= gap else (xa, x)
            by0, by1 = (y, yb) if abs(y - ya) <= gap else (ya, y)
            if (bx1 - bx0) * (by1 - by0) > max_fraction * h * w:
                continue
            inside = area[by0 : by1 + 1, bx0 : bx1 + 1]
            if not (inside.size and inside.mean() > 0.1 and area[min(y, h - 1), min(x, w - 1)] > 0):
                continue
            # the box's other two sides: edges too, or outside the field (in the surround, at the picture's
            # border); not tissue, where an L of a box's edge and some other straight edge would end
            fx = bx0 if bx1 == x else bx1
            fy = by0 if by1 == y else by1
            far = [
                (near[by0 : by1 + 1, fx], area[by0 : by1 + 1, min(fx, w - 1)]),
                (near[fy, bx0 : bx1 + 1], area[min(fy, h - 1), bx0 : bx1 + 1]),
            ]
            if all(e.mean() >= 0.6 or a.mean() <= 0.2 for e, a in far):
                boxes.append((max(0, bx0 - 1), max(0, by0 - 1), min(w, bx1 + 2), min(h, by1 + 2)))
    return boxes


def still_framed(grey: np.ndarray, area: np.ndarray, box: tuple[int, int, int, int], *, frac: float = 0.6) -> bool:
    """Whether a picture-in-picture box found before still has edges along its sides inside the field (at least
    ``frac`` of each such side's pixels near an edge): a box that moved, or went, has not."""
    h, w = grey.shape
    x0, y0, x1, y1 = box
    a0, b0, a1, b1 = max(0, x0 - 3), max(0, y0 - 3), min(w, x1 + 3), min(h, y1 + 3)
    near = cv2.dilate(cv2.Canny(cv2.GaussianBlur(grey[b0:b1, a0:a1], (3, 3), 0), 50, 150), np.ones((5, 5), np.uint8))
    inside = area[b0:b1, a0:a1] > 0
    sides = []
    for x in (x0, x1 - 1):
        if 0 <= x - a0 < near.shape[1]:
            sides.append((near[y0 - b0 : y1 - b0, x - a0], inside[y0 - b0 : y1 - b0, x - a0]))
    for y in (y0, y1 - 1):
        if 0 <= y - b0 < near.shape[0]:
            sides.append((near[y - b0, x0 - a0 : x1 - a0], inside[y - b0, x0 - a0 : x1 - a0]))
    seen = [(e[m] > 0).mean() for e, m in sides if m.sum() >= 5]
    return bool(seen) and min(seen) >= frac


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


def cut_boxes(area: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> np.ndarray:
    """``area`` with the boxes taken out (a copy, when there are any)."""
    if not boxes:
        return area
    area = area.copy()
    for x0, y0, x1, y1 in boxes:
        area[y0:y1, x0:x1] = 0
    return area


def field_of_view(image: np.ndarray, enabled: bool = True) -> np.ndarray:
    """content_area, or the whole frame when scope masking is off (review.scope_mask=false)."""
    return content_area(image) if enabled else np.ones(image.shape[:2], np.uint8)


def fill_outside_field_of_view(image: np.ndarray, area: np.ndarray) -> np.ndarray:
    """Fill everything outside the field of view with solid black (burned-in names, dates, IDs in the surround).
    Not a blur: blurred large text can stay legible. Text over the tissue needs data.deid, which infer.py's
    review.deidentify uses."""
    return np.where(area[:, :, None] > 0, image, np.zeros_like(image))


class FieldOfView:
    """The field of view of a video, from the frames seen so far: content_area of the per-pixel maximum of recent
    frames' grey levels, at a width of ``width`` pixels, scaled back to the frame.

    One frame is not enough: where the tissue at the rim is dark (vignetting, a dark lumen, a dark wall) or where
    the picture holds a black box of its own, a single frame's bright region has notches, the field is then not
    nearly convex, its hull is not taken, and the dark tissue there would be filled as surround. The scope's
    aperture does not move while the tissue does, so the maximum over frames fills the field out. The maximum
    decays by ``decay`` per frame, so a field that changes (another scope, a zoom on the processor) is followed
    within a second or two; ``reset`` starts over. ``every``: frames between estimates (an estimate costs a few
    milliseconds at this width), after one on each of the first ``every`` frames. A picture-in-picture box that
    reaches into the field (picture_in_picture) is cut out of it."""

    def __init__(self, *, width: int = 960, decay: float = 0.98, every: int = 10) -> None:
        self.width, self.decay, self.every = width, decay, every
        self.reset()

    def reset(self) -> None:
        self.peak: np.ndarray | None = None
        self.area: np.ndarray | None = None
        self.since = self.seen = 0
        self.pip: list[tuple[int, int, int, int]] = []  # boxes cut out, at the working width

    def grey_thumbnail(self, image: np.ndarray) -> np.ndarray:
        """The frame's grey levels at the working width (float32), which callers may reuse (a scene thumbnail)."""
        h, w = image.shape[:2]
        sw = min(self.width, w)
        sh = max(8, int(round(h * sw / w)))
        if sw == w:
            return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)
        return cv2.cvtColor(cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY).astype(
            np.float32
        )

    def __call__(self, image: np.ndarray, thumbnail: np.ndarray | None = None) -> np.ndarray:
        """The field of view at ``image``'s size (H x W uint8 0/1), after taking ``image`` into the maximum.
        ``thumbnail``: its grey_thumbnail, when the caller has it already."""
        h, w = image.shape[:2]
        grey = self.grey_thumbnail(image) if thumbnail is None else thumbnail
        if self.peak is None or self.peak.shape != grey.shape or self.area is None or self.area.shape != (h, w):
            self.peak, self.area, self.since, self.seen = grey.copy(), None, 0, 0
        else:
            np.maximum(self.peak * self.decay, grey, out=self.peak)
        self.since += 1
        self.seen += 1
        # on every frame at first, while each new frame still fills out much of the field
        if self.area is None or self.since >= self.every or self.seen <= self.every:
            peak = self.peak.astype(np.uint8)
            area = content_area(cv2.merge([peak, peak, peak]))
            # picture-in-picture boxes, found on this frame (in the maximum a box's edges fade under the tissue's),
            # and those found before whose edges are still where they were (a corner is not found on every frame)
            grey8 = grey.astype(np.uint8)
            found = picture_in_picture(grey8, area)
            self.pip = found + [
                b for b in self.pip if not any(_overlap(b, f) for f in found) and still_framed(grey8, area, b)
            ]
            area = cut_boxes(area, self.pip)
            if area.shape != (h, w):
                area = (cv2.resize(area * 255, (w, h), interpolation=cv2.INTER_LINEAR) >= 128).astype(np.uint8)
            self.area, self.since = area, 0
        return self.area
