"""Group-aware splits: frames of one patient / video / sequence never straddle train and validation."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from core.errors import UserError

T = TypeVar("T")


def unit_of(record: Any) -> str:
    """The independent unit of a record: its patient when known, else its case/group (data.datasets.Record.unit)."""
    return getattr(record, "patient", None) or record.group


def group_split(
    records: Sequence[T],
    *,
    val_fraction: float,
    seed: int = 0,
    group_of=unit_of,
    always_val: Sequence[str] = (),
) -> tuple[list[T], list[T]]:
    """Split records into (train, val) with whole groups on each side.

    Groups are shuffled with ``seed`` and taken into validation until it holds at least ``val_fraction`` of the
    records. Deterministic for a given seed and record order. ``always_val``: groups that go to validation whatever
    the seed (e.g. held-out sequences a test set reports as never trained on); they are added after the draw, so
    a seed that already drew them gives the same split as without them.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise UserError(f"data.val_fraction must be in [0, 1), got {val_fraction}")
    forced = {str(g) for g in always_val}
    if val_fraction == 0.0 and not forced:
        return list(records), []
    by_group: dict[str, list[T]] = defaultdict(list)
    for r in records:
        by_group[group_of(r)].append(r)
    groups = sorted(by_group)
    unknown = sorted(forced - set(groups))
    if unknown:
        raise UserError(f"data.val_groups: no training record is in group(s) {unknown} (groups look like 'name/id')")
    if len(groups) < 2:
        raise UserError("cannot carve a validation split from a single group; add data or set data.val_fraction=0")
    random.Random(seed).shuffle(groups)
    target = val_fraction * len(records)
    val_groups: set[str] = set()
    n_val = 0
    for g in groups:
        if val_fraction == 0.0 or n_val >= target or len(val_groups) == len(groups) - 1:
            break
        val_groups.add(g)
        n_val += len(by_group[g])
    val_groups |= forced
    if len(val_groups) == len(groups):
        raise UserError("data.val_groups leave no group for training")
    train = [r for r in records if group_of(r) not in val_groups]
    val = [r for r in records if group_of(r) in val_groups]
    return train, val


def group_kfold(records: Sequence[T], *, k: int, seed: int = 0, group_of=unit_of, stratify_of=None) -> list[int]:
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


def fold_seed(seed: int, repeat: int = 0) -> int:
    """The fold assignment's seed of repeat ``repeat`` of a repeated cross-validation (data.cv.repeat)."""
    return int(seed) + 1000 * int(repeat)


def development_folds(
    records: Sequence[T], *, folds: int, seed: int = 0, repeat: int = 0, stratify_head: str | None = None
) -> list[int]:
    """The cross-validation folds of the development records: the one function that train.py and
    ``data.check --folds`` both use, so what the audit counts is what training holds out. Records of the
    ``test`` split are refused (they are never part of cross-validation); patients stay whole."""
    test = [r for r in records if getattr(r, "split", None) == "test"]
    if test:
        raise UserError(f"cross-validation folds were asked of test records (e.g. {test[0].id}); a bug")
    strat = (
        (lambda r: r.labels.get(stratify_head, -1) if r.labels.get(stratify_head, -1) >= 0 else None)
        if stratify_head
        else None
    )
    return group_kfold(records, k=folds, seed=fold_seed(seed, repeat), stratify_of=strat)


def cv_split(
    records: Sequence[T],
    *,
    folds: int,
    fold: int,
    seed: int = 0,
    repeat: int = 0,
    stratify_head: str | None = None,
) -> tuple[list[T], list[T]]:
    """(records outside fold ``fold``, records in it) of a patient-level, label-stratified k-fold split."""
    if not 0 <= fold < folds:
        raise UserError(f"data.cv.fold must be in 0..{folds - 1}, got {fold}")
    assigned = development_folds(records, folds=folds, seed=seed, repeat=repeat, stratify_head=stratify_head)
    return ([r for r, f in zip(records, assigned) if f != fold], [r for r, f in zip(records, assigned) if f == fold])


