"""The one exception type that means "the user gave us something wrong" (exit code 2, no traceback).

Every package raises it for bad paths, bad files and bad settings; the entry scripts turn it into one line on
stderr. Anything else that escapes is a bug (exit code 1, with traceback).
"""


class UserError(Exception):
    """Bad input or configuration. The message names the file or setting and says what to do."""


# --- entry-script guard -------------------------------------------------------------------------------------------
# Exit codes (DESIGN.md): 0 success, 2 user error (one line on stderr, no traceback), 1 bug.
import functools  # noqa: E402
import sys  # noqa: E402

_task_started = False


def guard_task(task):
    """Decorate a Hydra task: a UserError becomes one stderr line and exit code 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        global _task_started
        _task_started = True
        try:
            return task(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapper


def run_cli(hydra_main) -> None:
    """Call a ``@hydra.main`` function; Hydra's own config errors (unknown key, missing group file), which it
    reports before our task starts and exits 1 for, become exit code 2 like any other user error."""
    try:
        hydra_main()
    except SystemExit as e:
        if e.code == 1 and not _task_started:
            sys.exit(2)
        raise
