"""The recorded outcomes as the hospital path's training data: a case table and a frame manifest that
``python -m data.check`` and ``train.py`` read as they stand (README, "Training a fibrosis or lift model on your
hospital's data").

Written into one folder (that of ``--out``):

- ``cases.csv``: ``group`` (the case id), ``patient``, ``centre``, ``fibrosis``, ``lift`` and the covariates
  (``prior_radiotherapy``, ``weeks_since_rt``, ``dose_gy``, ``distance_av_cm``, ``prior_attempt``,
  ``lesion_size_mm``; yes/no, numbers, empty = unknown). No ``split`` column: every exported case is development
  data until the study assigns a locked test set.
- ``frames.csv``: ``image``, ``mask``, ``group``, paths relative to it: the case's key frames (the frames its report
  shows) as clean pictures, ``frames/<case>/<frame>.png``, with the model's predicted lesion mask at the same size,
  ``masks/<case>/<frame>.png``. The key-frame JPEGs in a case folder have the overlay drawn into them, so they are
  never used: the clean frame is decoded from ``<stem>_original.mp4`` (infer.py ``review.original_video=true``;
  de-identified when the run was), else from the input named in the case's ``config.yaml`` when it is still
  there (blurred outside the field of view when the run had ``review.deidentify=true``). A case with neither is
  exported without frames (its labels still count) and named in ``export_warnings.txt``.
- ``cases_signoff.csv``: per case, who signed off and when, the revision, and the model whose review it was.

Only signed-off cases by default (``include_drafts`` adds cases with a recorded outcome that no one signed off).
Text cells a spreadsheet would evaluate as a formula get a leading quote, in both tables alike (ids stay joined).
The note is never exported.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import UserError
from core.files import atomic_write, write_image_atomic
from data.io import read_mask
from review.app import store
from review.index_page import safe_cell

CASE_COLUMNS = ("group", "patient", "centre", *store.OUTCOMES, *store.COVARIATES)
SIGNOFF_COLUMNS = ("group", "revision", "signed_off_by", "signed_off_at", "updated_by", "updated_at", "model")


@dataclass
class Exported:
    cases: Path
    frames: Path
    n_cases: int
    n_frames: int
    warnings: list[str] = field(default_factory=list)


def _write_csv(path: Path, columns: tuple[str, ...] | list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_write(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(columns))
        w.writeheader()
        w.writerows({k: safe_cell(store.text_of(r.get(k))) for k in columns} for r in rows)


def _key_frames(folder: Path) -> list[tuple[str, str, int]]:
    """(frame name, video stem, frame index) of the case's key frames, from ``keyframes/<stem>_<index>.jpg``."""
    out = []
    for p in sorted((folder / "keyframes").glob("*.jpg")) if (folder / "keyframes").is_dir() else []:
        stem, _, tail = p.stem.rpartition("_")
        if stem and tail.isdigit():
            out.append((p.stem, stem, int(tail)))
    return out


def _positions(folder: Path) -> dict[int, int]:
    """Frame index -> position in the case's videos (the k-th line of predictions.jsonl is the k-th video frame)."""
    out = {}
    path = folder / "predictions.jsonl"
    with path.open(encoding="utf-8") as f:
        for k, line in enumerate(f):
            if line.strip():
                out[int(json.loads(line)["index"])] = k
    return out


def _run_settings(folder: Path) -> dict[str, Any]:
    """The case run's settings (its config.yaml), {} when absent or unreadable."""
    import yaml

    try:
        cfg = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _source_video(folder: Path, stem: str, cfg: dict[str, Any]) -> Path | None:
    """The input video of the run, when config.yaml names it (one input or a list) and it still exists."""
    inputs = cfg.get("input")
    for item in inputs if isinstance(inputs, list) else [inputs]:
        if isinstance(item, str) and Path(item).stem == stem and Path(item).is_file():
            return Path(item)
    return None


