"""Readers of annotation tools' exports (COCO, CVAT "Segmentation mask 1.1", Label Studio) -> frames with their
objects, and the exports' mask encodings (COCO polygons and RLE through pycocotools, Label Studio's brush RLE).

Every reader returns (category names, frames); objects are drawn only once the image's real size is known, and any
problem raises a UserError naming the file. ``data.convert`` turns the frames into endolift's dataset layout.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np
from pycocotools import mask as coco_mask

from core.errors import UserError
from data.io import IMAGE_EXTS


@dataclass
class Shape:
    """One annotated object: its category names, its attributes, and ``draw(h, w)`` -> bool H x W mask, called
    once the image's real size is known (a size the export declares is checked against it, not trusted)."""

    categories: tuple[str, ...]
    draw: Callable[[int, int], np.ndarray]
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Frame:
    """One image as the export describes it. ``name`` is its path relative to the image folder (checked, and kept
    in the output); ``where`` says where it sits in the export, for error messages."""

    name: str
    image: Path
    where: str
    shapes: list[Shape]
    attrs: Mapping[str, Any] = field(default_factory=dict)
    size: tuple[int, int] | None = None  # (height, width) the export declares


# --- shared checks ------------------------------------------------------------------------------------------------


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): re-export it") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (is it the JSON export?)") from None