def assert_disjoint(parts: Mapping[str, Sequence[Any]]) -> None:
    """Refuse any patient (unit) or case (group) found in two parts, e.g. train / validation / held-out fold."""
    seen: dict[str, str] = {}
    for part, records in parts.items():
        keys = {k for r in records for k in {("patient", unit_of(r)), ("case", r.group)}}
        for kind, key in sorted(keys):
            other = seen.get(f"{kind}:{key}")
            if other is not None and other != part:
                raise UserError(
                    f"{kind} '{key}' is in both the {other} and the {part} records: they must be disjoint by "
                    "patient (check the split column, data.val_sources and data.cv)"
                )
            seen[f"{kind}:{key}"] = part


def split_summary(parts: Mapping[str, Sequence[Any]]) -> dict[str, Any]:
    """Per part: records, cases and patients, and the sorted patient ids (saved with a run as splits.json, so
    that metrics.cv can check disjointness again from what each fold really used)."""
    return {
        part: {
            "frames": len(rs),
            "cases": len({r.group for r in rs}),
            "patients": len({unit_of(r) for r in rs}),
            "units": sorted({unit_of(r) for r in rs}),
            "groups": sorted({r.group for r in rs}),
        }
        for part, rs in parts.items()
    }


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
        val_groups=data.get("val_groups") or (),
        cv_folds=cv["folds"],
        cv_fold=cv["fold"],
        cv_seed=cv["seed"],
        cv_repeat=cv.get("repeat", 0),
        cv_stratify=cv["stratify"],
        labelled_only=data["labelled_only"],
        group=data.get("group", "column"),
    )


def training_splits(
    train_sources: Sequence[dict],
    val_sources: Sequence[dict],
    *,
    heads: dict[str, Sequence[str]],
    covariates: Sequence[str] = (),
    val_fraction: float,
    split_seed: int,
    val_groups: Sequence[str] = (),
    cv_folds: int | None = None,
    cv_fold: int = 0,
    cv_seed: int = 0,
    cv_repeat: int = 0,
    cv_stratify: str | None = None,
    labelled_only: bool = False,
    group: str = "column",
) -> tuple[list, list, list]:
    """(train, validation, held-out fold) records for one training run, disjoint by patient (checked).

    The development records are the train sources' rows that are not ``test`` (an unsplit manifest row is
    development data). With cv_folds, the fold ``cv_fold`` of a patient-level k-fold split of them is held out
    (predicted after training); the rest is split into train and validation: by ``val_sources`` when given (their
    patients validate, less those the fold holds out; training keeps the other patients), else by the manifest's
    ``val`` rows when there are any, else carved by patient (``val_groups`` always in validation). labelled_only
    drops frames no head has a label for.
    group: data.group; ``column`` (a manifest must name each frame's case) applies when heads are trained or
    folds are made, since their intervals resample cases; else a missing column makes each frame its own case.
    """
    from data.datasets import records_from_sources

    grouping = group if (heads or cv_folds or group == "frame") else "optional"
    records = records_from_sources(train_sources, heads, covariates=covariates, group=grouping)
    heldout: list = []
    if cv_folds:
        records, heldout = cv_split(
            records, folds=cv_folds, fold=cv_fold, seed=cv_seed, repeat=cv_repeat, stratify_head=cv_stratify
        )
    if val_sources:  # validation = these patients, less any held out by the fold; training = the rest
        held = {unit_of(r) for r in heldout}
        val = [
            r
            for r in records_from_sources(val_sources, heads, covariates=covariates, group=grouping)
            if unit_of(r) not in held
        ]
        in_val = {unit_of(r) for r in val}
        train = [r for r in records if unit_of(r) not in in_val]
    elif any(r.split == "val" for r in records):
        train, val = [r for r in records if r.split != "val"], [r for r in records if r.split == "val"]
    else:
        held_groups = {r.group for r in heldout}  # a fold may hold these out instead: never trained on either way
        forced = [g for g in val_groups if str(g) not in held_groups]
        train, val = group_split(records, val_fraction=val_fraction, seed=split_seed, always_val=forced)
    if labelled_only:
        train, val = ([r for r in rs if any(v >= 0 for v in r.labels.values())] for rs in (train, val))
    assert_disjoint({"training": train, "validation": val, "held-out fold": heldout})
    return train, val, heldout