def clean_frames(folder: Path) -> tuple[list[tuple[str, np.ndarray]], str]:
    """The case's key frames without the overlay, as (frame name, H x W x 3 RGB), and where they came from (or why
    there are none)."""
    from data.video import read_frames

    wanted = _key_frames(folder)
    if not wanted:
        return [], "no key frames (an image input, or a run without the report)"
    out: list[tuple[str, np.ndarray]] = []
    sources = set()
    cfg = _run_settings(folder)
    for stem in sorted({s for _, s, _ in wanted}):
        names = {index: name for name, s, index in wanted if s == stem}
        original = folder / f"{stem}_original.mp4"
        if original.is_file():
            try:
                pos = _positions(folder)
            except (OSError, ValueError, KeyError, TypeError):
                return [], "predictions.jsonl is unreadable"
            by_pos = {pos[i]: name for i, name in names.items() if i in pos}
            video, key, blur = original, "position", False
            sources.add("original video")
        else:
            video = _source_video(folder, stem, cfg)
            if video is None:
                continue
            by_pos, key = names, "index"
            blur = bool((cfg.get("review") or {}).get("deidentify"))
            sources.add("input video")
        last = max(by_pos, default=-1)
        for k, frame in enumerate(read_frames(video, errors=[])):
            at = k if key == "position" else frame.index
            if at in by_pos:
                image = frame.image
                if blur:
                    from data.scope import field_of_view, fill_outside_field_of_view

                    image = fill_outside_field_of_view(image, field_of_view(image))
                out.append((by_pos[at], image))
            if at >= last:
                break
    if not out:
        return [], (
            "no clean frames: the key frames have the overlay drawn in; rerun infer.py with "
            "review.original_video=true, or keep the input video where config.yaml names it"
        )
    return out, " and ".join(sorted(sources))


def _case_frames(root: Path, case: str, dest: Path) -> tuple[list[dict[str, str]], str]:
    """Write a case's clean key frames and their masks under ``dest`` (frames/<case>/, masks/<case>/); the manifest
    rows, and a warning ('' when fine). Frames already exported and newer than the case's summary are kept."""
    import cv2

    folder = root / case
    if not (folder / "summary.json").is_file():
        return [], "its case folder has no summary.json (moved, deleted or not finished)"
    done = (folder / "summary.json").stat().st_mtime_ns
    names = [name for name, _, _ in _key_frames(folder)]
    img_dir, mask_dir = dest / "frames" / case, dest / "masks" / case
    fresh = names and all(
        (img_dir / f"{n}.png").is_file() and (img_dir / f"{n}.png").stat().st_mtime_ns >= done for n in names
    )
    if not fresh:
        frames, why = clean_frames(folder)
        if not frames:
            return [], why
        for name, image in frames:
            write_image_atomic(img_dir / f"{name}.png", image)
            mask_src = folder / "masks" / f"{name}.png"
            if mask_src.is_file():
                mask = read_mask(mask_src)
                h, w = image.shape[:2]
                if mask.shape != (h, w):  # masks are at the input's size, an original video at the overlay's
                    mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)
                write_image_atomic(mask_dir / f"{name}.png", mask * 255)
        names = [name for name, _ in frames]
    rows = []
    for n in names:
        if (img_dir / f"{n}.png").is_file():
            mask = mask_dir / f"{n}.png"
            rows.append(
                {
                    "image": f"frames/{case}/{n}.png",
                    "mask": f"masks/{case}/{n}.png" if mask.is_file() else "",
                    "group": case,
                }
            )
    return rows, ""


def export(*, root: str | Path, engine, out: str | Path, include_drafts: bool = False) -> Exported:
    """Write cases.csv (at ``out``), frames.csv, the frames and masks, and cases_signoff.csv beside it."""
    root, out = Path(root), Path(out)
    if out.suffix.lower() != ".csv":
        raise UserError(f"--out {out} must name a .csv file (the case table); frames.csv is written beside it")
    dest = out.parent
    dest.mkdir(parents=True, exist_ok=True)
    recorded = store.all_outcomes(engine)
    chosen = [
        r
        for _, r in sorted(recorded.items())
        if r["signed_off_at"] or (include_drafts and any(r.get(o) is not None for o in store.OUTCOMES))
    ]
    frame_rows, warnings = [], []
    for r in chosen:
        rows, why = _case_frames(root, r["case_id"], dest)
        frame_rows += rows
        if why:
            warnings.append(f"{r['case_id']}: {why}")
    cases = [{"group": r["case_id"], **{k: r.get(k) for k in CASE_COLUMNS if k != "group"}} for r in chosen]
    _write_csv(out, CASE_COLUMNS, cases)
    frames = dest / "frames.csv"
    _write_csv(frames, ("image", "mask", "group"), frame_rows)
    _write_csv(
        dest / f"{out.stem}_signoff.csv",
        SIGNOFF_COLUMNS,
        [{"group": r["case_id"], **{k: r.get(k) for k in SIGNOFF_COLUMNS if k != "group"}} for r in chosen],
    )
    warn_file = dest / "export_warnings.txt"
    if warnings:
        with atomic_write(warn_file) as tmp:
            tmp.write_text("\n".join(warnings) + "\n", encoding="utf-8")
    else:
        warn_file.unlink(missing_ok=True)
    return Exported(out, frames, len(cases), len(frame_rows), warnings)
