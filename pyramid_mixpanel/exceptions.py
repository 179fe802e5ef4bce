"""Every error pyramid_mixpanel raises on purpose derives from :class:`MixpanelError`.

``except MixpanelError`` catches all of them; each subclass keeps the built-in base it always
had (``ValueError``, Pyramid's ``ConfigurationError``) so existing ``except`` clauses still work.
Messages never carry a secret.
"""

from __future__ import annotations

import typing as t

from pyramid.exceptions import ConfigurationError

__all__ = [
    "MixpanelConfigurationError",
    "MixpanelError",
    "MixpanelQueryError",
    "MultipleProfilesFoundException",
    "explain",
    "with_note",
]

E = t.TypeVar("E", bound=BaseException)


def with_note(exc: E, note: str) -> E:
    """Return ``exc`` with ``note`` added to its notes (empty notes are not added).

    Notes are printed under the message in tracebacks (Python 3.11+) but are not part of
    ``str(exc)``: messages stay exactly what the original package raised, and the help (which
    setting, what is nearest) is still shown.
    """
    if note:
        # Set directly rather than with add_note(), which Python 3.10 lacks.
        exc.__notes__ = [*getattr(exc, "__notes__", ()), note]
    return exc


def explain(exc: BaseException) -> str:
    """One line: the message, then the notes in parentheses (``message (note; note)``)."""
    notes = getattr(exc, "__notes__", ())
    return f"{exc} ({'; '.join(notes)})" if notes else str(exc)


class MixpanelError(Exception):
    """Base class of every pyramid_mixpanel error."""


class MixpanelConfigurationError(MixpanelError, ConfigurationError, ValueError):  # type: ignore[misc]  # untyped base
    """A ``mixpanel.*`` / ``customerio.*`` setting is invalid; the message names the setting."""


class MixpanelQueryError(MixpanelError):
    """Mixpanel refused a query; carries its status code, its own error text and the request.

    ``request`` is the method, path and parameters (never credentials); ``status`` is 0 when
    Mixpanel could not be reached or an export stream broke off.
    """

    def __init__(self, status: int, error: str, endpoint: str, request: str = "") -> None:
        super().__init__(f"Mixpanel answered {status} to {endpoint}: {error}")
        self.status = status
        self.error = error
        self.endpoint = endpoint
        self.request = request


class MultipleProfilesFoundException(MixpanelError, ValueError):  # noqa: N818  # name kept from the original
    """More than one profile has the email; ``email`` and ``profiles`` say which."""

    def __init__(self, email: str, profiles: list[dict[str, t.Any]]) -> None:
        # The original package's text, which apps' tests compare.
        super().__init__(
            f"Multiple Mixpanel profiles found for email: {email} - Profile IDs: {profiles}"
        )
        self.email = email
        self.profiles = profiles
