"""Evaluation figures: Dice histogram, threshold-vs-Dice curve, gallery of the worst images with contours."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from core.files import atomic_write


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, svg: bool = False) -> None:
    """PNG at ``path``; with svg, also the vector figure beside it (a paper's figures), with no date in it."""
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight")
    if svg:
        with atomic_write(path.with_suffix(".svg")) as tmp:
            fig.savefig(tmp, format="svg", bbox_inches="tight", metadata={"Date": None})


def dice_histogram(path: Path, per_image: Sequence[dict[str, Any]], title: str) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist([r["dice"] for r in per_image], bins=20, range=(0, 1), color="tab:blue", edgecolor="white")
    ax.set_xlabel("Dice at threshold 0.5")
    ax.set_ylabel("images")
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def threshold_curve(path: Path, dice_curve: Sequence[float], title: str) -> None:
    """dice_curve: mean Dice at thresholds 0/255 .. 255/255 (ascending)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.2))
    t = np.linspace(0, 1, len(dice_curve))
    ax.plot(t, dice_curve)
    ax.set_xlabel("threshold on the min-max normalised map")
    ax.set_ylabel("mean Dice")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    _save(fig, path)
    plt.close(fig)


def worst_gallery(
    path: Path, per_image: Sequence[dict[str, Any]], load: Callable[[str], tuple], n: int = 8, title: str = ""
) -> None:
    """The n lowest-Dice images; truth contour green, prediction (p >= 0.5) contour magenta.

    load(name) -> (image H x W x 3 uint8 RGB, gt H x W bool, prob H x W uint8).
    """
    plt = pyplot()
    worst = sorted(per_image, key=lambda r: r["dice"])[:n]
    cols = 4
    rows = max(1, (len(worst) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows))
    for ax in np.atleast_1d(axes).ravel():
        ax.axis("off")
    for ax, r in zip(np.atleast_1d(axes).ravel(), worst):
        image, gt, prob = load(r["name"])
        canvas = image.copy()
        for mask, colour in ((gt, (0, 255, 0)), (prob >= 128, (255, 0, 255))):
            cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(canvas, cs, -1, colour, max(2, image.shape[0] // 150))
        ax.imshow(canvas)
        ax.set_title(f"{r['name'].split('/')[-1][:18]}  Dice {r['dice']:.2f}", fontsize=8)
    fig.suptitle(f"{title}: worst {len(worst)} (green truth, magenta prediction)", fontsize=10)
    _save(fig, path)
    plt.close(fig)


def reliability_diagram(
    path: Path, curves: dict[str, Sequence[dict[str, Any]]], title: str, *, svg: bool = False
) -> None:
    """curves: label -> reliability bins (metrics.grading.reliability_bins). Accuracy vs confidence per bin, the
    diagonal is perfect calibration; marker size grows with the bin's count."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect calibration")
    for label, bins in curves.items():
        pts = [(b["confidence"], b["accuracy"], b["n"]) for b in bins if b["n"]]
        if pts:
            c, a, n = zip(*pts)
            ax.plot(c, a, marker="o", lw=1.2, label=label, markersize=3)
            ax.scatter(c, a, s=[8 + 60 * x / max(n) for x in n], alpha=0.4)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    _save(fig, path, svg)
    plt.close(fig)


def decision_curves(path: Path, curves: dict[str, dict[str, Any]], title: str) -> None:
    """Net benefit against threshold probability (Vickers & Elkin 2006) for each variant, with 'treat all' and
    'treat none'; curves: label -> metrics.stats.decision_curve output. PNG and SVG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6))
    first = next(iter(curves.values()))
    ax.plot(first["threshold"], first["treat_all"], color="grey", lw=1, ls="--", label="treat all")
    ax.axhline(0.0, color="black", lw=1, label="treat none")
    for label, c in curves.items():
        ax.plot(c["threshold"], c["model"], lw=1.4, label=label)
    top = max(float(np.nanmax(c["model"])) for c in curves.values())
    ax.set_ylim(-0.05, max(0.05, top * 1.15))
    ax.set_xlabel("threshold probability")
    ax.set_ylabel("net benefit")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path, svg=True)
    plt.close(fig)
