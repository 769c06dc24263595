"""The one exception type for a user's mistake: the CLI prints its message as one paragraph, no traceback.

Our own checks raise subclasses of :class:`UserError` (a config value, a missing data directory, a refused
input, an export refused, an incompatible checkpoint). Anything else is a bug and keeps its traceback.
``RESNET_FFCV_DEBUG=1`` shows the traceback of a user error too.

Lowest layer: imports nothing of the project, so every module can raise these.
"""

from __future__ import annotations

import os

DEBUG_ENV = "RESNET_FFCV_DEBUG"


class UserError(Exception):
    """A problem with what the user gave (config, paths, inputs): the message says what and where."""


def debug_enabled() -> bool:
    """True when ``RESNET_FFCV_DEBUG`` asks for tracebacks of user errors as well."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class UserErrorExit(SystemExit):
    """How the CLI ends on a user error: exit status ``code`` (the message is printed already), and ``str()`` of
    it is the message, so a caller catching SystemExit (a test, a wrapper) can still read what went wrong."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


# Each also subclasses the built-in type it replaced, so code (and tests) catching ValueError, OSError or
# FileNotFoundError still catch these.
class InvalidValue(UserError, ValueError):
    """A setting or an input file's content that cannot be used (the message names the key or the file)."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the user named (or a config implies) does not exist."""


class OutputExists(UserError, FileExistsError):
    """An output would replace files that the user did not ask to replace."""


class NotEnoughSpace(UserError, OSError):
    """The output would not fit on its disk; found before writing."""
