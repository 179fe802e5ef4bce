"""The errors of the historical import."""

from __future__ import annotations

from ..exceptions import MixpanelError

__all__ = ["ImportSetupError", "RowRejectedError"]


class ImportSetupError(MixpanelError, ValueError):
    """The import cannot start (input, format, mapping or credentials); the message says why."""


class RowRejectedError(ValueError):
    """A row that cannot be imported as it is; the message says why."""
