"""Group-aware splits: frames of one patient / video / sequence never straddle train and validation."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from data.errors import UserError

T = TypeVar("T")


def group_split(
    records: Sequence[T], *, val_fraction: float, seed: int = 0, group_of=lambda r: r.group
) -> tuple[list[T], list[T]]:
    """Split records into (train, val) with whole groups on each side.

    Groups are shuffled with ``seed`` and taken into validation until it holds at least ``val_fraction`` of the
    records. Deterministic for a given seed and record order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return list(records), []
    by_group: dict[str, list[T]] = defaultdict(list)
    for r in records:
        by_group[group_of(r)].append(r)
    groups = sorted(by_group)
    if len(groups) < 2:
        raise UserError("cannot carve a validation split from a single group; add data or set data.val_fraction=0")
    random.Random(seed).shuffle(groups)
    target = val_fraction * len(records)
    val_groups: set[str] = set()
    n_val = 0
    for g in groups:
        if n_val >= target or len(val_groups) == len(groups) - 1:
            break
        val_groups.add(g)
        n_val += len(by_group[g])
    train = [r for r in records if group_of(r) not in val_groups]
    val = [r for r in records if group_of(r) in val_groups]
    return train, val


def group_kfold(
    records: Sequence[T], *, k: int, seed: int = 0, group_of=lambda r: r.group, stratify_of=None
) -> list[int]:
    """Assign each record a fold 0..k-1 with whole groups (patients) in one fold, stratified when possible.

    stratify_of(record) -> a label or None. A group's stratum is its most frequent known label ('unknown' when it
    has none); within each stratum the groups are shuffled with ``seed`` and dealt round-robin, starting each
    stratum at the fold that is currently smallest, so every fold gets a similar share of each label.
    Returns one fold index per record, in order.
    """
    if k < 2:
        raise UserError(f"data.cv.folds must be >= 2, got {k}")
    by_group: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(records):
        by_group[group_of(r)].append(i)
    if len(by_group) < k:
        raise UserError(f"cannot make {k} folds from {len(by_group)} groups (patients); lower data.cv.folds")
    strata: dict[str, list[str]] = defaultdict(list)
    for g, idx in sorted(by_group.items()):
        labels = [stratify_of(records[i]) for i in idx] if stratify_of else []
        labels = [x for x in labels if x is not None]
        strata["unknown" if not labels else str(max(set(labels), key=labels.count))].append(g)
    rng = random.Random(seed)
    fold_of_group: dict[str, int] = {}
    sizes = [0] * k
    for key in sorted(strata):
        groups = strata[key]
        rng.shuffle(groups)
        start = min(range(k), key=lambda f: (sizes[f], f))
        for j, g in enumerate(groups):
            f = (start + j) % k
            fold_of_group[g] = f
            sizes[f] += len(by_group[g])
    return [fold_of_group[group_of(r)] for r in records]


def cv_split(
    records: Sequence[T], *, folds: int, fold: int, seed: int = 0, stratify_head: str | None = None
) -> tuple[list[T], list[T]]:
    """(records outside fold ``fold``, records in it) of a patient-level, label-stratified k-fold split."""
    if not 0 <= fold < folds:
        raise UserError(f"data.cv.fold must be in 0..{folds - 1}, got {fold}")
    strat = (
        (lambda r: r.labels.get(stratify_head, -1) if r.labels.get(stratify_head, -1) >= 0 else None)
        if stratify_head
        else None
    )
    assigned = group_kfold(records, k=folds, seed=seed, stratify_of=strat)
    return ([r for r, f in zip(records, assigned) if f != fold], [r for r, f in zip(records, assigned) if f == fold])


def splits_for(data: Mapping[str, Any], *, heads: dict[str, Sequence[str]], covariates: Sequence[str] = ()):
    """training_splits with a data config's values (sources, validation fraction and seed, cv, labelled_only)."""
    cv = data["cv"]
    return training_splits(
        data["train_sources"],
        data["val_sources"],
        heads=heads,
        covariates=covariates,
        val_fraction=data["val_fraction"],
        split_seed=data["split_seed"],
        cv_folds=cv["folds"],
        cv_fold=cv["fold"],
        cv_seed=cv["seed"],
        cv_stratify=cv["stratify"],
        labelled_only=data["labelled_only"],
    )


def training_splits(
    train_sources: Sequence[dict],
    val_sources: Sequence[dict],
    *,
    heads: dict[str, Sequence[str]],
    covariates: Sequence[str] = (),
    val_fraction: float,
    split_seed: int,
    cv_folds: int | None = None,
    cv_fold: int = 0,
    cv_seed: int = 0,
    cv_stratify: str | None = None,
    labelled_only: bool = False,
) -> tuple[list, list, list]:
    """(train, validation, held-out fold) records for one training run.

    With cv_folds, the fold ``cv_fold`` of a patient-level k-fold split is held out (predicted after training) and
    the rest is split into train and validation as usual: by ``val_sources`` when given, else by group.
    labelled_only drops frames no head has a label for (they teach a frozen segmenter's heads nothing).
    """
    from data.datasets import records_from_sources

    records = records_from_sources(train_sources, heads, covariates=covariates)
    heldout: list = []
    if cv_folds:
        records, heldout = cv_split(records, folds=cv_folds, fold=cv_fold, seed=cv_seed, stratify_head=cv_stratify)
    if val_sources:
        train, val = list(records), records_from_sources(val_sources, heads, covariates=covariates)
    else:
        train, val = group_split(records, val_fraction=val_fraction, seed=split_seed)
    if labelled_only:
        train, val = ([r for r in rs if any(v >= 0 for v in r.labels.values())] for rs in (train, val))
    return train, val, heldout
