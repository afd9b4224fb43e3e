"""What every reader of an annotation tool's export yields (Frame, with its Shape objects) and the checks every
reader applies to an export: JSON that parses, fields that exist with the right type, file names that stay inside
their folder, images that are found. data.annotation_formats holds the readers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from core.errors import UserError


@dataclass
class Shape:
    """One annotated object: its category names, its attributes, and ``to_mask(h, w)`` -> bool H x W mask, called
    once the image's real size is known (a size the export declares is checked against it, not trusted)."""

    categories: tuple[str, ...]
    to_mask: Callable[[int, int], np.ndarray]
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


def load_export_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}): re-export it") from None
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file (is it the JSON export?)") from None


def need_field(obj: Any, key: str, where: str, kind: type | tuple[type, ...] = object) -> Any:
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


def find_image(names: Sequence[str], dirs: Sequence[Path], where: str) -> tuple[str, Path]:
    """The first of ``names`` (already checked by safe_name) that exists in one of ``dirs``, in that order."""
    for d in dirs:
        for n in names:
            if (d / n).is_file():
                return n, d / n
    raise UserError(
        f"{where}: image {names[0]!r} not found in {', '.join(map(str, dirs)) or 'any folder'} "
        "(pass --images with the folder holding the frames)"
    )
