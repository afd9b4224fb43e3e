"""What endoscopists record per case, in any SQLAlchemy database (SQLite by default, PostgreSQL for a department):
the fields and their validation, the outcomes table with optimistic locking, and the audit table.

One row per case (``outcomes``): lift after injection, Matsumoto fibrosis grade, the covariates known before the
resection, a study code for the patient and the centre, a free-text note, and the sign-off. Every save names the
revision it started from; a save from an older revision changes nothing and returns a conflict holding the other
person's values (optimistic locking: neither edit is lost, the second person sees both and decides). Every change,
sign-off and reopening is kept in ``audit``: case, revision, who, when (UTC), field, old -> new. Rows are never
deleted. SQLAlchemy Core only, and only what 1.4 (``future=True``) and 2.0 share.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from core.errors import UserError

LIFT = ("adequate", "partial", "non-lifting")
FIBROSIS = ("F0", "F1", "F2")  # Matsumoto et al.: none, white web-like, white muscle-like submucosal layer
YES_NO = ("yes", "no")
CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # a study code: never a name or a hospital number
NOTE_MAX = 2000


@dataclass(frozen=True)
class Field:
    """One recorded item. kind: ``choice`` (one of ``choices`` or empty = not recorded), ``number`` (within
    [low, high], decimal point or comma), ``code`` (a study code), ``text`` (the note)."""

    name: str
    label: str
    kind: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    unit: str = ""
    help: str = ""
    group: str = "covariate"  # outcome | covariate | study | note


FIELDS: tuple[Field, ...] = (
    Field("lift", "Lift after submucosal injection", "choice", LIFT, group="outcome"),
    Field(
        "fibrosis",
        "Submucosal fibrosis (Matsumoto grade)",
        "choice",
        FIBROSIS,
        help="F0 none (blue transparent layer); F1 white web-like; F2 white muscle-like layer",
        group="outcome",
    ),
    Field("prior_radiotherapy", "Prior pelvic radiotherapy", "choice", YES_NO),
    Field("weeks_since_rt", "Time since radiotherapy", "number", low=0, high=2600, unit="weeks"),
    Field("dose_gy", "Radiotherapy dose", "number", low=0.1, high=150, unit="Gy"),
    Field("distance_av_cm", "Distance from the anal verge", "number", low=0, high=200, unit="cm"),
    Field("prior_attempt", "Prior resection attempt", "choice", YES_NO),
    Field("lesion_size_mm", "Lesion size", "number", low=1, high=300, unit="mm"),
    Field(
        "patient",
        "Patient study code",
        "code",
        help="pseudonym shared by one patient's resections; never a name or hospital number",
        group="study",
    ),
    Field("centre", "Centre", "code", group="study"),
    Field("note", "Note", "text", help=f"free text, up to {NOTE_MAX} characters; not exported", group="note"),
)
BY_NAME = {f.name: f for f in FIELDS}
OUTCOMES = tuple(f.name for f in FIELDS if f.group == "outcome")
COVARIATES = tuple(f.name for f in FIELDS if f.group == "covariate")
RT_DETAILS = ("weeks_since_rt", "dose_gy")  # only meaningful after radiotherapy

metadata = sa.MetaData()
outcomes = sa.Table(
    "outcomes",
    metadata,
    sa.Column("case_id", sa.String(255), primary_key=True),
    sa.Column("revision", sa.Integer, nullable=False),
    *(
        sa.Column(f.name, sa.Float if f.kind == "number" else sa.Text if f.kind == "text" else sa.String(64))
        for f in FIELDS
    ),
    sa.Column("signed_off_by", sa.String(100)),
    sa.Column("signed_off_at", sa.String(32)),
    sa.Column("updated_by", sa.String(100)),
    sa.Column("updated_at", sa.String(32)),
    sa.Column("model", sa.String(300)),  # the model whose review the outcome was recorded next to
)
audit = sa.Table(
    "audit",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("case_id", sa.String(255), nullable=False, index=True),
    sa.Column("revision", sa.Integer, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    sa.Column("by", sa.String(100), nullable=False),
    sa.Column("field", sa.String(64), nullable=False),
    sa.Column("old", sa.Text),
    sa.Column("new", sa.Text),
)
SIGN_OFF = "sign-off"  # the audit's field name for signing off and reopening


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def open_store(url: str) -> sa.engine.Engine:
    """An engine for ``url`` (any SQLAlchemy URL) with the tables created when missing."""
    kwargs: dict[str, Any] = {"future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}  # the server's threads share it
    try:
        engine = sa.create_engine(url, **kwargs)
        metadata.create_all(engine)
    except sa.exc.ArgumentError as e:
        raise UserError(f"--db {url!r} is not a database URL ({e}); e.g. sqlite:////path/outcomes.sqlite") from None
    except sa.exc.NoSuchModuleError as e:
        raise UserError(f"--db: no driver for {url.split(':', 1)[0]!r} ({e}); install its driver package") from None
    except sa.exc.OperationalError as e:
        raise UserError(f"--db: cannot open the database ({str(e.orig).splitlines()[0]})") from None
    return engine


def text_of(value: Any) -> str:
    """A stored value as the form and the audit show it: '' for None, 12.5 / 12 for numbers."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def validate(form: Mapping[str, Any], *, sign_off: bool = False) -> tuple[dict[str, Any], dict[str, str]]:
    """The form's values, typed (None = not recorded), and a message per invalid field. Every field is checked
    and every problem returned at once."""
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for f in FIELDS:
        raw = str(form.get(f.name) or "").strip()
        if "\x00" in raw:
            errors[f.name] = "contains a NUL character"
            continue
        if not raw:
            values[f.name] = None
        elif f.kind == "choice":
            if raw in f.choices:
                values[f.name] = raw
            else:
                errors[f.name] = f"choose one of {', '.join(f.choices)}, or leave it empty (not recorded)"
        elif f.kind == "number":
            text = raw.replace(",", ".") if raw.count(",") == 1 and "." not in raw else raw  # 12,5 = 12.5
            try:
                v = float(text)
            except ValueError:
                v = None
            if v is None or not math.isfinite(v):
                errors[f.name] = "a number is needed (e.g. 12 or 12.5), or leave it empty"
            elif not f.low <= v <= f.high:
                errors[f.name] = f"must be between {f.low:g} and {f.high:g} {f.unit}".rstrip()
            else:
                values[f.name] = v
        elif f.kind == "code":
            if CODE.fullmatch(raw):
                values[f.name] = raw
            else:
                errors[f.name] = "letters, digits, '.', '_' or '-' only (up to 64), starting with a letter or digit"
        else:
            if len(raw) > NOTE_MAX:
                errors[f.name] = f"at most {NOTE_MAX} characters ({len(raw)} given)"
            else:
                values[f.name] = raw
    if values.get("prior_radiotherapy") == "no":
        for name in RT_DETAILS:
            if values.get(name) is not None:
                errors[name] = "given, but prior radiotherapy is 'no': clear it or correct the radiotherapy answer"
    if sign_off and not errors and all(values.get(o) is None for o in OUTCOMES):
        errors["lift"] = errors["fibrosis"] = "record the lift or the fibrosis grade (or both) before signing off"
    return values, errors


