"""A Mixpanel service account connected at run time, kept encrypted in the metrics store.

``POST /api/integrations/mixpanel/connect`` (:mod:`pyramid_mixpanel.insights`) takes a service
account's username, secret and project id (and region), checks them with one cheap
authenticated call (the list of saved funnels) and stores them: the secret encrypted with
Fernet (AES-128-CBC and HMAC-SHA256, from ``cryptography``) under ``mixpanel.metrics.secret_key``,
the rest as is. Syncs use the connection when the settings hold no service account. The secret
is never answered, logged or shown in a ``repr``.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from dataclasses import dataclass, field

from .._extras import require
from ..exceptions import MixpanelConfigurationError

__all__ = ["REGIONS", "Connection", "decrypt", "encrypt", "fernet", "settings_with"]

#: Mixpanel's data residency regions (hosts ``mixpanel.com``, ``eu.mixpanel.com``,
#: ``in.mixpanel.com``).
REGIONS = ("us", "eu", "in")
SERVICE_ACCOUNT = "mixpanel.service_account."


@dataclass(frozen=True)
class Connection:
    """A stored service account: the secret stays encrypted (``token``) until a sync needs it."""

    username: str
    project_id: str
    region: str
    verified_at: dt.datetime
    token: bytes = field(repr=False)


def fernet(key: str) -> t.Any:
    """The Fernet cipher of ``key`` (a urlsafe-base64 32-byte key, as ``Fernet.generate_key``).

    :raises MixpanelConfigurationError: not such a key (the key itself is never shown).
    """
    cryptography = require("cryptography.fernet", "metrics", "mixpanel.metrics.secret_key")
    try:
        return cryptography.Fernet(key.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise MixpanelConfigurationError(
            "mixpanel.metrics.secret_key must be a Fernet key: 32 random bytes in urlsafe"
            " base64 (python -c 'from cryptography.fernet import Fernet;"
            " print(Fernet.generate_key().decode())')"
        ) from None


def encrypt(secret: str, key: str) -> bytes:
    """``secret`` encrypted (and authenticated) with ``key``."""
    return t.cast(bytes, fernet(key).encrypt(secret.encode("utf-8")))


def decrypt(token: bytes, key: str) -> str:
    """The secret of ``token``.

    :raises MixpanelConfigurationError: ``key`` is not the one it was stored with.
    """
    invalid = require("cryptography.fernet", "metrics", "mixpanel.metrics.secret_key").InvalidToken
    try:
        return t.cast(bytes, fernet(key).decrypt(token)).decode("utf-8")
    except invalid:
        raise MixpanelConfigurationError(
            "the stored Mixpanel connection was encrypted with another mixpanel.metrics.secret_key:"
            " connect again"
        ) from None


def settings_with(
    settings: t.Mapping[str, object], connection: Connection, key: str
) -> dict[str, object]:
    """``settings`` with the connection's service account and region in place."""
    merged = {
        name: value for name, value in settings.items() if not name.startswith(SERVICE_ACCOUNT)
    }
    merged.update(
        {
            SERVICE_ACCOUNT + "username": connection.username,
            SERVICE_ACCOUNT + "secret": decrypt(connection.token, key),
            SERVICE_ACCOUNT + "project_id": connection.project_id,
            "mixpanel.region": connection.region,
        }
    )
    return merged
