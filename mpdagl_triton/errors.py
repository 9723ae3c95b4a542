"""The library's own errors: the ones ``mpdagl`` reports as one line instead of a traceback.

Every error the library raises on purpose derives from :class:`MpdaglError`, and also from the
built-in exception a Python caller would expect (``ValueError`` for bad input, ``RuntimeError``
for something that could not be done), so ``except ValueError`` keeps working. The command line
prints these as ``mpdagl <command>: error: <message>`` and exits with :attr:`MpdaglError.exit_code`;
anything else is a bug and keeps its traceback.

Exit codes: 2 for bad input (the user can fix the command), 1 for work that could not be done
(a dataset or the Hub out of reach, a diverged run).
"""

from __future__ import annotations


class MpdaglError(Exception):
    """An error the library explains in its message."""

    exit_code = 1


class InvalidInput(MpdaglError, ValueError):
    """An argument, option, file or dataset the library cannot use; the message names the fix."""

    exit_code = 2


class Unavailable(MpdaglError, RuntimeError):
    """Something needed could not be reached or finished (network, Hub, a diverged run)."""

    exit_code = 1
