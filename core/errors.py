"""The one exception type that means "the user gave us something wrong" (exit code 2, no traceback), and the guard
that turns it into one line in an entry script's Hydra task.

Every package raises UserError for bad paths, bad files and bad settings; the entry scripts turn it into one line
on stderr. Anything else that escapes is a bug (exit code 1, with traceback). The command line itself (before Hydra
parses it) is core/cli.py's.
"""

import functools
import sys

# Exit codes (docs/ARCHITECTURE.md): 0 success, 2 user error (one line on stderr, no traceback), 1 bug.
_task_started = False


class UserError(Exception):
    """Bad input or configuration. The message names the file or setting and says what to do."""


def task_started() -> bool:
    """Whether a guarded Hydra task has begun: Hydra's own exit code 1 before it is a configuration error (a
    missing group file, a key it refuses), which core.cli.run_cli reports as a user error."""
    return _task_started


def guard_task(task):
    """Decorate a Hydra task: a UserError becomes one stderr line and exit code 2."""

    @functools.wraps(task)
    def wrapper(*args, **kwargs):
        global _task_started
        _task_started = True
        from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

        try:
            return task(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        except (MissingMandatoryValue, InterpolationResolutionError) as e:  # e.g. data.manifest=??? left unset
            print(
                f"error: a setting is missing or cannot be resolved: {str(e).splitlines()[0]} "
                "(give it on the command line, e.g. data.manifest=/path/manifest.csv)",
                file=sys.stderr,
            )
            sys.exit(2)

    return wrapper
