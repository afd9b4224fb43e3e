"""Datasets: image folders and manifests, combined from config, yielding the sample contract of docs/ARCHITECTURE.md.
(Over 350 lines on purpose: Record, its readers and RecordDataset are what every layer above data/ imports.)

A sample is a dict: ``image`` (after the transform: 3 x H x W float tensor, normalised), ``mask`` (1 x H x W float
in {0, 1}; absent when unlabelled), ``labels`` (dict head -> int, -1 where unknown), ``id`` and ``group``; with
covariates configured, ``covariates`` (n float, NaN = missing), and with quality flags ``poor_quality`` (bool).

Labels may be given per frame (a column of the manifest) or per case (``cases.csv``: one row per ``group`` with
head columns and clinical covariates, joined to the frames of that group; a frame's own label wins).
Before the transform, ``image`` is H x W x 3 uint8 RGB and ``mask`` H x W uint8 0/1.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from core.errors import UserError
from data.io import IMAGE_EXTS, list_images, read_image, read_mask
from data.manifest_tables import SPLITS, case_table, label_or_report, read_table, split_matches


@dataclass(frozen=True)
class Record:
    """One annotated frame on disk. ``labels`` maps head name -> class index (-1 = unknown)."""

    image: Path
    mask: Path | None
    id: str
    group: str
    labels: dict[str, int] = field(default_factory=dict)
    split: str | None = None
    covariates: dict[str, float] = field(default_factory=dict)
    patient: str | None = (
        None  # when one patient has several cases (resections): folds and bootstraps keep them together
    )
    centre: str | None = None  # hospital / device, for per-centre breakdowns

    @property
    def unit(self) -> str:
        """The independent unit: the patient when known, else the case (``group``). Folds, validation carving and
        bootstrap intervals never split a unit."""
        return self.patient or self.group


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise UserError(
            f"split list not found: {path} (for the public datasets: python -m data.layout --root DATA --install; "
            "else set the source's split_file to an existing file, or null)"
        )
    return [Path(line.strip()).stem for line in path.read_text().splitlines() if line.strip()]


def folder_records(
    root: str | Path,
    *,
    name: str = "",
    images_dir: str = "images",
    masks_dir: str | None = "masks",
    split_file: str | None = None,
    groups_csv: str | None = None,
    groups_keep: Sequence[str | int] | None = None,
    require_masks: bool = True,
    binary_labels: dict[str, str] | None = None,
) -> list[Record]:
    """Pair ``root/images/*`` with ``root/masks/*`` by file stem.

    split_file: optional list of stems (one a line, relative to root) to keep.
    groups_csv: optional CSV ``frame,sequence`` mapping a stem to its group (patient / sequence); without it each
        image is its own group.
    groups_keep: keep only images whose group (from groups_csv) is listed, e.g. held-out sequences.
    binary_labels: head -> list file (relative to root): listed images get class 1 of the head, every other image
        class 0 (e.g. Kvasir-SEG's Kvasir-Sessile subset -> small_sessile).
    """
    root = Path(root)
    img_dir = root / images_dir
    if not img_dir.is_dir():
        raise UserError(
            f"image folder not found: {img_dir} (set the source's root to a folder holding '{images_dir}/'; the public "
            "datasets' root is ENDOLIFT_DATA, default ../shared/data from the current folder: README, 'Getting the "
            "public data')"
        )
    images = list_images(img_dir)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_EXTS)}) in {img_dir}")
    masks: dict[str, Path] = {}
    if masks_dir is not None:
        mdir = root / masks_dir
        if not mdir.is_dir():
            if require_masks:
                raise UserError(f"mask folder not found: {mdir} (add masks or set masks_dir: null)")
        else:
            masks = list_images(mdir)
    stems = sorted(images)
    if split_file:
        wanted = _read_list(root / split_file)
        missing = [s for s in wanted if s not in images]
        if missing:
            raise UserError(
                f"{len(missing)} names in {root / split_file} have no image in {img_dir}, e.g. {missing[0]}"
            )
        stems = wanted
    if require_masks and masks_dir is not None:
        unpaired = [s for s in stems if s not in masks]
        if unpaired:
            raise UserError(
                f"{len(unpaired)} images in {img_dir} have no mask in {root / masks_dir}, "
                f"e.g. {images[unpaired[0]].name}"
                " (add the mask, remove the image, or set require_masks: false)"
            )
    groups: dict[str, str] = {}
    if groups_csv:
        gpath = root / groups_csv
        if not gpath.is_file():
            raise UserError(f"groups file not found: {gpath}")
        with gpath.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
        groups = {Path(r[0]).stem: r[1] for r in rows[1:] if len(r) >= 2}
    if groups_keep is not None:
        if not groups:
            raise UserError(f"groups_keep needs groups_csv (source {name or root})")
        keep = {str(g) for g in groups_keep}
        stems = [s for s in stems if groups.get(s) in keep]
        if not stems:
            raise UserError(f"no image of {root} is in groups {sorted(keep)}")
    positives = {h: set(_read_list(root / f)) for h, f in (binary_labels or {}).items()}
    prefix = f"{name}/" if name else ""
    return [
        Record(
            images[s],
            masks.get(s),
            id=f"{prefix}{s}",
            group=f"{prefix}{groups.get(s, s)}",
            labels={h: int(s in pos) for h, pos in positives.items()},
        )
        for s in stems
    ]


def manifest_records(
    path: str | Path,
    *,
    name: str = "",
    heads: dict[str, Sequence[str]] | None = None,
    split: str | None = None,
    cases: str | None = None,
    covariates: Sequence[str] = (),
    errors: list[str] | None = None,
    group: str = "optional",
) -> list[Record]:
    """Read a CSV or JSONL manifest. Columns: ``image`` (required), ``mask``, one per head, ``group``, ``split``,
    and optionally ``patient`` and ``centre``.

    Paths are relative to the manifest's folder. A head's value is a class name or index; empty means unknown.
    split: which rows to keep (``split_matches``): ``train`` = development rows (train, val, unsplit), ``val`` /
        ``test`` = exactly those; None = all. An empty split means development data, never test.
    cases: a case table (relative to the manifest's folder) with per-case labels and covariates, joined by
        ``group``; a frame's own label, when given, wins over its case's. Its ``patient`` / ``centre`` / ``split``
        columns apply to the case's frames unless a frame gives its own.
    errors: when given, a bad label is appended here (and read as unknown) instead of stopping the read, so an
        audit lists every problem at once.
    group: ``column`` = the ``group`` column names each frame's case (required: a manifest without it is refused,
        so that no report resamples frames while calling them patients); ``frame`` = every frame is its own case
        (data.group=frame: said explicitly, and every report then gives intervals by frame); ``optional`` = the
        column when present, else the frame (segmentation-only reads).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"manifest not found: {path}")
    if group not in ("column", "frame", "optional"):
        raise UserError(f"data.group must be 'column' or 'frame', got {group!r}")
    rows = read_table(path)
    if not rows:
        raise UserError(f"manifest has no rows: {path}")
    if "image" not in rows[0]:
        raise UserError(f"manifest has no 'image' column: {path} (columns: {', '.join(rows[0])})")
    if group == "column" and "group" not in rows[0]:
        raise UserError(
            f"manifest has no 'group' column: {path} (add the patient or case id of every frame; only if every "
            "frame really is an independent case, set data.group=frame: intervals are then resampled by frame)"
        )
    heads = heads or {}
    table = case_table(path.parent / cases, heads=heads, covariates=covariates) if cases else {}
    if covariates and not cases:
        raise UserError(f"model.covariates {list(covariates)} need a case table: set the source's cases: cases.csv")
    prefix = f"{name}/" if name else ""
    out = []
    for i, row in enumerate(rows, 2 if path.suffix == ".csv" else 1):
        where = f"{path}:{i}"
        stem = Path(str(row["image"])).with_suffix("").as_posix()
        g = str(row.get("group") or "").strip()
        if group == "frame":
            g = stem
        elif not g:
            if group == "column":
                raise UserError(f"{where}: empty 'group' (every frame needs its patient or case id)")
            g = stem
        case_labels, case_cov, case_attrs = table.get(g, ({}, {}, {}))
        row_split = str(row.get("split") or "").strip() or case_attrs.get("split") or None
        if row_split is not None and row_split not in SPLITS:
            raise UserError(f"{where}: split '{row_split}' is not one of {', '.join(SPLITS)} (or empty = development)")
        if not split_matches(row_split, split):
            continue
        image = path.parent / str(row["image"])
        mask = path.parent / str(row["mask"]) if row.get("mask") else None
        labels = {h: label_or_report(row.get(h), h, classes, where, errors) for h, classes in heads.items()}
        if cases and g not in table:
            case_cov = {c: float("nan") for c in covariates}
        labels = {h: v if v >= 0 else case_labels.get(h, -1) for h, v in labels.items()}
        patient = str(row.get("patient") or "").strip() or case_attrs.get("patient")
        centre = str(row.get("centre") or "").strip() or case_attrs.get("centre")
        out.append(
            Record(
                image,
                mask,
                id=f"{prefix}{stem}",
                group=f"{prefix}{g}",
                labels=labels,
                split=row_split,
                covariates=dict(case_cov),
                patient=f"{prefix}{patient}" if patient else None,
                centre=centre,
            )
        )
    if not out:
        raise UserError(f"manifest {path} has no rows with split '{split}'")
    return out


def load_raw(record: Record, heads: Sequence[str] = ()) -> dict[str, Any]:
    """Read one record into the untransformed sample contract (uint8 image, 0/1 mask), checking sizes agree."""
    image = read_image(record.image)
    sample: dict[str, Any] = {
        "image": image,
        "id": record.id,
        "group": record.group,
        "labels": {h: record.labels.get(h, -1) for h in heads},
    }
    if record.mask is not None:
        mask = read_mask(record.mask)
        if mask.shape != image.shape[:2]:
            raise UserError(
                f"mask {mask.shape[1]}x{mask.shape[0]} does not match image {image.shape[1]}x{image.shape[0]}: "
                f"{record.mask} (re-export the mask at the image's size)"
            )
        sample["mask"] = mask
    return sample


class RecordDataset(Dataset):
    """A list of records read lazily, optionally cached in RAM after resizing to ``cache_size`` (square).

    transform: callable(image=HxWx3 uint8, mask=HxW uint8) -> dict with tensors (see data/transforms.py).
    cache_size: when set, each decoded image/mask is resized to cache_size x cache_size once and kept in memory,
        which removes JPEG decoding of multi-megapixel frames from every epoch. Use it only when the transform
        resizes to a fixed square anyway (the PraNet protocol does).
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        transform: Callable[..., dict] | None = None,
        heads: Sequence[str] = (),
        cache_size: int | None = None,
        covariates: Sequence[str] = (),
        quality: bool = False,
        seed: int | None = None,
    ) -> None:
        if not records:
            raise UserError("dataset is empty (check the data sources and split lists)")
        self.records = list(records)
        self.transform = transform
        self.heads = list(heads)
        self.cache_size = cache_size
        self.covariates = list(covariates)
        self.quality = quality
        self.seed = seed
        self._cache: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.records)

    def raw(self, index: int) -> dict[str, Any]:
        if index in self._cache:
            return self._cache[index]
        sample = load_raw(self.records[index], self.heads)
        if self.quality:
            from data.quality import poor_quality

            sample["poor_quality"] = poor_quality(sample["image"])
        if self.cache_size:
            s = self.cache_size
            sample["image"] = cv2.resize(sample["image"], (s, s), interpolation=cv2.INTER_AREA)
            if "mask" in sample:
                sample["mask"] = cv2.resize(sample["mask"], (s, s), interpolation=cv2.INTER_NEAREST)
            self._cache[index] = sample
        return sample

    def fill_cache(self, threads: int = 2) -> None:
        """Decode and cache every record now, in this process (OpenCV releases the GIL: ``threads`` decode at once).
        DataLoader workers forked afterwards share these arrays copy-on-write; filled lazily, each worker would
        decode the whole dataset again and hold its own copy."""
        from concurrent.futures import ThreadPoolExecutor

        if self.cache_size:
            with ThreadPoolExecutor(max(1, threads)) as pool:
                list(pool.map(self.raw, range(len(self.records))))

    def __getitem__(self, index: int) -> dict[str, Any]:
        """index: a record index, or ``epoch * len(self) + record index`` (training.loaders.EpochSampler); with a seed,
        the sample's augmentation is drawn from (seed, epoch, record index) alone."""
        epoch, index = divmod(index, len(self.records))
        sample = dict(self.raw(index))
        if self.seed is not None and hasattr(self.transform, "set_random_seed"):
            seed = np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0]
            self.transform.set_random_seed(int(seed))
        if self.transform is not None:
            # unlabelled frames get an all-zero mask and has_mask=False so that mixed batches collate and the loss
            # can leave them out of the segmentation terms
            has_mask = "mask" in sample
            mask = sample["mask"] if has_mask else np.zeros(sample["image"].shape[:2], np.uint8)
            out = self.transform(image=sample["image"], mask=mask)
            sample["image"] = out["image"]
            sample["mask"] = out["mask"].float().unsqueeze(0)
            sample["has_mask"] = torch.tensor(has_mask)
        sample["labels"] = {h: torch.tensor(v, dtype=torch.long) for h, v in sample["labels"].items()}
        if self.covariates:
            cov = self.records[index].covariates
            sample["covariates"] = torch.tensor(
                [cov.get(c, float("nan")) for c in self.covariates], dtype=torch.float32
            )
        if self.quality:
            sample["poor_quality"] = torch.tensor(sample["poor_quality"])
        return sample


def records_from_sources(
    sources: Sequence[dict[str, Any]],
    heads: dict[str, Sequence[str]] | None = None,
    split: str | None = None,
    covariates: Sequence[str] = (),
    group: str = "optional",
) -> list[Record]:
    """Combine several sources. Each source is a dict with ``kind`` (folder | manifest | synthetic) + its kwargs.
    group: how manifests name cases (manifest_records); folders take theirs from groups_csv or the file name."""
    from data.synthetic import ensure_synthetic_dataset

    out: list[Record] = []
    for i, src in enumerate(sources):
        src = dict(src)
        kind = src.pop("kind", "folder")
        if kind == "folder":
            out += folder_records(**src)
        elif kind == "manifest":
            out += manifest_records(
                src.pop("path"),
                heads=heads,
                split=src.pop("split", split),
                covariates=covariates,
                group=src.pop("group", group),
                **src,
            )
        elif kind == "synthetic":
            manifest = ensure_synthetic_dataset(**{k: v for k, v in src.items() if k != "name"})
            out += manifest_records(
                manifest,
                name=src.get("name", "synthetic"),
                heads=heads,
                split=split,
                cases="cases.csv" if (manifest.parent / "cases.csv").is_file() else None,
                covariates=covariates,
                group="column" if group == "optional" else group,
            )
        else:
            raise UserError(f"data source {i}: unknown kind '{kind}' (use folder, manifest or synthetic)")
    return out
