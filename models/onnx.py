"""ONNX export of a checkpoint (segmenter + heads) and an ONNX Runtime model with the PyTorch model's call shape.

    python -m models.export --onnx --dst checkpoints/endolift_polyp_unet_mnv2   # -> ...mnv2.onnx beside it

The file: opset 18, one input ``image`` (float32, N x 3 x S x S, S = card.input.size, RGB normalised with the card's
mean/std, i.e. (pixel / 255 - mean) / std), dynamic batch N; plus ``covariates`` (N x C float32, NaN = missing)
when the model reads clinical covariates. Outputs: ``mask`` (N x 1 x S x S lesion logits; sigmoid -> probability)
and one output per head (raw logits; models.heads.head_probabilities with the card's kind and temperature turns
them into class probabilities). The checkpoint's ``save_id`` is stored in the file's metadata, so a file that no
longer matches its checkpoint is refused. This is the layout TensorRT and NVIDIA Holoscan's inference operators
take (NCHW float input, named outputs); see README "Deploying with ONNX".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.errors import UserError
from core.files import atomic_write

OPSET = 18


class _Outputs(torch.nn.Module):
    """EndoNet's dict output as a tuple (ONNX outputs are positional): mask, then heads in card order."""

    def __init__(self, model: torch.nn.Module, heads: list[str], covariates: bool) -> None:
        super().__init__()
        self.model, self.heads, self.covariates = model, heads, covariates

    def forward(self, image: torch.Tensor, covariates: torch.Tensor | None = None):
        out = self.model(image, covariates if self.covariates else None)
        return tuple([out["mask"]] + [out[h] for h in self.heads])


def onnx_path(stem: str | Path, int8: bool = False) -> Path:
    from models.checkpoint import checkpoint_stem

    s = checkpoint_stem(stem)
    return s.with_name(s.name + (".int8.onnx" if int8 else ".onnx"))


def export_onnx(stem: str | Path, *, batch: int = 2) -> Path:
    """Export the checkpoint at ``stem`` to ``stem.onnx`` (one self-contained file, written atomically)."""
    import onnx

    from models.checkpoint import load_checkpoint
    from models.net import fold_batchnorm

    model, card = load_checkpoint(stem)
    fold_batchnorm(model)
    heads, cov = list(card.heads), card.covariates
    wrapped = _Outputs(model.eval(), heads, bool(cov)).eval()
    s = card.input.size
    args: tuple[Any, ...] = (torch.randn(batch, 3, s, s),)
    names = ["image"]
    dims: dict[str, Any] = {"image": {0: torch.export.Dim("batch", min=1, max=256)}}
    if cov:
        args += (torch.zeros(batch, len(cov)),)
        names.append("covariates")
        dims["covariates"] = {0: dims["image"][0]}
    out = onnx_path(stem)
    program = torch.onnx.export(
        wrapped,
        args,
        input_names=names,
        output_names=["mask", *heads],
        dynamic_shapes=dims,
        opset_version=OPSET,
        dynamo=True,
        verbose=False,
    )
    proto = program.model_proto
    onnx.helper.set_model_props(
        proto, {"endolift_save_id": str(card.save_id), "endolift_name": card.name, "endolift_input_size": str(s)}
    )
    with atomic_write(out) as tmp:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
    return out


def quantize_int8(stem: str | Path, calibration: list[Path], *, batch: int = 8) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) of ``stem.onnx`` -> ``stem.int8.onnx``, calibrated on
    the activations of ``calibration`` images preprocessed exactly as the Predictor does."""
    import cv2
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from data.io import read_image
    from data.transforms import normalise_batch
    from models.checkpoint import read_card

    card = read_card(stem)
    s = card.input.size
    images = [cv2.resize(read_image(p), (s, s), interpolation=cv2.INTER_AREA) for p in calibration]
    batches = [
        normalise_batch(images[i : i + batch], mean=card.input.mean, std=card.input.std).numpy()
        for i in range(0, len(images), batch)
    ]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(batches)

        def get_next(self):
            b = next(self.it, None)
            if b is None:
                return None
            feed = {"image": b}
            if card.covariates:
                feed["covariates"] = np.full((len(b), len(card.covariates)), np.nan, np.float32)
            return feed

    out = onnx_path(stem, int8=True)
    with atomic_write(out) as tmp:
        quantize_static(
            str(onnx_path(stem)),
            str(tmp),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
    return out


class OrtModel:
    """An ONNX Runtime session called like EndoNet: (image tensor, covariates) -> {"mask": ..., head: ...}."""

    def __init__(self, stem: str | Path, card: Any, *, threads: int | None = None, int8: bool = False) -> None:
        import onnxruntime as ort

        path = onnx_path(stem, int8)
        if not path.is_file():
            how = "--onnx-int8 --calibration DIR" if int8 else "--onnx"
            raise UserError(f"{path} not found: export it with python -m models.export {how} --dst {stem}")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable files
            raise UserError(f"{path} is not a readable ONNX model ({e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if card.save_id and meta.get("endolift_save_id") != card.save_id:
            raise UserError(f"{path} was exported from another save of this checkpoint: export it again")
        self.heads, self.n_cov = list(card.heads), len(card.covariates)

    def __call__(self, image: torch.Tensor, covariates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        feed = {"image": image.detach().float().contiguous().cpu().numpy()}
        if self.n_cov:
            feed["covariates"] = (
                covariates.detach().float().cpu().numpy()
                if covariates is not None
                else np.full((image.shape[0], self.n_cov), np.nan, np.float32)
            )
        outs = self.session.run(None, feed)
        return {name: torch.from_numpy(o) for name, o in zip(["mask", *self.heads], outs)}
