"""The errors of the historical import, and how their messages show a value."""

from __future__ import annotations

import reprlib

from ..exceptions import MixpanelError

__all__ = ["CheckpointError", "ImportSetupError", "RowRejectedError", "clipped", "shown"]


class ImportSetupError(MixpanelError, ValueError):
    """The import cannot start (input, format, mapping or credentials); the message says why."""


class CheckpointError(ImportSetupError):
    """The checkpoint cannot be read or written; the message names it and says what to do."""


class RowRejectedError(ValueError):
    """A row that cannot be imported as it is; the message says why."""


# A message quotes a value of the input, which may be a megabyte string, a huge number or a list
# nested a thousand deep: reprlib keeps it short and never recurses past a few levels.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 60
_REPR.maxlevel = 2


def shown(value: object) -> str:
    """A short ``repr`` of ``value`` for a message, whatever ``value`` is."""
    try:
        return _REPR.repr(value)
    except ValueError:  # an int of more than 4300 digits has no repr
        return f"<{type(value).__name__}>"


def clipped(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters (and ``...``) for a message."""
    return text if len(text) <= width else text[:width] + "..."
