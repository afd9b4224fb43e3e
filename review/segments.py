"""Lesion segments: the stretches of a video in which a lesion is in view (the report's table, summary.json).

A reviewer asks "when is a lesion on screen, and where is it seen best?", not "which of 9000 frames". A segment is a
run of frames with a lesion (at least one lesion left after speck removal, as counted in ``frames_with_lesion``);
two frames with a lesion at most ``GAP_S`` seconds apart belong to one segment, so a few frames lost to motion blur,
a water flush or an instrument passing do not split one view of a lesion into many rows. At 25 frames/s that bridges
up to 11 frames without a lesion; a longer gap starts a new segment. Lesions are not tracked from frame to frame:
a segment says "a lesion is in view", not "the same lesion".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

GAP_S = 0.5


def lesion_segments(records: Sequence[Mapping[str, Any]], *, fps: float, gap_s: float = GAP_S) -> list[dict[str, Any]]:
    """records: per-frame rows in video order with ``index``, ``time`` (s), ``n_lesions``, ``lesion_px`` (lesion
    area in frame pixels), ``area_fraction`` (of the field of view) and ``lesion_probability``.

    Returns one dict per segment: first and last frame with a lesion (``start``/``end`` times in s, as in
    predictions.jsonl, and ``start_frame``/``end_frame`` indices), ``duration`` (s, the last frame's display time
    included: ``end - start + 1 / fps``), ``frames`` (in the range, bridged gaps included) and ``lesion_frames``,
    the frame with the largest lesion area (``peak``: its time, index, area in pixels and as a fraction of the
    view), and the mean and max lesion probability over the range's frames.
    """
    runs: list[list[int]] = []  # [first, last] positions in records of each segment's frames with a lesion
    for k, r in enumerate(records):
        if r["n_lesions"] <= 0:
            continue
        if runs and r["time"] - records[runs[-1][1]]["time"] <= gap_s + 1e-6:  # times are rounded to 0.1 ms
            runs[-1][1] = k
        else:
            runs.append([k, k])
    out = []
    for a, b in runs:
        span = records[a : b + 1]
        peak = max(span, key=lambda r: r["area_fraction"])  # the first of equal peaks
        probs = [float(r["lesion_probability"]) for r in span]
        out.append(
            {
                "start": records[a]["time"],
                "end": records[b]["time"],
                "start_frame": records[a]["index"],
                "end_frame": records[b]["index"],
                "duration": round(records[b]["time"] - records[a]["time"] + 1 / fps, 4),
                "frames": len(span),
                "lesion_frames": sum(r["n_lesions"] > 0 for r in span),
                "peak": {
                    "time": peak["time"],
                    "frame": peak["index"],
                    "area_px": peak["lesion_px"],
                    "area_fraction": peak["area_fraction"],
                },
                "mean_probability": round(sum(probs) / len(probs), 4),
                "max_probability": max(probs),
            }
        )
    return out
