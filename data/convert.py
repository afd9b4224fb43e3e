"""Turn an annotation tool's export into endolift's dataset layout: images/, masks/, manifest.csv (+ cases.csv).

    python -m data.convert coco export/annotations/instances_default.json --out /study/frames \\
        --group '^(P\\d+)_' --lesion polyp --label fibrosis=fibrosis lift=lift_quality --case-labels
    python -m data.convert cvat-mask task.zip --out /study/frames --images /study/png --group '^(P\\d+)_'
    python -m data.convert labelstudio project.json --out /study/frames --images /study/png --group-column patient
    python -m data.convert coco instances_default.json --out /study/frames --group-column patient \\
        --split-column split --lesion polyp --label fibrosis=fibrosis --case-labels \\
        --covariate prior_radiotherapy=rt weeks_since_rt=rt_weeks distance_av_cm=distance

Formats: ``coco`` (instances or stuff JSON: polygons, uncompressed and compressed RLE, rasterised by pycocotools),
``cvat-mask`` (CVAT "Segmentation mask 1.1": labelmap.txt, SegmentationClass/, SegmentationObject/,
ImageSets/Segmentation/*.txt; a folder or the zip), ``labelstudio`` (Label Studio's JSON export: brush RLE and
polygons in percent). SRC is the JSON file, or a folder / zip holding the export.

Output: ``OUT/images/<name>`` (the frame, copied byte for byte), ``OUT/masks/<stem>.png`` (0/255, the union of the
frame's lesion objects; empty when it has none), ``OUT/manifest.csv`` (image, mask, group, with --split-column
split, one column per --label head) and with --case-labels or --covariate ``OUT/cases.csv`` (one row per group:
group, with --split-column split, with --case-labels the heads instead of their manifest columns, one column per
--covariate): what ``data.datasets.manifest_records`` reads and ``python -m data.check`` audits.

Per-image values (--group-column, --split-column) are read from the image's fields / attributes (COCO: the image's
own fields and its ``attributes``; Label Studio: the task's ``data`` fields and its whole-image choices); labels and
covariates (--label, --covariate) from those and the image's objects' attributes. A split is ``train``, ``val``,
``test`` or empty (development data: train / validation / cross-validation, never test), and every frame of a group
has the same one, so a patient cannot straddle train and test. A covariate is a clinical value per case, kept as
text as exported (a number, yes/no, empty = unknown); the frames of a case must agree on it. CVAT's mask export
carries no attributes: only --group REGEX works there.

Why this is strict: hand-made manifests mis-pair frames and masks, and a silently wrong mask trains a wrong model.
An export's file names are untrusted (no absolute paths, no '..'); every image is read; every size the export
declares must match the file; any problem stops the run with one line naming the file (exit code 2) and nothing is
written: the dataset is built in a hidden folder beside OUT and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import uuid
import zipfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import UserError
from data.annotation_formats import READERS
from data.annotation_frames import safe_name
from data.dataset_writer import case_id_reader, case_rows, check_group_splits, split_reader, write_csv, write_frames

FORMATS = ("coco", "cvat-mask", "labelstudio")
RESERVED = ("image", "mask", "group", "split")  # manifest / case-table columns a head or covariate may not be called


# --- conversion ---------------------------------------------------------------------------------------------------


def _unpack(src: Path, into: Path) -> Path:
    """A zip export, extracted after checking every member's name; its single top folder when it has one."""
    try:
        with zipfile.ZipFile(src) as zf:
            for info in zf.infolist():
                safe_name(info.filename, f"{src}: zip member", inside="the zip")
            zf.extractall(into)
    except zipfile.BadZipFile:
        raise UserError(f"{src}: not a readable zip file (download the export again)") from None
    entries = list(into.iterdir())
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else into


def _export_json(root: Path) -> Path:
    found = sorted(root.rglob("*.json"))
    if len(found) != 1:
        raise UserError(f"{root}: holds {len(found)} JSON files, expected one (pass the JSON file itself as SRC)")
    return found[0]


