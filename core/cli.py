"""The command-line door of the entry scripts: what Hydra would reject with a grammar error or a traceback, said
plainly before it parses anything (a stray word, an unquoted value with spaces, an output folder that cannot be
created, a key the script's settings do not have), non-ASCII values quoted for Hydra's lexer, and Hydra's own
configuration errors turned into exit code 2 like any other user error."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from core.errors import UserError, task_started
from core.settings import known_key, unknown_setting

QUOTE_HINT = (
    "a value with spaces or quotes must be quoted for Hydra, inside the shell's quotes: "
    "\"input='/path/name with spaces.png'\" (README, 'Paths with spaces')"
)


# Hydra's command-line flags that take the next word as their value (hydra/_internal/utils.py get_args_parser)
HYDRA_VALUE_FLAGS = {
    "--config-path",
    "-cp",
    "--config-name",
    "-cn",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
    "--experimental-rerun",
}
HYDRA_INFO_CHOICES = {"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"}  # --info's optional value


def config_groups(config_dir: str | Path) -> set[str]:
    """The config groups a script's command line may choose from (``experiment=smoke``, ``data=synthetic``): the
    folders of its Hydra config directory."""
    return {p.name for p in Path(config_dir).iterdir() if p.is_dir()}


def check_command_line(
    argv: list[str],
    schema: Mapping[str, Any] | None = None,
    where: str = "the config file",
    groups: Collection[str] = (),
) -> None:
    """What Hydra would reject with a grammar error or a traceback, said plainly before it parses anything:
    a stray word (an unquoted path with spaces split by the shell), an unquoted value with spaces, an output
    folder that cannot be created, and, with ``schema`` (a script's closed table of settings, core.settings), a key
    it does not have, with the closest valid one ('did you mean review.threshold?'; ``+key=`` too). ``groups``:
    the config groups a key may also name (``experiment=smoke``)."""
    skip = False
    for i, tok in enumerate(argv):
        if skip:  # the value of a Hydra flag (--cfg job, -cn infer, --info defaults)
            skip = False
            continue
        if tok.startswith("-"):
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            skip = tok in HYDRA_VALUE_FLAGS or (tok in ("--info", "-i") and nxt in HYDRA_INFO_CHOICES)
            continue
        if "=" not in tok:
            if Path(tok).exists():  # `python infer.py clip.mp4`: settings are key=value, the input too
                raise UserError(f"'{tok}' is not a key=value setting: to process it, write input={tok}")
            raise UserError(f"'{tok}' is not a key=value setting; {QUOTE_HINT}")
        key, value = tok.split("=", 1)
        if schema is not None:
            bare = key.lstrip("+~")
            hydra = bare == "hydra" or bare.startswith(("hydra.", "hydra/"))
            if not hydra and bare.split("/")[0] not in groups and not known_key(bare, schema):
                raise unknown_setting(bare, schema, where)
        quoted = len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]
        if any(c.isspace() for c in value) and not quoted and not value.startswith(("[", "{")):
            raise UserError(f"{key}: {QUOTE_HINT}")
        if key.lstrip("+") in ("out_dir", "out_root", "hydra.run.dir") and "${" not in value and value != "null":
            folder = Path(value.strip("'\""))
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UserError(f"{key}={value} cannot be created ({e.strerror}): choose a writable folder") from None
            if not os.access(folder, os.W_OK):
                raise UserError(f"{key}={value} is not writable: choose a writable folder")


def _hydra_quoted(value: str) -> str:
    """An unquoted value Hydra's grammar cannot read as it stands (a non-ASCII path, /data/Müller), quoted for it;
    a list's items likewise ([/data/é/a.png,b.png]). Values with quotes or backslashes are left to the user."""

    def one(v: str) -> str:
        if v.isascii() or (len(v) >= 2 and v[0] in "'\"" and v[-1] == v[0]):
            return v
        if "'" in v or "\\" in v or "${" in v:
            raise UserError(f"'{v}': a value with non-ASCII letters and quotes must be quoted for Hydra; {QUOTE_HINT}")
        return f"'{v}'"

    if value.startswith("[") and value.endswith("]") and not any(c in value[1:-1] for c in "[]{}'\""):
        return "[" + ",".join(one(x) for x in value[1:-1].split(",")) + "]"
    if value.startswith(("[", "{")):
        return value
    return one(value)


def quote_non_ascii(argv: list[str]) -> list[str]:
    """argv with every unquoted non-ASCII value of a key=value setting quoted for Hydra (its lexer takes only ASCII
    letters unquoted), so that out_dir=/data/Müller and input=/data/é/x.png work as typed."""
    out = []
    for tok in argv:
        if "=" in tok and not tok.startswith("-") and not tok.isascii():
            key, value = tok.split("=", 1)
            tok = f"{key}={_hydra_quoted(value)}"
        out.append(tok)
    return out


def run_cli(
    hydra_main: Callable[[], Any],
    schema: Mapping[str, Any] | None = None,
    where: str = "the config file",
    prepare: Callable[[list[str]], list[str]] | None = None,
    groups: Collection[str] = (),
) -> None:
    """Call a ``@hydra.main`` function; Hydra's own config errors (unknown key, missing group file), which it
    reports before our task starts and exits 1 for, become exit code 2 like any other user error. ``schema``: the
    script's closed table of settings, checked on the command line before Hydra parses it, with ``groups`` (the
    config groups its keys may also name). ``prepare``: a function that rewrites the checked command line before
    Hydra reads it (infer.py -m's inputs=)."""
    try:
        check_command_line(sys.argv[1:], schema, where, groups)
        sys.argv[1:] = quote_non_ascii(sys.argv[1:])
        if prepare is not None:
            sys.argv[1:] = prepare(sys.argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1 and not task_started():
            sys.exit(2)
        raise
