"""Draw one overlay frame: a pure function of the frame and what the model said (docs/ARCHITECTURE.md, house rule 7)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

FILL = (0, 220, 120)  # RGB: lesion fill, translucent
EDGE = (255, 255, 0)  # RGB: lesion contour, crisp
TEXT = (255, 255, 255)


def timecode(seconds: float) -> str:
    m, s = divmod(round(max(0.0, seconds), 2), 60)  # rounded first: 59.996 s is 01:00.00, not 00:60.00
    return f"{int(m):02d}:{s:05.2f}"


def _text(img: np.ndarray, text: str, org: tuple[int, int], scale: float, colour=TEXT) -> None:
    th = max(1, int(round(scale * 2)))
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), th + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, th, cv2.LINE_AA)


def render_overlay(
    image: np.ndarray,
    mask: np.ndarray,
    *,
    lesion_prob: float,
    time_s: float | None = None,
    head_lines: Sequence[str] = (),
    alpha: float = 0.35,
    legend: bool = True,
) -> np.ndarray:
    """image: H x W x 3 uint8 RGB; mask: H x W 0/1. Returns a new H x W x 3 uint8 RGB frame.

    Draws a translucent fill and a crisp contour of the lesion, the lesion confidence, the time code, a legend,
    and ``head_lines`` (only pass head estimates that may be shown to a clinician).
    """
    out = image.copy()
    h, w = out.shape[:2]
    m8 = mask.astype(np.uint8, copy=False)
    x, y, bw, bh = cv2.boundingRect(m8)  # all the per-pixel work happens inside the lesions' box
    if bw and bh:
        roi = out[y : y + bh, x : x + bw]
        tinted = cv2.addWeighted(roi, 1 - alpha, np.full_like(roi, FILL), alpha, 0)
        np.copyto(roi, tinted, where=m8[y : y + bh, x : x + bw, None].astype(bool))
        contours, _ = cv2.findContours(
            m8[y : y + bh, x : x + bw], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE, offset=(x, y)
        )
        cv2.drawContours(out, contours, -1, EDGE, max(1, round(min(h, w) / 200)), cv2.LINE_AA)
    scale = max(0.35, min(h, w) / 700)
    line = int(28 * scale / 0.7)
    _text(out, f"lesion {lesion_prob:.2f}", (8, line), scale)
    for i, text in enumerate(head_lines):
        _text(out, text, (8, line * (i + 2)), scale)
    if time_s is not None:
        tc = timecode(time_s)
        (tw, _), _ = cv2.getTextSize(tc, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        _text(out, tc, (w - tw - 12, line), scale)
    if legend:
        y = h - int(12 * scale / 0.7)
        sw = int(14 * scale / 0.7)
        cv2.rectangle(out, (8, y - sw), (8 + sw, y), FILL, -1)
        cv2.rectangle(out, (8, y - sw), (8 + sw, y), EDGE, 1)
        _text(out, "lesion (model, p>=0.5) - research use", (14 + sw, y), scale * 0.8)
    return out
