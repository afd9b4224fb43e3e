"""Endoscopy-like synthetic frames with masks and per-head labels, for tests and the smoke experiment.

NOT clinical data. The labels are defined by how each frame was drawn (a fibrosis grade adds white web-like or
muscle-like streaks to the lesion; lift follows the grade with noise), so a head can learn them and the training
and evaluation mechanics can be proven; nothing learned here says anything about real fibrosis.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from data.io import atomic_write, write_image_atomic

FIBROSIS_CLASSES = ("F0", "F1", "F2")
LIFT_CLASSES = ("adequate", "partial", "non-lifting")


def content_disc(h: int, w: int) -> np.ndarray:
    """H x W uint8 0/1: the endoscope's octagon-ish content area (the rest is black border)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = h / 2, w / 2, 0.56 * max(h, w)
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2
    cut = (np.abs(yy - cy) + np.abs(xx - cx)) <= 0.85 * (h + w) / 2  # clip the corners: octagonal scope mask
    return (inside & cut).astype(np.uint8)


def synthetic_frame(rng: np.random.Generator, size: tuple[int, int] = (96, 128), fibrosis: int | None = None,
                    with_lesion: bool = True) -> dict[str, Any]:
    """One frame: pink mucosa with vessels and vignetting, a reddish lesion blob, a black scope border.

    Returns {"image": HxWx3 uint8 RGB, "mask": HxW uint8 0/1, "labels": {"fibrosis": int, "lift": int}}.
    """
    h, w = size
    base = np.array([200, 110, 100], np.float32) + rng.normal(0, 12, 3)
    img = np.ones((h, w, 3), np.float32) * base
    img += rng.normal(0, 6, (h, w, 1)) * np.array([1.0, 0.7, 0.7])
    for _ in range(int(rng.integers(3, 8))):  # vessels
        pts = (rng.random((4, 2)) * [w, h]).astype(np.int32)
        cv2.polylines(img, [pts], False, (150, 50, 60), int(rng.integers(1, 3)))
    mask = np.zeros((h, w), np.uint8)
    if with_lesion:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        ay, ax = rng.uniform(0.12, 0.28) * h, rng.uniform(0.12, 0.28) * w
        cv2.ellipse(mask, (int(cx), int(cy)), (int(ax), int(ay)), float(rng.uniform(0, 180)), 0, 360, 1, -1)
        lesion = np.array([170, 60, 55], np.float32) + rng.normal(0, 10, 3)
        tex = rng.normal(0, 10, (h, w, 1))
        img = np.where(mask[:, :, None] > 0, lesion + tex, img)
    grade = int(rng.integers(0, 3)) if fibrosis is None else int(fibrosis)
    if with_lesion and grade > 0:  # F1: thin white web; F2: broad white muscle-like bands
        streaks = np.zeros((h, w), np.uint8)
        n, thick = (6, 1) if grade == 1 else (4, max(3, h // 24))
        ys, xs = np.nonzero(mask)
        for _ in range(n):
            i, j = rng.integers(0, len(ys), 2)
            cv2.line(streaks, (int(xs[i]), int(ys[i])), (int(xs[j]), int(ys[j])), 1, thick)
        streaks &= mask
        img = np.where(streaks[:, :, None] > 0, np.array([235, 225, 220], np.float32), img)
    # lift follows fibrosis (F0 mostly adequate, F2 mostly non-lifting), with 10% label noise
    lift = grade if rng.random() > 0.1 else int(rng.integers(0, 3))
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.45 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 2
    img = img * vignette[:, :, None]
    img = cv2.GaussianBlur(img, (3, 3), 0)
    disc = content_disc(h, w)
    img = np.clip(img, 0, 255).astype(np.uint8) * disc[:, :, None]
    return {"image": img, "mask": mask * disc, "labels": {"fibrosis": grade, "lift": lift}}


def ensure_synthetic_dataset(root: str | Path, n: int = 32, size: tuple[int, int] | list[int] = (96, 128),
                             seed: int = 0, n_groups: int = 8) -> Path:
    """Write (once) ``n`` synthetic frames under ``root/<fingerprint>/`` with a CSV manifest; return its path.

    Manifest columns: image, mask, fibrosis, lift, group. Regenerated only when the parameters change.
    """
    size = (int(size[0]), int(size[1]))
    key = hashlib.sha1(f"{n}-{size}-{seed}-{n_groups}-v1".encode()).hexdigest()[:10]
    folder = Path(root) / f"synthetic-{key}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s = synthetic_frame(rng, size)
        write_image_atomic(folder / "images" / f"{i:05d}.png", s["image"])
        write_image_atomic(folder / "masks" / f"{i:05d}.png", s["mask"] * 255)
        rows.append({"image": f"images/{i:05d}.png", "mask": f"masks/{i:05d}.png",
                     "fibrosis": FIBROSIS_CLASSES[s["labels"]["fibrosis"]], "lift": LIFT_CLASSES[s["labels"]["lift"]],
                     "group": f"case{i % n_groups:03d}"})
    with atomic_write(manifest) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest
