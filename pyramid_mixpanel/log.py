"""Logging that never leaks a secret, through structlog or the standard library."""

from __future__ import annotations

import logging
import typing as t

__all__ = ["REDACTED", "Log", "redact"]


STDLIB_LOGGER = logging.getLogger("pyramid_mixpanel")
REDACTED = "***"
LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def redact(text: str, secrets: t.Iterable[str]) -> str:
    """Replace every occurrence of each secret in ``text`` with ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class Log:
    """A tiny key-value logger: structlog when ``mixpanel.structlog`` is on, else stdlib.

    Every string value passes through :func:`redact` with the app's secrets, so a token that
    sneaks into an exception text from a third-party library never reaches a log line.
    """

    def __init__(self, secrets: t.Iterable[str] = (), use_structlog: bool = False) -> None:
        self.secrets = tuple(secrets)
        self._structlog: t.Any = None
        if use_structlog:
            import structlog

            self._structlog = structlog.get_logger("pyramid_mixpanel")

    def _emit(self, level: int, event: str, fields: dict[str, object]) -> None:
        clean = {
            key: redact(value, self.secrets) if isinstance(value, str) else value
            for key, value in fields.items()
        }
        event = redact(event, self.secrets)
        if self._structlog is not None:
            getattr(self._structlog, logging.getLevelName(level).lower())(event, **clean)
        elif STDLIB_LOGGER.isEnabledFor(level):
            tail = " ".join(f"{key}={value!r}" for key, value in clean.items())
            STDLIB_LOGGER.log(level, "%s %s" if tail else "%s%s", event, tail)

    def log(self, level: str, event: str, **fields: object) -> None:
        """Log at ``level`` (``"debug"``, ``"info"``, ``"warning"`` or ``"error"``)."""
        self._emit(LEVELS[level], event, fields)

    def debug(self, event: str, **fields: object) -> None:
        """Log at DEBUG."""
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: object) -> None:
        """Log at INFO."""
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: object) -> None:
        """Log at WARNING."""
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: object) -> None:
        """Log at ERROR."""
        self._emit(logging.ERROR, event, fields)
