"""Every setting of the three entry scripts, checked once where it enters (before any work starts).

Each script has a table: dotted key -> rule (type, range or choices, whether null is allowed). A bad value stops
the script with one line naming the key, the value and what is allowed (exit code 2), instead of a traceback deep
in the library or a silently wrong run. Library code below takes the values as typed keyword arguments.
Keys absent from a configuration are skipped (a custom data config need not have every optional key). The entry
scripts pass their configuration as a plain, resolved dict (OmegaConf.to_container), like every library call.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import UserError

_MISSING = object()


@dataclass(frozen=True)
class Num:
    lo: float | None = None
    hi: float | None = None
    integer: bool = False
    lo_open: bool = False  # lo itself not allowed
    hi_open: bool = False
    nullable: bool = False
    multiple_of: int | None = None

    def check(self, v: Any) -> str | None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (self.integer and not float(v).is_integer()):
            return f"must be {'an integer' if self.integer else 'a number'}"
        if isinstance(v, float) and not math.isfinite(v):
            return "must be finite"
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return self.describe()
        if self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)):
            return self.describe()
        if self.multiple_of and int(v) % self.multiple_of:
            return self.describe()
        return None

    def describe(self) -> str:
        kind = "an integer" if self.integer else "a number"
        lo = "" if self.lo is None else f"{'>' if self.lo_open else '>='} {self.lo:g}"
        hi = "" if self.hi is None else f"{'<' if self.hi_open else '<='} {self.hi:g}"
        rng = " and ".join(x for x in (lo, hi) if x)
        mult = f", a multiple of {self.multiple_of}" if self.multiple_of else ""
        return f"must be {kind}{' ' + rng if rng else ''}{mult}{' or null' if self.nullable else ''}"


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]
    nullable: bool = False

    def check(self, v: Any) -> str | None:
        return None if v in self.options else self.describe()

    def describe(self) -> str:
        return f"must be one of {', '.join(map(str, self.options))}{' or null' if self.nullable else ''}"


@dataclass(frozen=True)
class Bool:
    nullable: bool = False

    def check(self, v: Any) -> str | None:
        return None if isinstance(v, bool) else "must be true or false"


@dataclass(frozen=True)
class Size:
    """[width, height] in pixels, each an even integer in 16..8192 (H.264 with 4:2:0 needs even sides)."""

    nullable: bool = True

    def check(self, v: Any) -> str | None:
        ok = (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) and 16 <= x <= 8192 and x % 2 == 0 for x in v)
        )
        return None if ok else "must be [width, height], even integers in 16..8192, or null"


@dataclass(frozen=True)
class Scales:
    """A list of positive scale factors, or null."""

    nullable: bool = True

    def check(self, v: Any) -> str | None:
        ok = (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) > 0
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and 0.25 <= x <= 4 for x in v)
        )
        return None if ok else "must be a non-empty list of scale factors in 0.25..4, or null"


@dataclass(frozen=True)
class Text:
    """A non-empty string (a path, a device name), or with ``listable`` a non-empty list of them."""

    nullable: bool = False
    listable: bool = False

    def check(self, v: Any) -> str | None:
        items = v if self.listable and isinstance(v, Sequence) and not isinstance(v, str) else [v]
        ok = bool(items) and all(isinstance(x, str) and x.strip() for x in items)
        return None if ok else ("must be a path or a list of paths" if self.listable else "must be a non-empty text")


@dataclass(frozen=True)
class NumberMap:
    """A mapping of names to numbers (e.g. a case's covariates: {prior_radiotherapy: 1, dose_gy: 50.4}), or null.
    Its keys are the user's names, so a closed schema does not look inside it."""

    nullable: bool = True
    open_keys: bool = True

    def check(self, v: Any) -> str | None:
        ok = isinstance(v, Mapping) and all(
            isinstance(k, str)
            and (x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)))
            for k, x in v.items()
        )
        return None if ok else "must be a mapping of names to numbers, e.g. '{prior_radiotherapy: 1, dose_gy: 50.4}'"


