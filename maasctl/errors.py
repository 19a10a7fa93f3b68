"""Errors a user can act on. Each carries the process exit code the CLI maps it to.

Exit codes (documented in `maasctl --help` and the README):
  0 success · 1 a check or gate failed · 2 usage or input error · 3 model or server unavailable
"""

from __future__ import annotations

from collections.abc import Iterable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3


class MaasctlError(Exception):
    """An expected failure: the CLI prints the message (no traceback) and exits with `exit_code`."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(MaasctlError):
    """Bad input from the user: a wrong recipe, a missing file, an unknown name."""

    exit_code = EXIT_USAGE


class CheckFailed(MaasctlError):
    """The work ran but its result failed a check (export parity, an accuracy gate)."""

    exit_code = EXIT_FAILED


class Unavailable(MaasctlError):
    """A model or server that should be there is not (unreachable URL, missing model)."""

    exit_code = EXIT_UNAVAILABLE


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """ "; did you mean 'x'?" for the closest option, or "" when none is close: the tail of an error message."""
    import difflib  # only when a message is being built: errors.py is on predict's start-up path

    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""
