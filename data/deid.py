"""De-identification of endoscopy pictures: burned-in text filled wherever it is, the scope's surround blacked out,
names replaced by keyed pseudonyms.

Text is found by data.text_detection (a scene-text detector, and in video a static-overlay mask). Every text box is
filled with one flat colour, never blurred (blurred large text can stay legible), in every picture written;
everything outside the field of view is filled black, so the detector looks only inside the field's box.

In video the detector runs on the first frame, every ``every`` frames and at scene changes; its boxes persist
between runs (a box is dropped only when two runs in a row no longer find it), and the static-overlay mask adds
static strokes the detector missed, on every frame, for the cost of an array fill. The field of view is followed
over frames (data.scope.FieldOfView): one frame's bright region loses dark tissue at the rim, the maximum over
recent frames does not.

Fail closed: on every frame the detector runs on, it runs again on the redacted picture (residual_text). Text it
finds there is filled and the picture checked again; a frame on which text is still found after that is counted
and named (``Redactor.stats``), and infer.py reports it (summary.json, the report's banner, exit code 2 unless
review.deid_check=warn). Frames between detector runs are covered by the persisting boxes and the static mask but
are not checked one by one: the summary says how many were checked.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.text_detection import DETECTOR_NAME, StaticOverlay, TextDetector, residual_text

# --- filling ----------------------------------------------------------------------------------------------------------


def box_mask(shape: tuple[int, int], boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """H x W uint8 0/1: the union of the boxes."""
    m = np.zeros(shape, np.uint8)
    for x0, y0, x1, y1 in boxes:
        m[y0:y1, x0:x1] = 1
    return m


def keep_bytes(keep: np.ndarray) -> np.ndarray:
    """H x W 0/1 -> H x W x 3 0/255, the mask redacted_copy ANDs a picture with."""
    k = (keep > 0).astype(np.uint8) * 255
    return cv2.merge([k, k, k])


def redacted_copy(
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


# --- the redactor -----------------------------------------------------------------------------------------------------


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

    def _field_of_view(self, image: np.ndarray, grey: np.ndarray | None, look: bool) -> np.ndarray:
        """The field of view: for a video followed on every frame (data.scope.FieldOfView: a few milliseconds);
        otherwise found again when the detector runs (``look``)."""
        from data.scope import content_area, cut_boxes, picture_in_picture

        h, w = image.shape[:2]
        if grey is not None:
            return self.fov(image, grey)
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
        grey = self.fov.grey_thumbnail(image) if video and self.surround else None  # also the scene thumbnail's source
        thumb = cv2.resize(
            grey if grey is not None else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY),
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
        self.area = self._field_of_view(image, grey, run or scene)
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
        out = redacted_copy(image, None, boxes, keep=keep)
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
                out = redacted_copy(image, None, boxes, keep=keep)
        self.stats.hidden_in_view += self._view_filled(boxes, (h, w))
        return out

    def _keep(self) -> np.ndarray:
        """The field as redacted_copy's byte mask, made again only when the field changes."""
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


# --- names ------------------------------------------------------------------------------------------------------------

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
