"""Logging that never leaks a secret, through structlog or the standard library."""

from __future__ import annotations

import logging
import typing as t

from ._extras import require

__all__ = ["REDACTED", "Log", "RedactedError", "redact"]


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

    Two kinds of lines: events for machines (``mixpanel.delivery_failed`` with keys, rendered
    ``event key='value' …`` by the standard library) and, through :meth:`say`, the sentences the
    original package logged (``Mixpanel configured``…), rendered as it rendered them, since apps'
    tests compare them.
    """

    def __init__(
        self,
        secrets: t.Iterable[str] = (),
        use_structlog: bool = False,
        name: str = "pyramid_mixpanel",
    ) -> None:
        self.secrets = tuple(secrets)
        self.name = name
        self.use_structlog = use_structlog
        self._stdlib = logging.getLogger(name)
        self._structlog: t.Any = None
        if use_structlog:
            structlog = require("structlog", "structlog", "pyramid_heroku.structlog = true")
            self._structlog = structlog.get_logger(name)

    def child(self, suffix: str) -> Log:
        """The same logger under the name ``<name>.<suffix>``."""
        return Log(self.secrets, self.use_structlog, f"{self.name}.{suffix}")

    def _clean(self, fields: dict[str, object]) -> dict[str, object]:
        return {
            key: redact(value, self.secrets) if isinstance(value, str) else value
            for key, value in fields.items()
        }

    def _emit(self, level: int, event: str, fields: dict[str, object]) -> None:
        clean = self._clean(fields)
        event = redact(event, self.secrets)
        if self._structlog is not None:
            getattr(self._structlog, logging.getLevelName(level).lower())(event, **clean)
        elif self._stdlib.isEnabledFor(level):
            tail = " ".join(f"{key}={value!r}" for key, value in clean.items())
            self._stdlib.log(level, "%s %s" if tail else "%s%s", event, tail)

    def say(
        self, level: str, text: str, error: BaseException | None = None, **fields: object
    ) -> None:
        """Log a sentence, as ``text key=value, key=value`` through the standard library.

        With ``error``, the line carries its traceback: through the standard library as a copy
        whose message is redacted (frames show code, not values); through structlog as
        ``exc_info=True``, as the original package logged it.
        """
        number = LEVELS[level]
        clean = self._clean(fields)
        text = redact(text, self.secrets)
        if self._structlog is not None:
            if error is not None:
                clean["exc_info"] = True
            getattr(self._structlog, level)(text, **clean)
            return
        if not self._stdlib.isEnabledFor(number):
            return
        exc_info = None
        if error is not None:
            copy = RedactedError(redact(f"{type(error).__name__}: {error}", self.secrets))
            exc_info = (RedactedError, copy, error.__traceback__)
        tail = ", ".join(f"{key}={value}" for key, value in clean.items())
        self._stdlib.log(number, "%s %s" if tail else "%s%s", text, tail, exc_info=exc_info)

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


class RedactedError(Exception):
    """Stands in for a logged exception: its type and message, with secrets redacted."""
