"""Endoscopy-like synthetic frames with masks and per-head labels, for tests and the smoke experiment.

NOT clinical data. The labels are defined by how each frame was drawn (a fibrosis grade adds white web-like or
muscle-like streaks to the lesion; lift follows the grade with noise), so a head can learn them and the training
and evaluation mechanics can be proven; nothing learned here says anything about real fibrosis.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.files import write_csv_atomic, write_image_atomic

FIBROSIS_CLASSES = ("F0", "F1", "F2")
LIFT_CLASSES = ("adequate", "partial", "non-lifting")


def content_disc(h: int, w: int) -> np.ndarray:
    """H x W uint8 0/1: the endoscope's octagon-ish content area (the rest is black border)."""
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx, r = h / 2, w / 2, 0.56 * max(h, w)
    inside = ((yy - cy) ** 2 + (xx - cx) ** 2) <= r**2
    cut = (np.abs(yy - cy) + np.abs(xx - cx)) <= 0.85 * (h + w) / 2  # clip the corners: octagonal scope mask
    return (inside & cut).astype(np.uint8)


COVARIATES = ("prior_radiotherapy", "weeks_since_rt", "dose_gy", "distance_av_cm", "prior_attempt", "lesion_size_mm")
BLUE = np.array([70, 110, 200], np.float32)  # indigo-carmine-stained injection cushion


def synthetic_case(rng: np.random.Generator, missing_rate: float = 0.1) -> dict[str, Any]:
    """One patient: fibrosis grade, lift outcome and covariates known before resection, drawn so that prior pelvic
    radiotherapy raises the chance of severe fibrosis and fibrosis makes non-lifting likelier (as in the clinical
    literature, in direction only: the numbers are invented). Covariates are missing (NaN) at ``missing_rate``."""
    rt = int(rng.random() < 0.5)
    grade = int(rng.choice(3, p=[0.2, 0.35, 0.45] if rt else [0.6, 0.3, 0.1]))
    lift = int(np.clip(grade + rng.choice([-1, 0, 1], p=[0.15, 0.7, 0.15]), 0, 2))
    cov = {
        "prior_radiotherapy": float(rt),
        "weeks_since_rt": float(rng.uniform(6, 20)) if rt else float("nan"),
        "dose_gy": float(rng.choice([25.0, 50.4])) if rt else 0.0,
        "distance_av_cm": float(rng.uniform(1, 10)),
        "prior_attempt": float(rng.random() < 0.15 + 0.2 * (grade == 2)),
        "lesion_size_mm": float(rng.uniform(10, 50)),
    }
    cov = {k: (float("nan") if rng.random() < missing_rate else v) for k, v in cov.items()}
    return {"fibrosis": grade, "lift": lift, "covariates": cov, "scale": float(rng.uniform(0.14, 0.26))}


