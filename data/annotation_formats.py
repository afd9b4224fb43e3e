"""Readers of annotation tools' exports (COCO, CVAT "Segmentation mask 1.1", Label Studio) -> frames with their
objects (data.annotation_frames), their masks decoded by data.mask_encodings.

Every reader returns (category names, frames); objects are turned into masks only once the image's real size is
known, and any problem raises a UserError naming the file. ``data.convert`` turns the frames into endolift's
dataset layout.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

import cv2
import numpy as np

from core.errors import UserError
from data.annotation_frames import Frame, Shape, find_image, load_export_json, need_field, safe_name
from data.io import IMAGE_EXTS
from data.mask_encodings import coco_segmentation_mask, ls_brush_mask, ls_polygon_mask


def _scalars(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not isinstance(v, (dict, list))}


def read_coco(path: Path, image_dirs: Sequence[Path], notes: list[str]) -> tuple[set[str], Iterable[Frame]]:
    """COCO instances / stuff JSON. Frame attributes: the image's own fields and its ``attributes``; object
    attributes: the annotation's ``attributes`` (as CVAT's and other tools' COCO exports write them)."""
    data = load_export_json(path)
    where = str(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a COCO JSON (an object with images, annotations, categories)")
    images, anns, cats = (need_field(data, k, where, list) for k in ("images", "annotations", "categories"))
    names = {}
    for i, c in enumerate(cats):
        cid = need_field(c, "id", f"{path}: categories[{i}]", (int, str))
        if cid in names:
            raise UserError(f"{path}: categories[{i}]: id {cid} is used twice (give every category its own id)")
        names[cid] = str(need_field(c, "name", f"{path}: categories[{i}]"))
    by_id: dict[Any, dict] = {}
    for i, im in enumerate(images):
        w = f"{path}: images[{i}]"
        iid = need_field(im, "id", w, (int, str))
        if iid in by_id:
            raise UserError(f"{w}: image id {iid} appears twice")
        safe_name(need_field(im, "file_name", w), w)
        if not isinstance(im.get("attributes", {}), dict):
            raise UserError(f"{w}: 'attributes' must be an object")
        by_id[iid] = im
    shapes: dict[Any, list[Shape]] = defaultdict(list)
    for i, a in enumerate(anns):
        w = f"{path}: annotations[{i}] (id {a.get('id') if isinstance(a, dict) else '?'})"
        iid, cid = need_field(a, "image_id", w, (int, str)), need_field(a, "category_id", w, (int, str))
        if iid not in by_id:
            raise UserError(f"{w}: image_id {iid} is not in 'images' (remove the annotation or add its image)")
        if cid not in names:
            raise UserError(f"{w}: category_id {cid} is not in 'categories'")
        attrs = a.get("attributes", {})
        if not isinstance(attrs, dict):
            raise UserError(f"{w}: 'attributes' must be an object")
        w += f" of {by_id[iid]['file_name']!r}"
        shapes[iid].append(
            Shape((names[cid],), partial(coco_segmentation_mask, need_field(a, "segmentation", w), where=w), attrs)
        )

    def frames() -> Iterable[Frame]:
        for iid, im in by_id.items():
            w = f"{path}: image {im['file_name']!r} (id {iid})"
            name, file = find_image([safe_name(im["file_name"], w)], image_dirs, w)
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
            name, file = find_image(
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


def read_labelstudio(path: Path, image_dirs: Sequence[Path], notes: list[str]) -> tuple[set[str], Iterable[Frame]]:
    """Label Studio's JSON export (a list of tasks). Per task the submitted annotation (not cancelled; with several,
    the ground-truth one, else the latest) is read; predictions are not annotations and are ignored. Frame
    attributes: the task's ``data`` fields and its choices (by the Choices tag's name); per-region choices become
    the region's attributes. A task without a submitted annotation was never annotated and is left out."""
    tasks = load_export_json(path)
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
        data = need_field(task, "data", where, dict)
        url = data.get("image") or next(
            (v for v in data.values() if isinstance(v, str) and unquote(v).lower().endswith(IMAGE_EXTS)), None
        )
        if not isinstance(url, str):
            raise UserError(f"{where}: no image in its data (expected a field 'image' with the image's URL)")
        regions: dict[Any, Shape] = {}
        attrs, size = _scalars(data), None
        results = need_field(ann, "result", f"{where} annotation {ann.get('id')}", list)
        for r in results:
            kind = str(r.get("type", "")).lower() if isinstance(r, dict) else ""
            if kind in ("brushlabels", "polygonlabels"):
                w = f"{where}: {kind} result {r.get('id')}"
                value = need_field(r, "value", w, dict)
                labels = tuple(str(x) for x in need_field(value, kind, w, list))
                categories.update(labels)
                to_mask = ls_brush_mask if kind == "brushlabels" else ls_polygon_mask
                regions[r.get("id") or len(regions)] = Shape(labels, partial(to_mask, value, where=w), {})
                if isinstance(r.get("original_height"), int) and isinstance(r.get("original_width"), int):
                    size = size or (r["original_height"], r["original_width"])
            elif kind != "choices":
                other[kind or "untyped"] += 1
        for r in results:  # choices after regions: a per-region choice shares its region's id
            if isinstance(r, dict) and str(r.get("type", "")).lower() == "choices":
                w = f"{where}: choices '{r.get('from_name')}'"
                chosen = need_field(need_field(r, "value", w, dict), "choices", w, list)
                if len(chosen) != 1:
                    raise UserError(f"{w}: {len(chosen)} choices {chosen}, a label takes exactly one")
                target = regions[r["id"]].attrs if r.get("id") in regions else attrs
                target[str(r.get("from_name"))] = chosen[0]
        names = _ls_names(url, where)
        name, file = find_image(names, image_dirs, f"{where} ({url})")
        out.append(Frame(name, file, f"{where} ({name})", list(regions.values()), attrs, size))
    if skipped:
        notes.append(f"{skipped} Label Studio tasks have no submitted annotation and were left out")
    if several:
        notes.append(f"{several} tasks have several annotations: the ground-truth one was used, else the latest")
    if other:
        notes.append(f"results of other kinds were ignored (no lesion outline): {dict(other)}")
    return categories, out


READERS = {"coco": read_coco, "cvat-mask": read_cvat_mask, "labelstudio": read_labelstudio}
