"""The report's timeline, drawn in the page as inline SVG: lesion probability, lesion area, the model's reliability
when it was scored (its minimum over a run of frames, so that a dip stays visible) and, for the heads the
display gate passes only (models/gate.py), their class probabilities against time, with the lesion segments shaded.
A head's line is drawn only where a frame carries its estimate (informative frames: a lesion in view), with gaps
elsewhere; a head probability plotted through lesion-free stretches would be about nothing.

An SVG drawn from the per-frame records (instead of a matplotlib PNG) can be clicked and dragged to seek the video,
carries a playhead, prints sharply, and keeps a plotting library out of the report. This module computes the
geometry, plain numbers; templates/report.html draws it, so every label (head and class names come from the
checkpoint's card) is escaped by Jinja like any other value.

x is video time: the k-th record is drawn at k / fps, where the overlay video shows it (its frames are written in
order at a constant rate), so clicks and the playhead agree with the video even when the input's timestamps start
late or vary. Tick labels add the first frame's timestamp, to match the time codes burned into the overlay.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from models.card import ModelCard
from models.reliability import LOW_RELIABILITY
from review.overlay import timecode
from review.summary import passed_heads

WIDTH, X0, RIGHT = 960, 48, 12  # viewBox width and the plot's left / right margins (viewBox units)
LABEL_H, TRACK_H, AXIS_H = 18, 56, 22  # a track's title line and plot height; the time axis below the tracks
MAX_POINTS = 900  # a polyline's points at most (about one per unit of plot width)
LESION, AREA, RELIABILITY = "#1f8f3a", "#d26a00", "#6d4c41"
PALETTE = ("#1b6ac9", "#c2185b", "#7b5ea7", "#00897b", "#8d6e63", "#5d6d7e")
TICK_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)


def reduce_series(values: np.ndarray, n_out: int, how: str = "max") -> tuple[np.ndarray, np.ndarray]:
    """(positions in frames, values), at most ``n_out`` of them: a long video's frames are grouped into runs whose
    max (lesion probability and area: a short peak must stay visible) or mean (class probabilities) is drawn at the
    run's centre. Up to ``n_out`` frames are returned as they are. NaN (no value on that frame) is skipped; a run
    with no value at all stays NaN, a gap in the line."""
    n = len(values)
    if n <= n_out:
        return np.arange(n, dtype=float), values
    edges = np.linspace(0, n, n_out + 1).astype(int)
    if how == "mean":
        have = ~np.isnan(values)
        counts = np.add.reduceat(have.astype(float), edges[:-1])
        sums = np.add.reduceat(np.where(have, values, 0.0), edges[:-1])
        out = np.divide(sums, counts, out=np.full(len(counts), np.nan), where=counts > 0)
    elif how == "min":  # reliability: a short dip must stay visible
        out = np.fmin.reduceat(values, edges[:-1])
    else:
        out = np.fmax.reduceat(values, edges[:-1])  # fmax: NaN only where the whole run is NaN
    return (edges[:-1] + edges[1:] - 1) / 2, out


def polylines(
    pos: np.ndarray, vals: np.ndarray, *, n: int, x: Callable[[float], float], y: Callable[[np.ndarray], np.ndarray]
) -> list[str]:
    """SVG points of each stretch of finite values (gaps where NaN), x(position in frames) and y(value) mapping to
    the viewBox. A stretch of one point is drawn across its frame (one point draws nothing)."""
    out = []
    finite = np.isfinite(vals)
    starts = np.flatnonzero(finite & ~np.r_[False, finite[:-1]])
    ends = np.flatnonzero(finite & ~np.r_[finite[1:], False]) + 1
    step = max(1.0, n / MAX_POINTS)
    for a, b in zip(starts, ends):
        p, v = pos[a:b], vals[a:b]
        if len(p) == 1:
            p, v = np.array([p[0], p[0] + step]), np.repeat(v, 2)
        out.append(" ".join(f"{x(pp):.1f},{yy:.1f}" for pp, yy in zip(p, y(v))))
    return out


def nice_ceiling(v: float) -> float:
    """The smallest of 1, 2, 5 x 10^k at or above ``v`` (an axis maximum a reader can take in at a glance)."""
    if v <= 0:
        return 1.0
    base = 10 ** math.floor(math.log10(v))
    return next(m * base for m in (1, 2, 5, 10) if m * base >= v - 1e-12)


def timeline(
    records: Sequence[Mapping[str, Any]],
    card: ModelCard,
    *,
    fps: float,
    threshold: float,
    segments: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Geometry of the timeline SVG for ``records`` (summary rows in video order, as in review.pipeline)."""
    n = len(records)
    span = n / fps
    w = WIDTH - X0 - RIGHT
    top = 0

    def track(
        label: str,
        lines: list[tuple[str, str, np.ndarray, str]],
        vmax: float,
        unit: str = "",
        guide: float | None = None,
        legend: bool = False,
    ) -> dict[str, Any]:
        nonlocal top
        y0 = top + LABEL_H

        def y(v: float | np.ndarray) -> Any:
            return y0 + TRACK_H * (1 - np.minimum(v, vmax) / vmax)

        drawn = []
        for name, colour, values, how in lines:
            pos, vals = reduce_series(np.asarray(values, dtype=float), MAX_POINTS, how)
            pts = polylines(pos, vals, n=n, x=lambda p: X0 + p / n * w, y=y)
            drawn.append({"name": name, "colour": colour, "polylines": pts})
        t = {
            "label": label,
            "title_y": y0 - 5,
            "lines": drawn,
            "legend": legend,
            "yticks": [{"y": round(float(y(v)), 1), "label": f"{v:g}{unit}"} for v in (0, vmax / 2, vmax)],
            "guide": None if guide is None else round(float(y(guide)), 1),
        }
        top = y0 + TRACK_H + 8
        return t

    lesion_percent = np.array([100 * r["area_fraction"] for r in records])  # of the field of view
    tracks = [
        track(
            "lesion probability (max in view; dashed: threshold)",
            [("lesion", LESION, np.array([r["lesion_probability"] for r in records]), "max")],
            1.0,
            guide=threshold,
        ),
        track(
            "lesion area (% of the field of view)",
            [("area", AREA, lesion_percent, "max")],
            nice_ceiling(float(lesion_percent.max(initial=0.0))),
            unit="%",
        ),
    ]
    if any(r.get("reliability") is not None for r in records):
        tracks.append(
            track(
                "reliability (agreement of the model's views; dashed: below it, check by eye)",
                [("reliability", RELIABILITY, np.array([r.get("reliability", np.nan) for r in records]), "min")],
                1.0,
                guide=LOW_RELIABILITY,
            )
        )
    for h in passed_heads(card):
        classes = card.heads[h].classes
        tracks.append(
            track(
                f"{h}: class probabilities (informative frames only)",
                [
                    (
                        c,
                        PALETTE[i % len(PALETTE)],
                        np.array([r["heads"][h]["probs"][c] if h in r["heads"] else np.nan for r in records]),
                        "mean",
                    )
                    for i, c in enumerate(classes)
                ],
                1.0,
                legend=True,
            )
        )
    bottom = top - 8
    pos = {r["index"]: k for k, r in enumerate(records)}
    t0 = float(records[0]["time"])
    step = next((s for s in TICK_STEPS if span / s <= 8), TICK_STEPS[-1])
    ticks = [i * step for i in range(math.ceil(t0 / step - 1e-9), math.floor((t0 + span) / step + 1e-9) + 1)]
    return {
        "width": WIDTH,
        "height": bottom + AXIS_H,
        "x0": X0,
        "w": w,
        "bottom": bottom,
        "tracks": tracks,
        "xticks": [{"x": round(X0 + (t - t0) / span * w, 1), "label": timecode(t)} for t in ticks],
        "bands": [
            {
                "x": round(X0 + pos[s["start_frame"]] / n * w, 1),
                "width": round((pos[s["end_frame"]] + 1 - pos[s["start_frame"]]) / n * w, 1),
            }
            for s in segments
        ],
    }