def convert(
    *,
    fmt: str,
    src: str | Path,
    out: str | Path,
    images: str | Path | None = None,
    group: str | None = None,
    group_column: str | None = None,
    split_column: str | None = None,
    lesion: Sequence[str] = (),
    labels: Mapping[str, str] | None = None,
    case_labels: bool = False,
    covariates: Mapping[str, str] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Convert the export ``src`` (format ``fmt``) into the dataset folder ``out``; return the summary.

    images: folder holding the frames (default: the export's own image folder). group: regex whose first capture
    group, searched in each image's name, is the case id; group_column: an attribute / field holding it; neither:
    each image its own group (with a warning). split_column: an attribute / field holding each image's split
    (train, val, test or empty), the same for every frame of a group. lesion: categories that mean lesion
    (default: all). labels: head -> attribute. case_labels: labels go to cases.csv, one per group. covariates:
    name -> attribute, one value per group, written to cases.csv (which is then written even without
    case_labels). overwrite: replace a non-empty ``out``.
    Raises UserError, having written nothing, on any problem with the options or the export.
    """
    src, out, labels, covariates = Path(src), Path(out), dict(labels or {}), dict(covariates or {})
    if fmt not in READERS:
        raise UserError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
    if group and group_column:
        raise UserError("give --group or --group-column, not both")
    if split_column is not None and not split_column.strip():
        raise UserError("--split-column needs the name of the image field / attribute holding the split")
    options = {"--label": labels, "--group-column": group_column, "--split-column": split_column}
    given = [flag for flag, v in (options | {"--covariate": covariates}).items() if v]
    if fmt == "cvat-mask" and given:
        raise UserError(
            f"CVAT's Segmentation mask 1.1 export carries no attributes, so {' and '.join(given)} cannot be read "
            "from it: use --group REGEX, or export the task as COCO 1.0 (it keeps attributes) and convert it "
            "with format coco"
        )
    for head, attr in labels.items():
        if not head or not attr or head in RESERVED or not re.fullmatch(r"[\w.-]+", head):
            raise UserError(
                f"--label {head}={attr}: HEAD must be a column name other than {', '.join(RESERVED)}, "
                "ATTRIBUTE not empty"
            )
    for name, attr in covariates.items():
        if not name or not attr or name in RESERVED or name in labels or not re.fullmatch(r"[\w.-]+", name):
            raise UserError(
                f"--covariate {name}={attr}: NAME must be a column name other than {', '.join(RESERVED)} and "
                f"the --label heads ({', '.join(labels) or 'none'}), ATTRIBUTE not empty"
            )
    if case_labels and not labels:
        raise UserError("--case-labels needs --label HEAD=ATTRIBUTE")
    try:
        pattern = re.compile(group) if group else None
    except re.error as e:
        raise UserError(f"--group '{group}' is not a valid regular expression ({e})") from None
    if pattern is not None and pattern.groups < 1:
        raise UserError(f"--group '{group}' needs a capture group holding the case id, e.g. '^(P\\d+)_'")
    if not src.exists():
        raise UserError(f"{src}: not found (SRC is the export's JSON file, folder or zip)")
    if images is not None and not Path(images).is_dir():
        raise UserError(f"--images {images}: not a folder")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"--out {out}: exists and is not empty (choose a new folder, or pass --overwrite)")
    held = [p for p in (src, images) if p and out.is_dir() and Path(p).resolve().is_relative_to(out.resolve())]
    if held:
        raise UserError(f"--out {out} holds the input {held[0]}, which --overwrite would delete: choose another --out")

    created = [p for p in out.parents if not p.exists()]  # removed again if the conversion fails
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()  # not tempfile.mkdtemp: its 0700 mode would stay on the finished dataset
    try:
        root = _unpack(src, stage / ".export") if zipfile.is_zipfile(src) else src
        if fmt == "cvat-mask":
            default_dirs = [root / "JPEGImages"]
        else:
            root = root if root.is_file() else _export_json(root)
            default_dirs = [root.parent] + (
                [root.parent / "images", root.parent.parent / "images"] if fmt == "coco" else []
            )
        notes: list[str] = []
        categories, frames = READERS[fmt](root, [Path(images)] if images else default_dirs, notes)
        missing = [c for c in lesion if c not in categories]
        if missing:
            raise UserError(f"{src}: no category {missing} (--lesion); the export has {sorted(categories)}")
        chosen = set(lesion) or categories
        if not lesion and len(categories) > 1:
            notes.append(
                f"no --lesion: every category is drawn as lesion ({', '.join(sorted(categories))}); "
                "name the lesion ones with --lesion"
            )

        built = write_frames(
            frames,
            stage,
            is_lesion=lambda cats: any(c in chosen for c in cats),
            group_of=case_id_reader(pattern, group_column),
            split_of=split_reader(split_column) if split_column else None,
            labels=labels,
            covariates=covariates,
        )
        rows = built["rows"]
        if not rows:
            raise UserError(f"{src}: no annotated images in the export")
        for flag, wanted in (("--label", labels), ("--covariate", covariates)):
            for name, attr in wanted.items():
                if attr not in built["attrs_seen"]:
                    raise UserError(
                        f"{src}: attribute '{attr}' ({flag} {name}={attr}) is on no image or annotation "
                        f"(attributes seen: {sorted(built['attrs_seen'])})"
                    )
        if split_column:
            if split_column not in built["fields_seen"]:
                raise UserError(
                    f"{src}: field '{split_column}' (--split-column) is on no image "
                    f"(image fields / attributes seen: {sorted(built['fields_seen'])})"
                )
            check_group_splits(rows, src, split_column)
        heads, split = list(labels), ["split"] if split_column else []
        cases = case_rows(rows, heads if case_labels else [], src, covariates=covariates)
        if case_labels or covariates:
            columns = ["group", *split, *(heads if case_labels else []), *covariates]
            write_csv(stage / "cases.csv", cases, columns)
        write_csv(stage / "manifest.csv", rows, ["image", "mask", "group", *split, *([] if case_labels else heads)])
        shutil.rmtree(stage / ".export", ignore_errors=True)
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            out.rename(old)
            stage.rename(out)
            shutil.rmtree(old, ignore_errors=True)  # the new dataset is in place either way
        else:
            stage.rename(out)
    except BaseException as e:
        shutil.rmtree(stage, ignore_errors=True)
        for p in created:
            try:
                p.rmdir()
            except OSError:
                break
        unpacked = str(stage / ".export") + os.sep
        if isinstance(e, UserError) and unpacked in str(e):  # name the zip and its member, not a deleted folder
            raise UserError(str(e).replace(unpacked, f"{src}: ")) from None
        raise

    if not group and not group_column:
        notes.insert(
            0,
            "no --group or --group-column: each image is its own group, so splits cannot keep a "
            "patient's frames together",
        )
    if built["bare"] and fmt != "labelstudio":  # COCO and CVAT list every frame of a task, annotated or not
        notes.append(
            f"{len(built['bare'])} images have no annotated object at all (e.g. {built['bare'][0]}): written "
            "with empty masks; remove their rows if they were never annotated"
        )
    labelled = cases if case_labels else rows
    return {
        "out": str(out),
        "images": len(rows),
        "masks": len(rows),
        "empty_masks": built["empty"],
        "lesion_objects": built["objects"],
        "groups": len({r["group"] for r in rows}),
        "labels": {h: dict(Counter(r[h] or "unknown" for r in labelled)) for h in heads},
        **({"splits": dict(Counter(c["split"] or "development" for c in cases))} if split_column else {}),
        **({"covariates_known": {c: sum(bool(r[c]) for r in cases) for c in covariates}} if covariates else {}),
        "ignored_categories": dict(built["ignored"]),
        "warnings": notes,
    }


def parse_labels(items: Sequence[str], *, flag: str = "--label") -> dict[str, str]:
    """``HEAD=ATTRIBUTE`` strings (``NAME=ATTRIBUTE`` for --covariate) -> {head: attribute}."""
    out: dict[str, str] = {}
    for item in items:
        head, sep, attr = item.partition("=")
        if not sep or head.strip() in out:
            example = "fibrosis=fibrosis" if flag == "--label" else "prior_radiotherapy=rt"
            what = "HEAD=ATTRIBUTE, each head" if flag == "--label" else "NAME=ATTRIBUTE, each name"
            raise UserError(f"{flag} {item!r}: expected {what} once (e.g. {example})")
        out[head.strip()] = attr.strip()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m data.convert", description=__doc__.splitlines()[0])
    ap.add_argument("format", metavar="FORMAT", help=f"one of {', '.join(FORMATS)}")
    ap.add_argument("src", metavar="SRC", help="the export: its JSON file, folder or zip")
    ap.add_argument("--out", required=True, metavar="DIR", help="dataset folder to create (new or empty)")
    ap.add_argument("--images", metavar="DIR", help="folder holding the frames, when the export has none")
    grouping = ap.add_mutually_exclusive_group()
    grouping.add_argument("--group", metavar="REGEX", help="case id = first capture group in the image name")
    grouping.add_argument("--group-column", metavar="NAME", help="case id = this image field / attribute / data field")
    ap.add_argument(
        "--split-column",
        metavar="NAME",
        help="split (train, val, test; empty = development data) = this image field / attribute / data field; "
        "written to manifest.csv's split column (and cases.csv), the same for all frames of a group",
    )
    ap.add_argument(
        "--lesion",
        nargs="+",
        action="extend",
        default=[],
        metavar="CATEGORY",
        help="categories that mean lesion (default: every category)",
    )
    ap.add_argument(
        "--label",
        nargs="+",
        action="extend",
        default=[],
        metavar="HEAD=ATTRIBUTE",
        help="head label column from a frame or object attribute (Label Studio: a Choices name)",
    )
    ap.add_argument("--case-labels", action="store_true", help="write the labels per group into cases.csv")
    ap.add_argument(
        "--covariate",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME=ATTRIBUTE",
        help="clinical covariate column of cases.csv (written whenever one is given) from a frame or object "
        "attribute: one value per group (a number, yes/no, empty = unknown)",
    )
    ap.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
    a = ap.parse_args(argv)
    try:
        summary = convert(
            fmt=a.format,
            src=a.src,
            out=a.out,
            images=a.images,
            group=a.group,
            group_column=a.group_column,
            split_column=a.split_column,
            lesion=a.lesion,
            labels=parse_labels(a.label),
            case_labels=a.case_labels,
            covariates=parse_labels(a.covariate, flag="--covariate"),
            overwrite=a.overwrite,
        )
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the export was fine; writing --out was not (permission, disk full): nothing was kept
        print(f"error: cannot write --out {a.out}: {e.strerror or e} ({e.filename or a.out})", file=sys.stderr)
        return 2
    for note in summary.pop("warnings"):
        print(f"warning: {note}", file=sys.stderr)
    for k, v in summary.items():
        print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