def _need(obj: Any, key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise UserError(f"{where}: missing '{key}' (the export is incomplete or not this format)")
    if not isinstance(obj[key], kind):
        raise UserError(f"{where}: '{key}' has the wrong type ({type(obj[key]).__name__})")
    return obj[key]


def safe_name(name: Any, where: str, inside: str = "the image folder") -> str:
    """An export's file name as a relative POSIX path; absolute paths, drive letters and '..' are refused because
    the name decides where a file is read from and written to."""
    text = str(name).replace("\\", "/")
    path = PurePosixPath(text)
    if not text.strip() or path.is_absolute() or re.match(r"^[A-Za-z]:", text) or ".." in path.parts or "\0" in text:
        raise UserError(
            f"{where}: file name {str(name)!r} must be a relative path inside {inside} "
            "(no absolute path, no '..'): fix the name in the export"
        )
    return path.as_posix()


def _find_image(names: Sequence[str], dirs: Sequence[Path], where: str) -> tuple[str, Path]:
    """The first of ``names`` (already checked by safe_name) that exists in one of ``dirs``, in that order."""
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return n, d / n
    raise UserError(
        f"{where}: image {names[0]!r} not found in {', '.join(map(str, dirs)) or 'any folder'} "
        "(pass --images with the folder holding the frames)"
    )


def _polygon(parts: list, h: int, w: int, where: str) -> np.ndarray:
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


def _coco_segmentation(seg: Any, h: int, w: int, where: str) -> np.ndarray:
    if isinstance(seg, list):
        if not seg:
            raise UserError(f"{where}: empty segmentation (a box without an outline?): draw it as a polygon or mask")
        return _polygon(seg, h, w, where)
    if not isinstance(seg, dict):
        raise UserError(f"{where}: segmentation must be polygons or an RLE object")
    size, counts = _need(seg, "size", where, list), _need(seg, "counts", where, (list, str))
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


# --- readers: export -> (category names, frames) ------------------------------------------------------------------


def _scalars(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}


def read_coco(path: Path, image_dirs: Sequence[Path], notes: list[str]) -> tuple[set[str], Iterable[Frame]]:
    """COCO instances / stuff JSON. Frame attributes: the image's own fields and its ``attributes``; object
    attributes: the annotation's ``attributes`` (as CVAT's and other tools' COCO exports write them)."""
    data = _load_json(path)
    where = str(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a COCO JSON (an object with images, annotations, categories)")
    images, anns, cats = (_need(data, k, where, list) for k in ("images", "annotations", "categories"))
    names = {}
    for i, c in enumerate(cats):
        cid = _need(c, "id", f"{path}: categories[{i}]", (int, str))
        if cid in names:
            raise UserError(f"{path}: categories[{i}]: id {cid} is used twice (give every category its own id)")
        names[cid] = str(_need(c, "name", f"{path}: categories[{i}]"))
    by_id: dict[Any, dict] = {}
    for i, im in enumerate(images):
        w = f"{path}: images[{i}]"
        iid = _need(im, "id", w, (int, str))
        if iid in by_id:
            raise UserError(f"{w}: image id {iid} appears twice")
        safe_name(_need(im, "file_name", w), w)
        if not isinstance(im.get("attributes", {}), dict):
            raise UserError(f"{w}: 'attributes' must be an object")
        by_id[iid] = im
    shapes: dict[Any, list[Shape]] = defaultdict(list)
    for i, a in enumerate(anns):
        w = f"{path}: annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
        iid, cid = _need(a, "image_id", w, (int, str)), _need(a, "category_id", w, (int, str))
        if iid not in by_id:
            raise UserError(f"{w}: image_id {iid} is not in 'images' (remove the annotation or add its image)")
        if cid not in names:
            raise UserError(f"{w}: category_id {cid} is not in 'categories'")
        attrs = a.get("attributes", {})
        if not isinstance(attrs, dict):
            raise UserError(f"{w}: 'attributes' must be an object")
        w += f" of {by_id[iid]['file_name']!r}"
        shapes[iid].append(
            Shape((names[cid],), partial(_coco_segmentation, _need(a, "segmentation", w), where=w), attrs)
        )

    def frames() -> Iterable[Frame]:
        for iid, im in by_id.items():
            w = f"{path}: image {im['file_name']!r} (id {iid})"
            name, file = _find_image([safe_name(im["file_name"], w)], image_dirs, w)
            declared = (im.get("height"), im.get("width"))
            size = declared if all(isinstance(v, int) for v in declared) else None
            yield Frame(name, file, w, shapes[iid], _scalars(im) | im.get("attributes", {}), size)

    return set(names.values()), frames()


def _read_colour_png(path: Path, where: str) -> np.ndarray:
    """A CVAT mask PNG (palette or RGB) as H x W int32 colour codes r << 16 | g << 8 | b."""
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
    if arr is None:
        raise UserError(f"{where}: mask {path} is missing or unreadable (re-export the task)")
    arr = arr.astype(np.int32)
    return arr[:, :, 2] << 16 | arr[:, :, 1] << 8 | arr[:, :, 0]


def read_cvat_mask(root: Path, image_dirs: Sequence[Path], notes: list[str]) -> tuple[set[str], Iterable[Frame]]:
    """CVAT "Segmentation mask 1.1": class colours from labelmap.txt; one object per SegmentationObject colour,
    its category the class colour under most of it (the format carries no attributes)."""
    lists = sorted((root / "ImageSets" / "Segmentation").glob("*.txt"))
    if not lists or not (root / "SegmentationClass").is_dir():
        raise UserError(
            f"{root}: not a CVAT 'Segmentation mask 1.1' export (ImageSets/Segmentation/*.txt and "
            "SegmentationClass/ are missing): export the task in that format"
        )
    labelmap = root / "labelmap.txt"
    if not labelmap.is_file():
        raise UserError(f"{labelmap}: missing (CVAT writes it with the export: re-export the task)")
    colours: dict[int, str] = {}
    for n, line in enumerate(labelmap.read_text(encoding="utf-8-sig").splitlines(), 1):
        if line.strip() and not line.startswith("#"):
            try:
                name, rgb = line.split(":")[:2]
                r, g, b = (int(v) for v in rgb.split(","))
            except ValueError:
                raise UserError(f"{labelmap}:{n}: expected 'label:r,g,b::', got {line!r}") from None
            colours[r << 16 | g << 8 | b] = name.strip()
    # the "background" label, and black (unpainted) unless a label claims it
    background = {c for c, n in colours.items() if n == "background"} | ({0} - set(colours))
    lines = (s.strip() for f in lists for s in f.read_text(encoding="utf-8-sig").splitlines())
    names = list(dict.fromkeys(s for s in lines if s))

    def frames() -> Iterable[Frame]:
        for stem in names:
            where = f"{root}: ImageSets/Segmentation '{stem}'"
            stem = safe_name(stem, where)
            cls = _read_colour_png(root / "SegmentationClass" / f"{stem}.png", where)
            unknown = sorted(set(np.unique(cls).tolist()) - set(colours) - background)
            if unknown:
                c = unknown[0]
                raise UserError(
                    f"{root / 'SegmentationClass' / stem}.png: colour {(c >> 16, c >> 8 & 255, c & 255)}"
                    " is not in labelmap.txt (was the mask resized or saved as JPEG? re-export it)"
                )
            obj_path = root / "SegmentationObject" / f"{stem}.png"
            if obj_path.is_file():
                obj = _read_colour_png(obj_path, where)
                if obj.shape != cls.shape:
                    raise UserError(f"{obj_path}: size differs from its SegmentationClass mask (re-export the task)")
                parts = []
                for o in np.unique(obj[obj != 0]):
                    under, n = np.unique(cls[obj == o], return_counts=True)
                    parts.append((obj == o, int(under[n.argmax()])))
            else:
                parts = [(cls == c, int(c)) for c in np.unique(cls)]
            shapes = [Shape((colours[c],), lambda h, w, m=m & (cls == c): m) for m, c in parts if c not in background]
            name, file = _find_image(
                [f"{stem}{e}" for e in IMAGE_EXTS + tuple(e.upper() for e in IMAGE_EXTS)], image_dirs, where
            )
            yield Frame(name, file, where, shapes, {}, cls.shape)

    return {n for c, n in colours.items() if c not in background}, frames()


def _ls_names(url: str, where: str) -> list[str]:
    """Where a Label Studio task's image may be under --images: local storage's ``?d=`` path, its file name, and
    that name without the ``1a2b3c4d-`` prefix Label Studio adds to uploaded files."""
    u = urlparse(url)
    d = parse_qs(u.query).get("d")
    rel = unquote(d[0]) if d else None
    base = PurePosixPath(rel or unquote(u.path)).name
    names = [rel, base, re.sub(r"^[0-9a-f]{8}-", "", base)]
    return [safe_name(n, where) for n in dict.fromkeys(n for n in names if n)]


def _ls_brush(value: dict, h: int, w: int, where: str) -> np.ndarray:
    if value.get("format", "rle") != "rle":
        raise UserError(f"{where}: brush format {value.get('format')!r} is not 'rle'")
    flat = ls_rle_decode(_need(value, "rle", where, list), f"{where} ({w}x{h} image)", expected=h * w * 4)
    return flat.reshape(h, w, 4)[:, :, 3] > 0  # alpha: every pixel the brush touched, as Label Studio's COCO export


def _ls_polygon(value: dict, h: int, w: int, where: str) -> np.ndarray:
    points = _need(value, "points", where, list)
    if not all(isinstance(p, list) and len(p) == 2 and all(isinstance(c, (int, float)) for c in p) for p in points):
        raise UserError(f"{where}: polygon points must be [x, y] pairs (percent of the image)")
    return _polygon([[c for x, y in points for c in (x * w / 100, y * h / 100)]], h, w, where)


def read_labelstudio(path: Path, image_dirs: Sequence[Path], notes: list[str]) -> tuple[set[str], Iterable[Frame]]:
    """Label Studio's JSON export (a list of tasks). Per task the submitted annotation (not cancelled; with several,
    the ground-truth one, else the latest) is read; predictions are not annotations and are ignored. Frame
    attributes: the task's ``data`` fields and its choices (by the Choices tag's name); per-region choices become
    the region's attributes. A task without a submitted annotation was never annotated and is left out."""
    tasks = _load_json(path)
    if not isinstance(tasks, list) or not all(isinstance(t, dict) and "data" in t for t in tasks):
        raise UserError(
            f"{path}: not a Label Studio JSON export (a list of tasks with 'data' and 'annotations'; "
            "JSON-MIN and CSV exports carry no masks): export the project as JSON"
        )
    categories: set[str] = set()
    out, skipped, several, other = [], 0, 0, Counter()
    for i, task in enumerate(tasks):
        where = f"{path}: task {task.get('id', f'[{i}]')}"
        anns = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
        if not anns:
            skipped += 1
            continue
        several += len(anns) > 1
        ann = max(anns, key=lambda a: (bool(a.get("ground_truth")), str(a.get("updated_at", "")), a.get("id") or 0))
        data = _need(task, "data", where, dict)
        url = data.get("image") or next(
            (v for v in data.values() if isinstance(v, str) and unquote(v).lower().endswith(IMAGE_EXTS)), None
        )
        if not isinstance(url, str):
            raise UserError(f"{where}: no image in its data (expected a field 'image' with the image's URL)")
        regions: dict[Any, Shape] = {}
        attrs, size = _scalars(data), None
        results = _need(ann, "result", f"{where} annotation {ann.get('id')}", list)
        for r in results:
            kind = str(r.get("type", "")).lower() if isinstance(r, dict) else ""
            if kind in ("brushlabels", "polygonlabels"):
                w = f"{where}: {kind} result {r.get('id')}"
                value = _need(r, "value", w, dict)
                labels = tuple(str(x) for x in _need(value, kind, w, list))
                categories.update(labels)
                draw = _ls_brush if kind == "brushlabels" else _ls_polygon
                regions[r.get("id") or len(regions)] = Shape(labels, partial(draw, value, where=w), {})
                if isinstance(r.get("original_height"), int) and isinstance(r.get("original_width"), int):
                    size = size or (r["original_height"], r["original_width"])
            elif kind != "choices":
                other[kind or "untyped"] += 1
        for r in results:  # choices after regions: a per-region choice shares its region's id
            if isinstance(r, dict) and str(r.get("type", "")).lower() == "choices":
                w = f"{where}: choices '{r.get('from_name')}'"
                chosen = _need(_need(r, "value", w, dict), "choices", w, list)
                if len(chosen) != 1:
                    raise UserError(f"{w}: {len(chosen)} choices {chosen}, a label takes exactly one")
                target = regions[r["id"]].attrs if r.get("id") in regions else attrs
                target[str(r.get("from_name"))] = chosen[0]
        names = _ls_names(url, where)
        name, file = _find_image(names, image_dirs, f"{where} ({url})")
        out.append(Frame(name, file, f"{where} ({name})", list(regions.values()), attrs, size))
    if skipped:
        notes.append(f"{skipped} Label Studio tasks have no submitted annotation and were left out")
    if several:
        notes.append(f"{several} tasks have several annotations: the ground-truth one was used, else the latest")
    if other:
        notes.append(f"results of other kinds were ignored (no lesion outline): {dict(other)}")
    return categories, out


READERS = {"coco": read_coco, "cvat-mask": read_cvat_mask, "labelstudio": read_labelstudio}
