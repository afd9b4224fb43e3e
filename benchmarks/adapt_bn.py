"""Test-time BatchNorm adaptation (AdaBN): does re-estimating a model's BatchNorm statistics on another centre's
unlabelled images help it there? A probe for the cross-centre protocol (README "Cross-centre accuracy"), not a
feature: it writes an adapted copy of a checkpoint, which cross_centre.py then scores and pairs with the original.

    python benchmarks/adapt_bn.py --checkpoint outputs/xc/baseline/kvasir/checkpoints/best \
        --images ../shared/data/cvc-clinicdb/images --out outputs/xc/adabn/kvasir/checkpoints/best
    python benchmarks/cross_centre.py --recipe adabn --directions kvasir   # scored, paired with the baseline

Every BatchNorm layer's running mean and variance are recomputed as the plain average over the images (each resized
to the checkpoint's input size as inference resizes them, in batches of ``--batch``); ``--blend B`` keeps B of the
training statistics (0: the target centre's alone). Weights, heads and everything else are unchanged. The copy's card
records the images it was adapted on. No labels are read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.errors import UserError  # noqa: E402
from data.io import list_images, read_image  # noqa: E402
from data.transforms import normalise_batch  # noqa: E402
from models.checkpoint import checkpoint_stem, load_checkpoint, save_checkpoint  # noqa: E402
from models.predictor import resize_frames  # noqa: E402


@torch.no_grad()
def adapt_batchnorm(model: torch.nn.Module, batches, blend: float = 0.0) -> int:
    """Recompute every BatchNorm layer's running statistics over ``batches`` (normalised B x 3 x H x W tensors) as
    a plain average, then keep ``blend`` of the old ones. Returns the number of layers adapted; the model is left in
    eval mode."""
    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    old = [(b.running_mean.clone(), b.running_var.clone(), b.momentum) for b in layers]
    for b in layers:
        b.reset_running_stats()
        b.momentum = None  # cumulative average over every batch
        b.train()
    for x in batches:
        model.mask_logits(x)
    for b, (mean, var, momentum) in zip(layers, old):
        b.running_mean.mul_(1 - blend).add_(mean, alpha=blend)
        b.running_var.mul_(1 - blend).add_(var, alpha=blend)
        b.momentum = momentum
    model.eval()
    return len(layers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="the checkpoint to adapt (path without extension)")
    ap.add_argument("--images", type=Path, required=True, help="a folder of the target centre's images")
    ap.add_argument("--out", required=True, help="where the adapted copy goes (path without extension)")
    ap.add_argument("--blend", type=float, default=0.0, help="share of the training statistics kept (0 to 1)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)
    if not 0.0 <= args.blend <= 1.0:
        raise SystemExit(f"--blend={args.blend}: give a share between 0 and 1")
    if checkpoint_stem(args.out).resolve() == checkpoint_stem(args.checkpoint).resolve():
        raise SystemExit("--out is the checkpoint itself; give another path so the original is kept")
    if not args.images.is_dir():
        raise SystemExit(f"--images {args.images}: not a folder; give the folder of the target centre's images")
    try:
        model, card = load_checkpoint(args.checkpoint)
    except UserError as e:
        raise SystemExit(f"--checkpoint {args.checkpoint}: {e}") from None
    paths = sorted(list_images(args.images).values())
    if not paths:
        raise SystemExit(f"--images {args.images}: no images found")
    size, mean, std = card.input.size, card.input.mean, card.input.std

    def batches():
        for i in range(0, len(paths), args.batch):
            frames = resize_frames([read_image(p) for p in paths[i : i + args.batch]], size)
            yield normalise_batch(frames, mean=mean, std=std)

    n = adapt_batchnorm(model, batches(), args.blend)
    doc = card.to_dict()
    doc["batchnorm_adapted"] = {"images": str(args.images), "count": len(paths), "blend": args.blend, "layers": n}
    doc["notes"] = (doc.get("notes") or "") + (
        f" BatchNorm statistics re-estimated on {len(paths)} unlabelled images of {args.images} (blend {args.blend})."
    )
    for key in ("date", "git_commit"):  # the copy's own (save_checkpoint fills them, and a fresh save_id)
        doc.pop(key, None)
    print(f"{n} BatchNorm layers adapted on {len(paths)} images -> {save_checkpoint(args.out, model, doc)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