PRECISIONS = ("fp32", "bf16", "fp16")

TRAIN = {
    "seed": Num(0, 2**32 - 1, integer=True),
    "data.size": Num(32, 4096, integer=True, multiple_of=32),
    "data.resize": Choice(("stretch", "letterbox")),
    "data.batch_size": Num(1, 4096, integer=True),
    "data.num_workers": Num(0, 64, integer=True),
    "data.val_fraction": Num(0, 1, hi_open=True),
    "data.cache": Bool(),
    "data.labelled_only": Bool(),
    "data.frame_quality": Bool(),
    "data.case_min_frames": Num(1, integer=True),
    "data.cv.folds": Num(2, 1000, integer=True, nullable=True),
    "data.cv.fold": Num(0, 999, integer=True),
    "data.cv.repeat": Num(0, 999, integer=True),
    "data.cv.repeats": Num(1, 1000, integer=True),
    "data.group": Choice(("column", "frame")),
    "optim.optimizer.lr": Num(0, 10, lo_open=True),
    "optim.optimizer.weight_decay": Num(0, 10),
    "optim.warmup_epochs": Num(0, integer=True),
    "optim.scheduler.min_lr_ratio": Num(0, 1),
    "loss.kind": Choice(("structure", "dice_bce")),
    "loss.head_weight": Num(0),
    "loss.label_smoothing": Num(0, 1, hi_open=True),
    "loss.min_lesion_fraction": Num(0, 1),
    "loss.uninformative_weight": Num(0, 1),
    "model.arch": Choice(("unet", "unetplusplus", "fpn", "deeplabv3plus")),  # models.build.ARCHITECTURES
    "model.head_hidden": Num(1, integer=True),
    "model.head_dropout": Num(0, 1, hi_open=True),
    "model.head_levels": Num(1, 5, integer=True),
    "model.head_inputs": Choice(("image", "covariates", "fused")),
    "model.ring_fraction": Num(0, 0.5, lo_open=True),
    "trainer.max_epochs": Num(1, integer=True),
    "trainer.precision": Choice(PRECISIONS),
    "trainer.channels_last": Bool(),
    "trainer.threads": Num(1, 1024, integer=True, nullable=True),
    "trainer.grad_clip": Num(0, lo_open=True, nullable=True),
    "trainer.ema.enabled": Bool(),
    "trainer.ema.decay": Num(0, 1, hi_open=True),
    "trainer.multiscale": Scales(),
    "trainer.max_steps_per_epoch": Num(1, integer=True, nullable=True),
    "trainer.freeze": Choice(("segmentation",), nullable=True),
    "trainer.n_boot": Num(0, 100000, integer=True),
    "trainer.progress": Bool(),
}

# infer.py's schema is closed: every key of configs/infer.yaml is here, and a key that is not (a typo, +foo=1) is
# refused before any work (core.errors.check_command_line on the command line, check_settings(closed=True) after)
INFER = {
    "input": Text(listable=True),
    "out_dir": Text(),
    "checkpoint": Text(),
    "device": Text(),
    "precision": Choice(("auto",) + PRECISIONS),
    "backend": Choice(("torch", "onnxruntime", "onnxruntime-int8")),
    "tta": Bool(),
    "frames_as_video": Bool(),
    "out_root": Text(nullable=True),
    "inputs": Text(nullable=True),
    "case": Text(nullable=True),
    "resume": Bool(),
    "inputs_row": Num(0, integer=True, nullable=True),
    "review.batch_size": Num(1, 256, integer=True),
    "review.threshold": Num(0, 1, lo_open=True),
    "review.smoothing": Num(0, 1, lo_open=True),
    "review.min_area_fraction": Num(0, 1, hi_open=True),
    "review.scope_mask": Bool(),
    "review.scope_every": Num(1, integer=True),
    "review.deidentify": Bool(),
    "review.deid_check": Choice(("fail", "warn")),
    "review.deid_every_s": Num(0.04, 3600),
    "review.anonymise_names": Bool(),
    "review.overlay": Bool(),
    "review.write_probs": Bool(),
    "review.report": Bool(),
    "review.frames_fps": Num(0.1, 1000),
    "review.crf": Num(0, 51, integer=True),
    "review.key_frames": Num(0, 100, integer=True),
    "review.overlay_size": Size(),
    "review.min_informative_frames": Num(1, integer=True),
    "review.abstain_below": Num(0, 1),
    "review.streaming": Bool(),
    "review.png_level": Num(0, 9, integer=True),
    "review.x264_preset": Choice(
        ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
    ),
    "review.queue_depth": Num(1, 256, integer=True),
    "review.video_probs_at": Choice(("model", "input")),
    "review.original_video": Bool(),
    "review.research_heads": Bool(),
    "review.covariates": NumberMap(),
}

