"""Settings: each rule (type, range or choices, whether null is allowed) declared once, on the typed settings
class beside the code that uses it, and checked where a script's configuration enters (before any work starts).

An owner declares a dataclass whose fields carry their rule: ``arch: str = setting(Choice(ARCHITECTURES))``
(models.build.ModelSettings), a nested class with ``section(EmaSettings)``. A script's table, dotted key -> rule,
is ``rules_of`` its settings class: training/settings.py's TRAIN, metrics/evaluation.py's EVALUATE,
review/options.py's INFER. A bad value stops the script with one line naming the key, the value and what is
allowed (exit code 2), instead of a traceback deep in the library or a silently wrong run; a key the table does not
have is refused with the closest valid one. Library code below takes the values as typed keyword arguments.
Keys absent from a configuration are skipped (a custom data config need not have every optional key). The entry
scripts pass their configuration as a plain, resolved dict (OmegaConf.to_container), like every library call.
The defaults stay in the YAML files of configs/; a settings class that code builds itself (ReviewOptions) has
its own and checks them on construction (``check_object``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from core.errors import UserError

_MISSING = object()
# Hydra's instantiation keys (_target_, _partial_, ...): known wherever they appear
HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}


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
        if self.listable and self.nullable and isinstance(items, Sequence) and not items:
            return None  # [] says "none", as null does
        ok = bool(items) and all(isinstance(x, str) and x.strip() for x in items)
        paths = "must be a path or a list of paths" + (", or null" if self.nullable else "")
        return None if ok else (paths if self.listable else "must be a non-empty text")


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


@dataclass(frozen=True)
class Numbers:
    """A list of ``length`` finite numbers (a per-channel mean or standard deviation)."""

    length: int
    nullable: bool = False

    def check(self, v: Any) -> str | None:
        ok = (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) == self.length
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)
        )
        return None if ok else f"must be a list of {self.length} numbers"


@dataclass(frozen=True)
class Free:
    """Any value: a key the schema knows whose value is not its to check (a name, a path Hydra interpolates); with
    ``open_keys`` a value whose keys are the user's (data sources, label maps, augmentation lists, an optimizer
    class's own arguments), so that a closed schema does not look inside it."""

    nullable: bool = True
    open_keys: bool = False

    def check(self, v: Any) -> str | None:
        return None


def setting(rule: Any, default: Any = MISSING) -> Any:
    """A settings-class field that carries its rule: ``threshold: float = setting(Num(0, 1, lo_open=True), 0.5)``.
    Without ``default`` the field has none (the YAML file holds it); a list or dict default is copied per object."""
    meta = {"rule": rule}
    if default is MISSING:
        return field(metadata=meta)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, *, open_keys: bool = False) -> Any:
    """A settings-class field holding another settings class, whose keys sit under this field's name
    (trainer.ema.decay). ``open_keys``: keys beyond the declared ones are the user's (an optimizer class's own
    arguments: optim.optimizer.betas), while the declared ones keep their rules."""
    return field(metadata={"section": cls, "open_keys": open_keys})


def rules_of(cls: type, prefix: str = "") -> dict[str, Any]:
    """A settings class's table: dotted key -> rule, sections flattened under their field's name."""
    table: dict[str, Any] = {}
    for f in fields(cls):
        key = prefix + f.name
        if "section" in f.metadata:
            if f.metadata["open_keys"]:
                table[key] = Free(open_keys=True)
            table.update(rules_of(f.metadata["section"], key + "."))
        elif "rule" in f.metadata:
            table[key] = f.metadata["rule"]
        else:
            raise TypeError(f"{cls.__name__}.{f.name} has no rule: declare it with setting(RULE) or section(CLASS)")
    return table


def check_object(obj: Any, prefix: str) -> None:
    """A settings object checked against its own fields' rules, with the door's messages
    ('review.smoothing=0 is invalid: ...'): what a notebook user gets who builds it by hand. ``prefix``: where its
    keys sit in the script's configuration (review)."""
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    check_settings({prefix: values}, rules_of(type(obj), prefix + "."))


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
    return UserError(f"unknown setting {key}{hint} ({where} and the config groups it names list every setting)")


def known_key(key: str, rules: Mapping[str, Any]) -> bool:
    """Whether ``key`` (dotted, from the command line) is in the schema: a rule's key, a section above rules (review),
    a name inside a rule whose keys are the user's (review.covariates.dose_gy), or Hydra's own (loss._target_)."""
    if key in rules or any(k.startswith(key + ".") for k in rules) or key.rsplit(".", 1)[-1] in HYDRA_KEYS:
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
