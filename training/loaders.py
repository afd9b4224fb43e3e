"""DataLoaders for training and validation from plain arguments (the entry script passes config values).

Reproducibility: the order of an epoch is a function of (seed, epoch), and each training sample's augmentation a
function of (seed, epoch, index) - not of which worker process draws it or of what ran before. So two runs with
the same seed see the same batches, and a run killed and resumed from its last epoch continues exactly as the
uninterrupted run would have (the model's own random state is saved with the checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from core.settings import Bool, Choice, Free, Num, Numbers, Text, section, setting
from data.datasets import Record, RecordDataset
from data.transforms import A, build_transform


@dataclass(kw_only=True)
class CrossValidationSettings:
    """``data.cv.*``: patient-level k-fold cross-validation (data/splits.py)."""

    folds: int | None = setting(Num(2, 1000, integer=True, nullable=True))  # k; null = no cross-validation
    fold: int = setting(Num(0, 999, integer=True))
    seed: int = setting(Num(0, integer=True))
    repeat: int = setting(Num(0, 999, integer=True))
    repeats: int = setting(Num(1, 1000, integer=True))
    stratify: str | None = setting(Text(nullable=True))  # a head whose labels balance the folds


@dataclass(kw_only=True)
class DataSettings:
    """``data.*`` (configs/train.yaml's shared part and configs/data/ hold the defaults): what the loaders below,
    data/splits.py, the card and the informative-frame rule read. The sources, label maps and group lists are the
    user's: a closed schema does not look inside them."""

    manifest: str | None = setting(Text(nullable=True))  # configs/data/manifest.yaml: the manifest file
    cases: str | None = setting(Text(nullable=True))  # and its per-case table
    n_cases: int = setting(Num(1, integer=True))  # configs/data/synthetic_cases.yaml: cases drawn ...
    n_frames: int = setting(Num(1, integer=True))  # ... and their frames
    size: int = setting(Num(32, 4096, integer=True, multiple_of=32))
    resize: str = setting(Choice(("stretch", "letterbox")))  # data.transforms.build_transform's
    mean: list[float] = setting(Numbers(3))
    std: list[float] = setting(Numbers(3))
    cache: bool = setting(Bool())
    batch_size: int = setting(Num(1, 4096, integer=True))
    num_workers: int = setting(Num(0, 64, integer=True))
    val_fraction: float = setting(Num(0, 1, hi_open=True))
    split_seed: int = setting(Num(0, integer=True))
    val_groups: list[Any] = setting(Free(open_keys=True))
    labelled_only: bool = setting(Bool())
    frame_quality: bool = setting(Bool())
    case_min_frames: int = setting(Num(1, integer=True))
    # data.quality.is_informative's threshold: the loss weighs frames by it, the card records it, and calibration,
    # evaluation and the report read it from the card
    min_lesion_fraction: float = setting(Num(0, 1))
    cv: CrossValidationSettings = section(CrossValidationSettings)
    group: str = setting(Choice(("column", "frame")))
    label_definition: dict[str, str] = setting(Free(open_keys=True))
    label_source: dict[str, str] = setting(Free(open_keys=True))  # values: training.prepare.declare_labels
    label_declared_by: str | None = setting(Text(nullable=True))
    train_sources: list[dict[str, Any]] = setting(Free(open_keys=True))
    val_sources: list[dict[str, Any]] = setting(Free(open_keys=True))
    test_sets: dict[str, Any] = setting(Free(open_keys=True))


class EpochSampler(Sampler[int]):
    """Deterministic per-epoch order, sharded across DDP ranks like DistributedSampler (padded to equal shares).

    Each yielded index is ``epoch * n + i`` so that the dataset knows the epoch of the sample it is asked for
    (RecordDataset seeds the augmentation from it); worker processes need no shared state.
    """

    def __init__(self, n: int, *, shuffle: bool, seed: int, world_size: int = 1, rank: int = 0) -> None:
        self.n, self.shuffle, self.seed = n, shuffle, seed
        self.world_size, self.rank, self.epoch = world_size, rank, 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        order = (order * math.ceil(total / max(1, self.n)))[:total]
        return iter([self.epoch * self.n + i for i in order[self.rank :: self.world_size]])

    def __len__(self) -> int:
        return self.per_rank


def make_loader(
    records: Sequence[Record],
    *,
    augment: Sequence[A.BasicTransform],
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    resize: str,
    heads: Sequence[str],
    batch_size: int,
    num_workers: int,
    cache: bool,
    train: bool,
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
    covariates: Sequence[str] = (),
    quality: bool = False,
) -> DataLoader:
    """One loader. Training shuffles and drops the last partial batch; under DDP each rank gets its share.
    covariates: clinical covariate names each sample carries; quality: add the poor_quality flag (blur, glare)."""
    tf = build_transform(augment, size=size, mean=mean, std=std, resize=resize)
    cache_size = size if cache and resize == "stretch" else None
    ds = RecordDataset(
        records,
        transform=tf,
        heads=heads,
        cache_size=cache_size,
        covariates=covariates,
        quality=quality,
        seed=seed if train else None,
    )
    mp = torch.multiprocessing
    forked = (mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]) == "fork"  # Linux's default
    if cache_size and num_workers > 0 and forked:
        ds.fill_cache(threads=num_workers)  # one copy, shared by the forked workers (not one per worker)
    sampler = EpochSampler(
        len(ds), shuffle=train, seed=seed, world_size=world_size if train else 1, rank=rank if train else 0
    )
    kwargs: dict[str, Any] = {"persistent_workers": True} if num_workers > 0 else {}
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=train and len(sampler) > batch_size,
        **kwargs,
    )


def train_val_loaders(
    train_records: Sequence[Record],
    val_records: Sequence[Record],
    data: Mapping[str, Any],
    *,
    augment_train: Sequence[A.BasicTransform],
    augment_eval: Sequence[A.BasicTransform],
    heads: Sequence[str],
    covariates: Sequence[str] = (),
    world_size: int = 1,
    rank: int = 0,
    seed: int = 0,
) -> tuple[DataLoader, DataLoader | None]:
    """The training loader (sharded across DDP ranks) and the validation loader (None without validation records),
    built alike from a data config's values (size, mean, std, resize, batch_size, num_workers, cache,
    frame_quality)."""
    common: dict[str, Any] = dict(
        size=data["size"],
        mean=data["mean"],
        std=data["std"],
        resize=data["resize"],
        heads=list(heads),
        batch_size=data["batch_size"],
        num_workers=data["num_workers"],
        cache=data["cache"],
        covariates=covariates,
        quality=data["frame_quality"],
    )
    train = make_loader(
        train_records, augment=augment_train, train=True, world_size=world_size, rank=rank, seed=seed, **common
    )
    val = make_loader(val_records, augment=augment_eval, train=False, **common) if val_records else None
    return train, val