EVALUATE = {
    "precision": Choice(("auto",) + PRECISIONS),
    "backend": Choice(("torch", "onnxruntime", "onnxruntime-int8")),
    "tta": Bool(),
    "batch_size": Num(1, 1024, integer=True),
    "nsd_tolerance": Num(0, lo_open=True),
    "gallery": Num(0, 100, integer=True),
    "n_boot": Num(0, 100000, integer=True),
    "case_min_frames": Num(1, integer=True),
    "case_min_confidence": Num(0, 1),
}


def closest_key(key: str, rules: Mapping[str, Any]) -> str | None:
    """The valid key a mistyped one most likely meant (review.treshold -> review.threshold), or None."""
    import difflib

    keys = list(rules)
    found = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if not found and "." in key:  # compare the last part among the same group's keys (review.deidentfy)
        group, last = key.rsplit(".", 1)
        same = {k.rsplit(".", 1)[1]: k for k in keys if k.startswith(group + ".")}
        found = [same[m] for m in difflib.get_close_matches(last, list(same), n=1, cutoff=0.6)]
    return found[0] if found else None


def unknown_setting(key: str, rules: Mapping[str, Any], where: str) -> UserError:
    """The one-line error for a key the schema does not have."""
    near = closest_key(key, rules)
    hint = f": did you mean {near}?" if near else ""
    return UserError(f"unknown setting {key}{hint} ({where} lists every setting)")


def known_key(key: str, rules: Mapping[str, Any]) -> bool:
    """Whether ``key`` (dotted, from the command line) is in the schema: a rule's key, a group above rules (review),
    or a name inside a rule whose keys are the user's (review.covariates.dose_gy)."""
    if key in rules or any(k.startswith(key + ".") for k in rules):
        return True
    return any(key.startswith(k + ".") and getattr(r, "open_keys", False) for k, r in rules.items())


def check_settings(
    cfg: Mapping[str, Any], rules: Mapping[str, Any], *, closed: bool = False, where: str = "the config file"
) -> None:
    """cfg: the resolved configuration as plain dicts and lists. Raise UserError for the first setting that breaks
    its rule: 'KEY=VALUE is invalid: RULE'. ``closed``: a key the rules do not name is refused too ('unknown
    setting review.treshold: did you mean review.threshold?')."""
    if closed:
        for key in _leaf_keys(cfg, rules):
            if not known_key(key, rules):
                raise unknown_setting(key, rules, where)
    for key, rule in rules.items():
        value = _select(cfg, key)
        if value is _MISSING:
            continue
        if value is None:
            if getattr(rule, "nullable", False):
                continue
            problem = "must not be null"
        else:
            problem = rule.check(value)
        if problem:
            raise UserError(f"{key}={value!r} is invalid: it {problem}")


def _select(d: Mapping[str, Any], key: str) -> Any:
    for part in key.split("."):
        if not isinstance(d, Mapping) or part not in d:
            return _MISSING
        d = d[part]
    return d


def _leaf_keys(d: Mapping[str, Any], rules: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted keys of a nested configuration, stopping at keys that have a rule (their value is checked whole)."""
    for k, v in d.items():
        key = f"{prefix}{k}"
        if key not in rules and isinstance(v, Mapping) and v:
            yield from _leaf_keys(v, rules, key + ".")
        else:
            yield key