def get(engine: sa.engine.Engine, case_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(outcomes).where(outcomes.c.case_id == case_id)).mappings().first()
    return None if row is None else dict(row)


def all_outcomes(engine: sa.engine.Engine) -> dict[str, dict[str, Any]]:
    with engine.connect() as conn:
        return {r["case_id"]: dict(r) for r in conn.execute(sa.select(outcomes)).mappings()}


def history(engine: sa.engine.Engine, case_id: str) -> list[dict[str, Any]]:
    """The case's audit rows, newest first."""
    with engine.connect() as conn:
        q = sa.select(audit).where(audit.c.case_id == case_id).order_by(audit.c.id.desc())
        return [dict(r) for r in conn.execute(q).mappings()]


@dataclass
class Saved:
    """What a save did. ``conflict``: the case changed since ``revision`` was read (nothing was written; ``current``
    holds the other person's row). ``refused``: why nothing could be written (a signed-off case). ``changed``:
    the fields written."""

    ok: bool
    revision: int
    changed: list[str] = field(default_factory=list)
    conflict: bool = False
    current: dict[str, Any] | None = None
    refused: str = ""


def save(
    engine: sa.engine.Engine,
    *,
    case_id: str,
    values: Mapping[str, Any],
    revision: int,
    user: str,
    sign_off: bool = False,
    model: str = "",
) -> Saved:
    """Write ``values`` (validated) for a case whose form was read at ``revision`` (0 = no row yet), and sign it off
    when asked; one audit row per changed field. A case changed in between is a conflict, a signed-off one refused."""
    for attempt in range(4):
        try:
            return _save(engine, case_id, values, revision, user, sign_off, model)
        except (IntegrityError, _Raced):  # another save won between our read and our write
            theirs = get(engine, case_id)
            return Saved(False, 0 if theirs is None else theirs["revision"], conflict=True, current=theirs)
        except sa.exc.OperationalError:  # SQLite: two writers upgraded their locks at once; one of them retries
            if attempt == 3:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


