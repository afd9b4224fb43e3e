"""Reading images and masks from disk with checks that name the file and the fix."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from core.errors import UserError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".mpg", ".mpeg", ".m4v")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H x W x 3 uint8 RGB. Grey and RGBA inputs are converted."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image not found: {path} (check the path)")
    if path.stat().st_size == 0:
        raise UserError(f"image file is empty: {path} (re-export or remove it)")
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.size == 0:
        raise UserError(f"cannot decode image: {path} (is it a valid {', '.join(IMAGE_EXTS)} file?)")
    if arr.dtype != np.uint8:  # 16-bit PNG/TIFF: scale to 8 bits
        arr = (arr.astype(np.float32) / max(float(arr.max()), 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2))
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    return np.ascontiguousarray(arr[:, :, ::-1])


def require_input(path: Path) -> None:
    """An entry script's input must exist (infer.py checks before loading a model, the pipeline per input)."""
    if not path.exists():
        raise UserError(f"input not found: {path} (give an image, a folder of images, or a video)")


def read_mask(path: str | Path, threshold: int = 128) -> np.ndarray:
    """Read a mask as H x W uint8 in {0, 1}: pixels >= threshold are lesion.

    Thresholding (not `> 0`) matters: Kvasir-SEG's masks are JPEGs whose values scatter around 0 and 255.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mask not found: {path} (check the path)")
    if path.stat().st_size == 0:
        raise UserError(f"mask file is empty: {path} (re-export or remove it)")
    arr = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if arr is None or arr.size == 0:
        raise UserError(f"cannot decode mask: {path} (is it a valid image file?)")
    return (arr >= threshold).astype(np.uint8)


def prob_to_uint8(prob: np.ndarray) -> np.ndarray:
    """Probability map in [0, 1] -> uint8 0..255 (rounded), the form maps are saved and scored in."""
    return np.clip(np.round(np.asarray(prob, dtype=np.float32) * 255), 0, 255).astype(np.uint8)


def list_images(folder: str | Path) -> dict[str, Path]:
    """Image files of a folder by stem, in name order (suffixes: IMAGE_EXTS, any case)."""
    return {p.stem: p for p in sorted(Path(folder).iterdir()) if p.suffix.lower() in IMAGE_EXTS}
