"""albumentations pipelines: the augmentation presets come from configs/augment/, normalisation is appended here.

Image and mask always go through one ``A.Compose`` call, so every geometric transform moves both together.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations otherwise calls out at import

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from albumentations.pytorch import ToTensorV2  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_transform(
    augment: Sequence[A.BasicTransform],
    *,
    size: int | Sequence[int],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    resize: str = "stretch",
) -> A.Compose:
    """Compose ``augment`` (already-built albumentations transforms) + resize + normalise + to-tensor.

    size: output side (int) or (height, width).
    resize: "stretch" resizes straight to size (the PraNet protocol), "letterbox" keeps the aspect ratio and pads.
    Returns a callable(image=, mask=) -> {"image": 3xHxW float32 tensor, "mask": HxW uint8 tensor}.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if resize == "stretch":
        sizing: list[A.BasicTransform] = [A.Resize(h, w)]
    elif resize == "letterbox":
        sizing = [A.LongestMaxSize(max_size=max(h, w)), A.PadIfNeeded(h, w, border_mode=0, fill=0, fill_mask=0)]
    else:
        raise ValueError(f"resize must be 'stretch' or 'letterbox', got {resize!r}")
    return A.Compose([*augment, *sizing, A.Normalize(mean=mean, std=std), ToTensorV2()])


def normalise_batch(
    images: np.ndarray | Sequence[np.ndarray],
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """B x H x W x 3 uint8 RGB (already at model size) -> B x 3 x H x W float32 normalised tensor."""
    arr = torch.from_numpy(np.ascontiguousarray(np.stack(list(images)))).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (arr - m) / s