class _Raced(Exception):
    pass


def _save(engine, case_id, values, revision, user, sign_off, model) -> Saved:
    at = now()
    with engine.begin() as conn:
        current = conn.execute(sa.select(outcomes).where(outcomes.c.case_id == case_id)).mappings().first()
        current = None if current is None else dict(current)
        have = 0 if current is None else current["revision"]
        if have != revision:
            return Saved(False, have, conflict=True, current=current)
        if current is not None and current["signed_off_at"]:
            return Saved(False, have, current=current, refused="this case is signed off: reopen it to change it")
        old = current or {}
        changed = [f.name for f in FIELDS if old.get(f.name) != values.get(f.name)]
        if not changed and not sign_off:
            return Saved(True, have)
        new = {f.name: values.get(f.name) for f in FIELDS} | {"updated_by": user, "updated_at": at}
        new["model"] = model or old.get("model")
        if sign_off:
            new |= {"signed_off_by": user, "signed_off_at": at}
        if current is None:
            conn.execute(sa.insert(outcomes).values(case_id=case_id, revision=1, **new))
        else:
            done = conn.execute(
                sa.update(outcomes)
                .where(outcomes.c.case_id == case_id, outcomes.c.revision == revision)
                .values(revision=revision + 1, **new)
            )
            if done.rowcount != 1:
                raise _Raced  # leaves the block: the transaction rolls back
        rows = [
            {"field": n, "old": text_of(old.get(n)) or None, "new": text_of(values.get(n)) or None} for n in changed
        ]
        if sign_off:
            rows.append({"field": SIGN_OFF, "old": None, "new": f"signed off by {user}"})
        conn.execute(
            sa.insert(audit), [r | {"case_id": case_id, "revision": revision + 1, "at": at, "by": user} for r in rows]
        )
    return Saved(True, revision + 1, changed=changed)


def reopen(engine: sa.engine.Engine, *, case_id: str, revision: int, user: str, reason: str) -> Saved:
    """Take a signed-off case back to draft (its values kept), with the reason in the audit."""
    at = now()
    try:
        _reopen(engine, case_id=case_id, revision=revision, user=user, reason=reason, at=at)
    except _Raced:
        theirs = get(engine, case_id)
        return Saved(False, 0 if theirs is None else theirs["revision"], conflict=True, current=theirs)
    return Saved(True, revision + 1, changed=[SIGN_OFF])


def _reopen(engine: sa.engine.Engine, *, case_id: str, revision: int, user: str, reason: str, at: str) -> None:
    with engine.begin() as conn:
        done = conn.execute(
            sa.update(outcomes)
            .where(
                outcomes.c.case_id == case_id,
                outcomes.c.revision == revision,
                outcomes.c.signed_off_at.is_not(None),
            )
            .values(revision=revision + 1, signed_off_by=None, signed_off_at=None, updated_by=user, updated_at=at)
        )
        if done.rowcount != 1:
            raise _Raced
        conn.execute(
            sa.insert(audit).values(
                case_id=case_id, revision=revision + 1, at=at, by=user, field=SIGN_OFF, old="signed off", new=reason
            )
        )
