"""Query Mixpanel: JQL and the profile-by-email lookup.

Values reach JQL through the API's ``params`` field and the script reads them as
``params.<name>``; they are never pasted into the script, so an email such as
``x' || true || '`` matches nothing instead of every profile.
"""

from __future__ import annotations

import json
import typing as t

import requests

from .log import redact
from .runtime import runtime_for
from .settings import MixpanelSettings

PROFILE_BY_EMAIL = """\
function main() {
  return People().filter(function (user) {
    return user.properties.$email === params.email;
  });
}
"""


class MixpanelQueryError(Exception):
    """Mixpanel refused a query; carries its status code and its own error text."""

    def __init__(self, status: int, error: str, endpoint: str) -> None:
        super().__init__(f"Mixpanel answered {status} to {endpoint}: {error}")
        self.status = status
        self.error = error
        self.endpoint = endpoint


class MultipleProfilesFoundException(ValueError):  # noqa: N818  # name kept from the original
    """More than one profile has the email; ``email`` and ``profiles`` say which."""

    def __init__(self, email: str, profiles: list[dict[str, t.Any]]) -> None:
        super().__init__(f"{len(profiles)} Mixpanel profiles have the email {email!r}")
        self.email = email
        self.profiles = profiles


class MixpanelQuery:
    """Query client authenticated with a service account or the legacy API secret.

    :param settings: the app's settings mapping or a parsed
        :class:`~pyramid_mixpanel.settings.MixpanelSettings`.
    """

    def __init__(
        self,
        settings: t.Mapping[str, object] | MixpanelSettings,
        session: requests.Session | None = None,
    ) -> None:
        self.settings = runtime_for(settings).settings
        if not (self.settings.has_service_account or self.settings.api_secret):
            raise ValueError(
                "MixpanelQuery needs mixpanel.service_account.username/.secret/.project_id"
                " (or the legacy mixpanel.api_secret)"
            )
        self.session = session or requests.Session()

    def _auth(self) -> tuple[tuple[str, str], dict[str, str]]:
        settings = self.settings
        if settings.has_service_account:
            return (
                (t.cast(str, settings.service_account_username),
                 t.cast(str, settings.service_account_secret)),
                {"project_id": t.cast(str, settings.service_account_project_id)},
            )  # fmt: skip
        return (t.cast(str, settings.api_secret), ""), {}

    def jql(self, script: str, params: t.Mapping[str, t.Any] | None = None) -> t.Any:
        """Run a JQL ``script``; ``params`` are available to it as the ``params`` object.

        :raises MixpanelQueryError: Mixpanel refused the query (its error text is kept).
        """
        auth, query = self._auth()
        endpoint = "/api/query/jql"
        response = self.session.post(
            f"{self.settings.query_api_host}{endpoint}",
            params=query,
            data={"script": script, "params": json.dumps(dict(params or {}))},
            auth=auth,
            timeout=(self.settings.connect_timeout, self.settings.query_timeout),
        )
        if response.status_code != 200:
            raise MixpanelQueryError(response.status_code, self._error_text(response), endpoint)
        return response.json()

    def _error_text(self, response: requests.Response) -> str:
        try:
            text = str(response.json().get("error", response.text))
        except ValueError:
            text = response.text
        return redact(text[:500], self.settings.secrets)

    def profile_by_email(self, email: str) -> dict[str, t.Any] | None:
        """Return the profile with ``email``, ``None`` when there is none.

        :raises MultipleProfilesFoundException: more than one profile has the email.
        """
        profiles: list[dict[str, t.Any]] = self.jql(PROFILE_BY_EMAIL, {"email": email})
        if not profiles:
            return None
        if len(profiles) > 1:
            raise MultipleProfilesFoundException(email, profiles)
        return profiles[0]
