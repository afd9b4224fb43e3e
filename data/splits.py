"""Group-aware splits: frames of one patient / video / sequence never straddle train and validation."""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence, TypeVar

from data.errors import UserError

T = TypeVar("T")


def group_split(records: Sequence[T], *, val_fraction: float, seed: int = 0,
                group_of=lambda r: r.group) -> tuple[list[T], list[T]]:
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
