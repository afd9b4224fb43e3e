"""The mask encodings of annotation tools' exports, decoded at the image's real size: COCO polygons and RLE (plain
and compressed, through pycocotools), Label Studio's brush RLE and its polygons in percent. Each decoder checks
what pycocotools or the export would get wrong silently (runs that do not cover the image, far-off vertices,
a value count that does not match the image) and raises a UserError naming where in the export it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as coco_mask

from core.errors import UserError
from data.annotation_frames import need_field


def polygon_mask(parts: list, h: int, w: int, where: str) -> np.ndarray:
    """COCO-style polygons (one object may have several parts: [[x0, y0, x1, y1, ...], ...]) rasterised by
    pycocotools, so COCO and Label Studio polygons follow one rule."""
    for p in parts:
        if not isinstance(p, list) or not all(isinstance(c, (int, float)) for c in p) or len(p) % 2:
            raise UserError(f"{where}: a polygon must be a flat list of x, y numbers")
        if len(p) < 6:
            raise UserError(f"{where}: polygon has {len(p) // 2} points, needs at least 3 (fix or delete it)")
        try:
            xs, ys = np.asarray(p[0::2], float), np.asarray(p[1::2], float)
        except OverflowError:  # an integer beyond float's range
            xs = ys = np.array([np.inf])
        # a non-finite or far-away vertex makes pycocotools allocate without bound or crash: refuse it here
        if not (
            np.isfinite(xs).all()
            and np.isfinite(ys).all()
            and (np.abs(xs) <= 2 * w).all()
            and (np.abs(ys) <= 2 * h).all()
        ):
            raise UserError(f"{where}: polygon coordinate outside the {w}x{h} image (NaN, infinite or far off)")
    return coco_mask.decode(coco_mask.merge(coco_mask.frPyObjects(parts, h, w))).astype(bool)


def coco_rle_counts(text: str) -> list[int]:
    """The run lengths of a compressed COCO RLE string (pycocotools' 6-bit variable-length code, each count after
    the second stored as a difference to the one two before). Needed to check the runs cover the image exactly:
    pycocotools 2.0.11 rejects runs past the end but leaves the rest of a short mask uninitialised."""
    counts: list[int] = []
    i = 0
    while i < len(text):
        x = k = 0
        while True:
            if i >= len(text) or not 0 <= ord(text[i]) - 48 < 64:
                raise ValueError("bad character or truncated count")
            c = ord(text[i]) - 48
            x |= (c & 0x1F) << (5 * k)
            i, k = i + 1, k + 1
            if not c & 0x20:
                if c & 0x10:
                    x |= -1 << (5 * k)
                break
        counts.append(x + counts[-2] if len(counts) > 2 else x)
    return counts


def coco_segmentation_mask(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    if isinstance(seg, list):
        if not seg:
            raise UserError(f"{where}: empty segmentation (a box without an outline?): draw it as a polygon or mask")
        return polygon_mask(seg, h, w, where)
    if not isinstance(seg, dict):
        raise UserError(f"{where}: segmentation must be polygons or an RLE object")
    size, counts = need_field(seg, "size", where, list), need_field(seg, "counts", where, (list, str))
    if [s for s in size if isinstance(s, (int, float)) and not isinstance(s, bool)] != [h, w]:
        raise UserError(
            f"{where}: RLE size {size} [height, width] does not match the image ([{h}, {w}]): "
            "re-export the annotations for these very images"
        )
    try:
        runs = counts if isinstance(counts, list) else coco_rle_counts(counts)
    except ValueError as e:
        raise UserError(f"{where}: compressed RLE counts cannot be read ({e})") from None
    if not all(isinstance(c, int) and c >= 0 for c in runs) or sum(runs) != h * w:
        raise UserError(
            f"{where}: RLE runs cover {sum(r for r in runs if isinstance(r, int))} pixels, the "
            f"{w}x{h} image has {h * w} (a corrupt or foreign RLE): re-export it"
        )
    rle = (
        coco_mask.frPyObjects({"size": [h, w], "counts": runs}, h, w)
        if isinstance(counts, list)
        else {"size": [h, w], "counts": counts.encode()}
    )
    return coco_mask.decode(rle).astype(bool)


def ls_rle_decode(rle: Sequence[int], where: str = "brush", expected: int | None = None) -> np.ndarray:
    """Label Studio's brush RLE (the rle-pack bit stream of its front end) -> the flat array it encodes.

    Bits are read most significant first: a 32-bit value count, word size - 1 (5 bits), four run-length field sizes
    - 1 (4 bits each); then chunks of 1 flag bit (1 = one word repeated, 0 = literal words), 2 bits choosing a
    field size, the chunk length - 1 in that many bits, and the word (or the words). Brushes encode H x W x 4 RGBA.
    """
    try:
        bit_array = np.unpackbits(np.frombuffer(bytes(rle), np.uint8))
    except (TypeError, ValueError):
        raise UserError(f"{where}: brush 'rle' must be a list of byte values 0-255") from None
    bits = (bit_array + ord("0")).tobytes().decode()  # a '0'/'1' string: int(..., 2) reads the small fields fast
    pos = 0

    def take(n: int) -> int:
        nonlocal pos
        if pos + n > len(bits):
            raise UserError(f"{where}: brush RLE is truncated (re-export the project)")
        pos += n
        return pos - n

    def read(n: int) -> int:
        start = take(n)
        return int(bits[start : start + n], 2)

    num, word = read(32), read(5) + 1
    if expected is not None and num != expected:  # checked before allocating: the count is untrusted (up to 2**32)
        raise UserError(
            f"{where}: brush RLE holds {num} values, the image needs {expected} (RGBA): "
            "was the image replaced after annotation?"
        )
    sizes = [read(4) + 1 for _ in range(4)]
    weights = np.left_shift(1, np.arange(word - 1, -1, -1, dtype=np.uint64), dtype=np.uint64)
    out = np.zeros(num, np.uint64)
    i = 0
    while i < num:
        repeat = read(1)
        j = i + 1 + read(sizes[read(2)])
        if j > num:
            raise UserError(f"{where}: brush RLE runs past its {num} values (corrupt export)")
        if repeat:
            out[i:j] = read(word)
        else:  # literal words, read as one block: a painted region in a label colour is mostly literals
            start = take((j - i) * word)
            out[i:j] = bit_array[start:pos].reshape(j - i, word).astype(np.uint64) @ weights
        i = j
    return out


def ls_brush_mask(value: dict, h: int, w: int, where: str) -> np.ndarray:
    if value.get("format", "rle") != "rle":
        raise UserError(f"{where}: brush format {value.get('format')!r} is not 'rle'")
    flat = ls_rle_decode(need_field(value, "rle", where, list), f"{where} ({w}x{h} image)", expected=h * w * 4)
    return flat.reshape(h, w, 4)[:, :, 3] > 0  # alpha: every pixel the brush touched, as Label Studio's COCO export


def ls_polygon_mask(value: dict, h: int, w: int, where: str) -> np.ndarray:
    points = need_field(value, "points", where, list)
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) for c in p) for p in points):
        raise UserError(f"{where}: polygon points must be [x, y] pairs (percent of the image)")
    return polygon_mask([[c for x, y in points for c in (x * w / 100, y * h / 100)]], h, w, where)