def synthetic_frame(
    rng: np.random.Generator,
    size: tuple[int, int] = (96, 128),
    fibrosis: int | None = None,
    with_lesion: bool = True,
    lift: int | None = None,
    scale: float | None = None,
    blur: bool = False,
) -> dict[str, Any]:
    """One frame: pink mucosa with vessels and vignetting, a reddish lesion blob, a black scope border.

    What the labels change (so that heads can learn them; NOT clinical appearance, a drawing convention):
    fibrosis F1 adds thin white web-like streaks over the lesion, F2 broad white muscle-like bands; lift draws the
    blue injection cushion: adequate = a blue rim all around and under the lesion, partial = a crescent on one
    side, non-lifting = blue pooled away from the lesion with none beside it. ``blur`` makes an uninformative frame.
    Returns {"image": HxWx3 uint8 RGB, "mask": HxW uint8 0/1, "labels": {"fibrosis": int, "lift": int}}.
    """
    h, w = size
    base = np.array([200, 110, 100], np.float32) + rng.normal(0, 12, 3)
    img = np.ones((h, w, 3), np.float32) * base
    img += rng.normal(0, 6, (h, w, 1)) * np.array([1.0, 0.7, 0.7])
    for _ in range(int(rng.integers(3, 8))):  # vessels
        pts = (rng.random((4, 2)) * [w, h]).astype(np.int32)
        cv2.polylines(img, [pts], False, (150, 50, 60), int(rng.integers(1, 3)))
    grade = int(rng.integers(0, 3)) if fibrosis is None else int(fibrosis)
    # lift follows fibrosis (F0 mostly adequate, F2 mostly non-lifting), with 10% label noise
    if lift is None:
        lift = grade if rng.random() > 0.1 else int(rng.integers(0, 3))
    mask = np.zeros((h, w), np.uint8)
    if with_lesion:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        sc = scale if scale is not None else rng.uniform(0.12, 0.28)
        ay, ax = sc * h * rng.uniform(0.85, 1.15), sc * w * rng.uniform(0.85, 1.15)
        angle = float(rng.uniform(0, 180))
        centre, axes = (int(cx), int(cy)), (int(ax), int(ay))
        cushion = np.zeros((h, w), np.uint8)
        if lift == 0:
            cv2.ellipse(cushion, centre, (int(ax * 1.45), int(ay * 1.45)), angle, 0, 360, 1, -1)
        elif lift == 1:
            start = float(rng.uniform(0, 360))
            cv2.ellipse(cushion, centre, (int(ax * 1.45), int(ay * 1.45)), angle, start, start + 150, 1, -1)
        else:
            for _ in range(2):
                d = rng.uniform(2.0, 2.6)
                t = rng.uniform(0, 2 * np.pi)
                c2 = (int(cx + d * ax * np.cos(t)), int(cy + d * ay * np.sin(t)))
                cv2.circle(cushion, c2, int(max(2, 0.5 * min(ax, ay))), 1, -1)
        img = np.where(cushion[:, :, None] > 0, BLUE + rng.normal(0, 8, 3), img)
        cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
        lesion = np.array([170, 60, 55], np.float32) + rng.normal(0, 10, 3)
        tex = rng.normal(0, 10, (h, w, 1))
        img = np.where(mask[:, :, None] > 0, lesion + tex, img)
    if with_lesion and grade > 0:  # F1: thin white web; F2: broad white muscle-like bands
        streaks = np.zeros((h, w), np.uint8)
        n, thick = (6, 1) if grade == 1 else (4, max(3, h // 24))
        ys, xs = np.nonzero(mask)
        for _ in range(n):
            i, j = rng.integers(0, len(ys), 2)
            cv2.line(streaks, (int(xs[i]), int(ys[i])), (int(xs[j]), int(ys[j])), 1, thick)
        streaks &= mask
        img = np.where(streaks[:, :, None] > 0, np.array([235, 225, 220], np.float32), img)
    yy, xx = np.mgrid[0:h, 0:w]
    vignette = 1.0 - 0.45 * (((yy - h / 2) / h) ** 2 + ((xx - w / 2) / w) ** 2) * 2
    img = img * vignette[:, :, None]
    img = cv2.GaussianBlur(img, (3, 3), 0) if not blur else cv2.GaussianBlur(img, (0, 0), max(h, w) / 25)
    disc = content_disc(h, w)
    img = np.clip(img, 0, 255).astype(np.uint8) * disc[:, :, None]
    return {"image": img, "mask": mask * disc, "labels": {"fibrosis": grade, "lift": lift}}


def ensure_synthetic_dataset(
    root: str | Path,
    n: int = 32,
    size: tuple[int, int] | list[int] = (96, 128),
    seed: int = 0,
    n_groups: int = 8,
    label_level: str = "frame",
    hidden_fraction: float = 0.0,
    uninformative_rate: float = 0.0,
) -> Path:
    """Write (once) ``n`` synthetic frames of ``n_groups`` cases under ``root/<fingerprint>/``; return the manifest.

    ``manifest.csv``: image, mask, group (+ fibrosis, lift per frame when label_level is "frame").
    ``cases.csv``: group, clinical covariates (COVARIATES) and, when label_level is "case", fibrosis and lift per
    case, left empty (unknown) for ``hidden_fraction`` of the cases. ``uninformative_rate`` of the frames show no
    lesion or are blurred (they still carry their case's label). Regenerated only when the parameters change.
    """
    size = (int(size[0]), int(size[1]))
    key = hashlib.sha1(
        f"{n}-{size}-{seed}-{n_groups}-{label_level}-{hidden_fraction}-{uninformative_rate}-v2".encode()
    ).hexdigest()[:10]
    folder = Path(root) / f"synthetic-{key}"
    manifest = folder / "manifest.csv"
    if manifest.is_file():
        return manifest
    rng = np.random.default_rng(seed)
    cases = [synthetic_case(rng) for _ in range(n_groups)]
    hidden = set(rng.permutation(n_groups)[: int(round(hidden_fraction * n_groups))].tolist())
    rows = []
    for i in range(n):
        g = i % n_groups
        case = cases[g]
        odd = rng.random() < uninformative_rate
        blank = odd and rng.random() < 0.5
        s = synthetic_frame(
            rng,
            size,
            fibrosis=case["fibrosis"],
            lift=case["lift"],
            scale=case["scale"],
            with_lesion=not blank,
            blur=odd and not blank,
        )
        write_image_atomic(folder / "images" / f"{i:05d}.png", s["image"])
        write_image_atomic(folder / "masks" / f"{i:05d}.png", s["mask"] * 255)
        row = {"image": f"images/{i:05d}.png", "mask": f"masks/{i:05d}.png", "group": f"case{g:03d}"}
        if label_level == "frame":
            row.update(fibrosis=FIBROSIS_CLASSES[s["labels"]["fibrosis"]], lift=LIFT_CLASSES[s["labels"]["lift"]])
        rows.append(row)
    case_rows = []
    for g, case in enumerate(cases):
        row = {"group": f"case{g:03d}"}
        if label_level == "case":
            known = g not in hidden
            row.update(
                fibrosis=FIBROSIS_CLASSES[case["fibrosis"]] if known else "",
                lift=LIFT_CLASSES[case["lift"]] if known else "",
            )
        row.update({k: "" if np.isnan(v) else round(v, 2) for k, v in case["covariates"].items()})
        case_rows.append(row)
    write_csv_atomic(folder / "cases.csv", case_rows)
    write_csv_atomic(manifest, rows)  # last: its presence means the dataset is complete
    return manifest
