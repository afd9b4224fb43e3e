"""DataLoaders for training and validation from plain arguments (the entry script passes config values)."""
from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
from torch.utils.data import DataLoader, DistributedSampler

from data.datasets import Record, RecordDataset
from data.transforms import build_transform


def make_loader(records: Sequence[Record], *, augment: Sequence[A.BasicTransform], size: int, mean: Sequence[float],
                std: Sequence[float], resize: str, heads: Sequence[str], batch_size: int, num_workers: int,
                cache: bool, train: bool, world_size: int = 1, rank: int = 0, seed: int = 0,
                covariates: Sequence[str] = (), quality: bool = False) -> DataLoader:
    """One loader. Training shuffles and drops the last partial batch; under DDP a DistributedSampler shards.
    covariates: clinical covariate names each sample carries; quality: add the poor_quality flag (blur, glare)."""
    tf = build_transform(augment, size=size, mean=mean, std=std, resize=resize)
    cache_size = size if cache and resize == "stretch" else None
    ds = RecordDataset(records, transform=tf, heads=heads, cache_size=cache_size, covariates=covariates,
                       quality=quality)
    sampler = DistributedSampler(ds, num_replicas=world_size, rank=rank, shuffle=train, seed=seed) \
        if world_size > 1 else None
    kwargs: dict[str, Any] = {"persistent_workers": True} if num_workers > 0 else {}
    return DataLoader(ds, batch_size=batch_size, shuffle=train and sampler is None, sampler=sampler,
                      num_workers=num_workers, drop_last=train and len(ds) > batch_size, **kwargs)
