"""Query Mixpanel: raw event export, profiles, saved reports, funnels, segmentation, retention, JQL.

:class:`MixpanelQuery` authenticates with a service account (or the legacy API secret), talks to
the project's residency hosts (``mixpanel.region``, or ``mixpanel.query_api_host`` /
``mixpanel.export_api_host`` for proxies and tests), keeps within Mixpanel's rate limits on the
client side (per process, or shared by every process through ``mixpanel.query_limits_url``:
see :mod:`pyramid_mixpanel.query_limits`), retries 429 and 5xx answers with backoff, and raises
:class:`MixpanelQueryError` with Mixpanel's own error text for anything else.

Days are whole days of the project's export timezone: UTC, or for projects created before
2023-01-01 the project's own timezone (``mixpanel.project_timezone``; docs/export-methods), in
which such projects also store the exported ``time`` values.

Values never get pasted into code: JQL gets them through its ``params`` object, and Engage
``where`` expressions quote them as JSON string literals, so an email such as
``x" or true or "`` matches nothing instead of every profile.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import time
import typing as t
from dataclasses import dataclass

import orjson
import requests

from .delivery.policy import RetryPolicy, is_retryable, parse_retry_after
from .exceptions import MixpanelQueryError, MultipleProfilesFoundException
from .log import Log, redact
from .query_limits import QueryLimits, limits_for
from .settings import MixpanelSettings, QuerySettings, parse_query_settings

__all__ = [
    "FUNNEL_LENGTH_UNITS",
    "FUNNEL_LIMIT",
    "JQL_PATH",
    "MAX_LIMIT",
    "PROFILE_BY_EMAIL",
    "SEGMENTATION_LIMIT",
    "DateLike",
    "ExportChunk",
    "MixpanelQuery",
    "MixpanelQueryError",
    "MultipleProfilesFoundException",
    "where_equals",
]

PROFILE_BY_EMAIL = """\
function main() {
  return People()
    .filter(function (user) { return user.properties.$email === params.email; })
    .map(function (user) {
      return {distinct_id: user.distinct_id, email: user.properties.$email};
    });
}
"""
#: Where JQL scripts are posted on the query host. Mixpanel serves its query APIs under both
#: ``/api/query/`` (reference/query-jql) and the older ``/api/2.0/`` prefix (its own examples
#: still use it on the query host: docs/data-structure/group-analytics/group-analytics-faq,
#: ``/api/2.0/engage``); this is the path the original package posted to, so apps' HTTP mocks
#: keep matching.
JQL_PATH = "/api/2.0/jql"
DateLike = dt.date | str

#: The most values a breakdown (``on=``) of funnels or segmentation returns: 10,000
#: (openapi/query.openapi.yaml, ``limit`` of /funnels and /segmentation).
MAX_LIMIT = 10_000
#: How many values Mixpanel returns by default: the top 255 of a funnel's breakdown, the top 60
#: of segmentation's (reference/funnels-query, reference/segmentation-query).
FUNNEL_LIMIT = 255
SEGMENTATION_LIMIT = 60
#: Units of a funnel's ``length`` (``length_unit``), in seconds; the window may not exceed 90
#: days (reference/funnels-query).
FUNNEL_LENGTH_UNITS = {"day": 86_400, "hour": 3_600, "minute": 60, "second": 1}
MAX_FUNNEL_LENGTH = 90 * 86_400


@dataclass(frozen=True)
class ExportChunk:
    """A range of whole days of the Raw Event Export, fetched when :meth:`events` is iterated.

    Record ``to_date`` once a chunk is consumed to resume a long export there later.
    """

    query: MixpanelQuery
    from_date: dt.date
    to_date: dt.date
    event_names: tuple[str, ...] | None = None
    where: str | None = None

    def events(self) -> t.Iterator[dict[str, t.Any]]:
        """Stream the chunk's events (one JSON object per line, constant memory).

        :raises MixpanelQueryError: Mixpanel refused the export, or the stream broke off
            (status 0): start the chunk again, nothing of it is half-counted by the caller
            that aggregates per chunk.
        """
        return self.query._export_stream(self)


def _date(value: DateLike, name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a date or 'YYYY-MM-DD', got {value!r}") from None


def _dates(from_date: DateLike, to_date: DateLike) -> tuple[dt.date, dt.date]:
    start, end = _date(from_date, "from_date"), _date(to_date, "to_date")
    if end < start:
        raise ValueError(f"to_date {end} is before from_date {start}")
    return start, end


def where_equals(prop: str, value: str | int | float | bool) -> str:
    """An Engage/Export ``where`` expression ``properties["prop"] == value``, safely quoted."""
    return f"properties[{json.dumps(prop)}] == {json.dumps(value)}"


class MixpanelQuery:
    """Query client authenticated with a service account or the legacy API secret.

    :param settings: the app's settings mapping, or parsed
        :class:`~pyramid_mixpanel.settings.QuerySettings` /
        :class:`~pyramid_mixpanel.settings.MixpanelSettings`. Only the query settings (hosts,
        credentials, timeouts) are read: building a client never touches delivery.
    :param session: a :class:`requests.Session` to reuse.
    :param limits: client-side rate limits; by default shared by every client of the project
        (in the process, or in the database of ``mixpanel.query_limits_url``).
    :param retry: backoff for 429 and 5xx answers (2 s doubling to 60 s, with jitter).
    :param max_retries: retries of one call before its error is raised.
    """

    def __init__(
        self,
        settings: t.Mapping[str, object] | QuerySettings | MixpanelSettings,
        session: requests.Session | None = None,
        *,
        limits: QueryLimits | None = None,
        retry: RetryPolicy | None = None,
        max_retries: int = 5,
        sleep: t.Callable[[float], None] = time.sleep,
    ) -> None:
        if isinstance(settings, MixpanelSettings):
            settings = settings.query
        self.settings = (
            settings if isinstance(settings, QuerySettings) else parse_query_settings(settings)
        )
        if not (self.settings.has_service_account or self.settings.api_secret):
            raise ValueError(
                "MixpanelQuery needs mixpanel.service_account.username/.secret/.project_id"
                " (or the legacy mixpanel.api_secret)"
            )
        self.session = session or requests.Session()
        self.retry = retry or RetryPolicy()
        self.max_retries = max_retries
        self.sleep = sleep
        self.auth, self.params = self._credentials()
        self.limits = limits or limits_for(
            self._project_key(),
            self.settings.query_limits_url,
            Log(self.settings.secrets, self.settings.structlog),
        )

    # -- events -----------------------------------------------------------------------------

    def export_chunks(
        self,
        from_date: DateLike,
        to_date: DateLike,
        events: t.Sequence[str] | None = None,
        where: str | None = None,
        *,
        chunk_days: int = 7,
    ) -> t.Iterator[ExportChunk]:
        """Split an export into chunks of ``chunk_days`` whole days (UTC), oldest first.

        Mixpanel counts each request against 60 exports per hour: a year in weekly chunks is
        53 requests. Nothing is fetched until a chunk's :meth:`ExportChunk.events` is iterated.
        """
        start, end = _dates(from_date, to_date)
        if chunk_days < 1:
            raise ValueError(f"chunk_days must be at least 1, got {chunk_days}")
        names = tuple(events) if events is not None else None
        while start <= end:
            last = min(end, start + dt.timedelta(days=chunk_days - 1))
            yield ExportChunk(self, start, last, names, where)
            start = last + dt.timedelta(days=1)

    def export(
        self,
        from_date: DateLike,
        to_date: DateLike,
        events: t.Sequence[str] | None = None,
        where: str | None = None,
        *,
        chunk_days: int = 7,
    ) -> t.Iterator[dict[str, t.Any]]:
        """Stream every raw event from ``from_date`` to ``to_date`` (whole UTC days, inclusive).

        :param events: only these event names.
        :param where: a Mixpanel segmentation expression, e.g. from :func:`where_equals`.

        Memory stays constant whatever the range: events are parsed line by line from a gzip
        stream. To resume a long export, iterate :meth:`export_chunks` instead and record the
        last finished chunk.
        """
        for chunk in self.export_chunks(from_date, to_date, events, where, chunk_days=chunk_days):
            yield from chunk.events()

    def _export_stream(self, chunk: ExportChunk) -> t.Iterator[dict[str, t.Any]]:
        params: dict[str, str] = {
            "from_date": chunk.from_date.isoformat(),
            "to_date": chunk.to_date.isoformat(),
        }
        if chunk.event_names is not None:
            params["event"] = json.dumps(list(chunk.event_names))
        if chunk.where:
            params["where"] = chunk.where
        endpoint = "/api/2.0/export"
        with contextlib.ExitStack() as held:
            # ``held`` keeps one of the project's concurrent exports until the stream is read.
            response = self._call(
                "GET", self.settings.export_api_host, endpoint, params, stream=True, held=held
            )
            try:
                for line in response.iter_lines(chunk_size=256 * 1024):
                    if line:
                        yield _decode(line)
            except (requests.RequestException, ValueError) as exc:
                raise MixpanelQueryError(
                    0,
                    self._clean(f"the export stream broke off: {type(exc).__name__}: {exc}"),
                    endpoint,
                    self._describe("GET", endpoint, params),
                ) from None
            finally:
                response.close()

    # -- profiles ---------------------------------------------------------------------------

    def engage(
        self,
        where: str | None = None,
        output_properties: t.Sequence[str] | None = None,
        *,
        cohort_id: int | None = None,
        data_group_id: int | None = None,
    ) -> t.Iterator[dict[str, t.Any]]:
        """Stream every matching profile (``{"$distinct_id": ..., "$properties": {...}}``).

        Follows Engage's pages (``session_id`` + ``page``) until the last one; each page is one
        query against the hourly budget. With ``data_group_id`` (a group key's id, from Project
        Settings > Group Keys), the group profiles of that key: their ``$distinct_id`` is the
        group id (group-analytics-faq, "Exporting Group Profiles via API").
        """
        form: dict[str, str] = {}
        if where:
            form["where"] = where
        if output_properties is not None:
            form["output_properties"] = json.dumps(list(output_properties))
        if cohort_id is not None:
            form["filter_by_cohort"] = json.dumps({"id": cohort_id})
        if data_group_id is not None:
            form["data_group_id"] = str(data_group_id)
        page = 0
        while True:
            answer = self._json("POST", "/api/query/engage", {}, form)
            results: list[dict[str, t.Any]] = answer.get("results") or []
            yield from results
            page_size = int(answer.get("page_size") or 0)
            if not results or len(results) < page_size:
                return
            page += 1
            form["session_id"] = str(answer["session_id"])
            form["page"] = str(page)

    def profile_by_email(self, email: str, *, use_jql: bool = True) -> dict[str, t.Any] | None:
        """Return ``{"distinct_id": ..., "email": ...}`` for ``email``, ``None`` when none has it.

        Runs the JQL lookup the original package ran, with the email passed as a parameter
        (never pasted into the script). JQL is in maintenance mode at Mixpanel:
        ``use_jql=False`` looks the email up through Engage instead, with the same answer.

        :raises MultipleProfilesFoundException: more than one profile has the email.
        """
        if use_jql:
            profiles: list[dict[str, t.Any]] = self.jql(PROFILE_BY_EMAIL, {"email": email})
        else:
            profiles = [
                {
                    "distinct_id": found.get("$distinct_id"),
                    "email": found.get("$properties", {}).get("$email"),
                }
                for found in self.engage(where=where_equals("$email", email))
            ]
        if not profiles:
            return None
        if len(profiles) > 1:
            raise MultipleProfilesFoundException(email, profiles)
        return profiles[0]

    # -- reports ----------------------------------------------------------------------------

    def insights(self, bookmark_id: int | str) -> t.Any:
        """The current result of a saved Insights report (``bookmark_id`` from its URL)."""
        return self._json("GET", "/api/query/insights", {"bookmark_id": str(bookmark_id)})

    def funnels(self) -> list[dict[str, t.Any]]:
        """The project's saved funnels: ``[{"funnel_id": ..., "name": ...}, ...]``."""
        return t.cast(list[dict[str, t.Any]], self._json("GET", "/api/query/funnels/list", {}))

    def funnel(
        self,
        funnel_id: int,
        from_date: DateLike,
        to_date: DateLike,
        *,
        unit: str | None = None,
        on: str | None = None,
        where: str | None = None,
        length: int | None = None,
        length_unit: str | None = None,
        limit: int | None = None,
    ) -> t.Any:
        """A saved funnel's steps and conversion between two dates, one bucket per ``unit``.

        :param on: break down by a property expression, e.g. ``'properties["company_id"]'``.
        :param length: the conversion window, in ``length_unit`` (default ``day``). Mixpanel
            reads a ``length`` alone in the unit saved with the funnel, so it is never sent
            without its unit; at most 90 days.
        :param length_unit: ``day``, ``hour``, ``minute`` or ``second``; only with ``length``.
        :param limit: with ``on``: how many of the top values Mixpanel returns (its default is
            255, at most :data:`MAX_LIMIT`); the rest are left out of the answer.
        :raises ValueError: a ``length``, ``length_unit`` or ``limit`` Mixpanel would refuse or
            misread.
        """
        start, end = _dates(from_date, to_date)
        if length_unit is not None and length is None:
            raise ValueError("length_unit needs length: alone it would rescale the saved length")
        if length is not None:
            length_unit = length_unit or "day"
            if length_unit not in FUNNEL_LENGTH_UNITS:
                raise ValueError(
                    f"length_unit must be one of {', '.join(FUNNEL_LENGTH_UNITS)}, got"
                    f" {length_unit!r}"
                )
            if not 0 < length * FUNNEL_LENGTH_UNITS[length_unit] <= MAX_FUNNEL_LENGTH:
                raise ValueError(
                    f"length must be above 0 and at most 90 days, got {length} {length_unit}"
                )
        params = {
            "funnel_id": str(funnel_id),
            "from_date": start.isoformat(),
            "to_date": end.isoformat(),
        }
        params.update(
            _optional(
                unit=unit,
                on=on,
                where=where,
                length=length,
                length_unit=length_unit,
                limit=_limit(limit),
            )
        )
        return self._json("GET", "/api/query/funnels", params)

    def segmentation(
        self,
        event: str,
        from_date: DateLike,
        to_date: DateLike,
        *,
        on: str | None = None,
        where: str | None = None,
        unit: str | None = None,
        type: str | None = None,  # Mixpanel's parameter name
        limit: int | None = None,
    ) -> t.Any:
        """Counts of ``event`` per ``unit`` (``day``…), optionally broken down ``on`` a property.

        :param type: ``general`` (every event, the default), ``unique`` (users) or ``average``.
        :param limit: with ``on``: how many of the top values Mixpanel returns (its default is
            60, at most :data:`MAX_LIMIT`).
        :raises ValueError: a ``limit`` Mixpanel would refuse.
        """
        start, end = _dates(from_date, to_date)
        params = {"event": event, "from_date": start.isoformat(), "to_date": end.isoformat()}
        params.update(_optional(on=on, where=where, unit=unit, type=type, limit=_limit(limit)))
        return self._json("GET", "/api/query/segmentation", params)

    def retention(
        self,
        from_date: DateLike,
        to_date: DateLike,
        *,
        born_event: str | None = None,
        event: str | None = None,
        retention_type: str | None = None,
        unit: str | None = None,
        interval_count: int | None = None,
        born_where: str | None = None,
        where: str | None = None,
        on: str | None = None,
    ) -> t.Any:
        """Cohort retention (``born_event`` then ``event``) between two dates."""
        start, end = _dates(from_date, to_date)
        params = {"from_date": start.isoformat(), "to_date": end.isoformat()}
        params.update(
            _optional(
                born_event=born_event,
                event=event,
                retention_type=retention_type,
                unit=unit,
                interval_count=interval_count,
                born_where=born_where,
                where=where,
                on=on,
            )
        )
        return self._json("GET", "/api/query/retention", params)

    def jql(self, script: str, params: t.Mapping[str, t.Any] | None = None) -> t.Any:
        """Run a JQL ``script``; ``params`` are available to it as the ``params`` object.

        :raises MixpanelQueryError: Mixpanel refused the query (its error text is kept).
        """
        form = {"script": script, "params": json.dumps(dict(params or {}))}
        return self._json("POST", JQL_PATH, {}, form)

    # -- plumbing ---------------------------------------------------------------------------

    def _credentials(self) -> tuple[tuple[str, str], dict[str, str]]:
        settings = self.settings
        if settings.has_service_account:
            params = {"project_id": t.cast(str, settings.service_account_project_id)}
            if settings.service_account_workspace_id:
                params["workspace_id"] = settings.service_account_workspace_id
            return (
                (t.cast(str, settings.service_account_username),
                 t.cast(str, settings.service_account_secret)),
                params,
            )  # fmt: skip
        return (t.cast(str, settings.api_secret), ""), {}

    def _project_key(self) -> tuple[str, ...]:
        # Identify the project without keeping a secret in a dictionary key.
        who = self.params.get("project_id") or hashlib.sha256(self.auth[0].encode()).hexdigest()
        return (self.settings.query_api_host, who)

    def _json(
        self,
        method: str,
        endpoint: str,
        params: dict[str, str],
        form: dict[str, str] | None = None,
    ) -> t.Any:
        response = self._call(method, self.settings.query_api_host, endpoint, params, form)
        return response.json()

    def _call(
        self,
        method: str,
        host: str,
        endpoint: str,
        params: dict[str, str],
        form: dict[str, str] | None = None,
        *,
        stream: bool = False,
        held: contextlib.ExitStack | None = None,
    ) -> requests.Response:
        """One call with client-side limits, retrying 429/5xx/unreachable with backoff.

        With ``held`` (an export), the call's concurrency slot moves there on success, so it is
        held while the caller reads the stream; otherwise it is given back with the answer.
        """
        timeout = (self.settings.connect_timeout, self.settings.query_timeout)
        attempt = 0
        while True:
            attempt += 1
            with contextlib.ExitStack() as slot:
                slot.enter_context(self.limits.exporting() if held else self.limits.query())
                try:
                    response = self._send(method, host, endpoint, params, form, stream, timeout)
                except requests.RequestException as exc:
                    status, error, retry_after = 0, f"{type(exc).__name__}: {exc}", None
                else:
                    if response.status_code == 200:
                        if held is not None:
                            held.enter_context(slot.pop_all())
                        return response
                    status, error = response.status_code, _error_text(response)
                    retry_after = parse_retry_after(response.headers.get("Retry-After"))
                    response.close()
            if (status and not is_retryable(status)) or attempt > self.max_retries:
                raise MixpanelQueryError(
                    status, self._clean(error), endpoint, self._describe(method, endpoint, params)
                )
            self.sleep(self.retry.delay(attempt, retry_after))

    def _send(
        self,
        method: str,
        host: str,
        endpoint: str,
        params: dict[str, str],
        form: dict[str, str] | None,
        stream: bool,
        timeout: tuple[float, float],
    ) -> requests.Response:
        return self.session.request(
            method,
            host + endpoint,
            params={**self.params, **params},
            data=form,
            auth=self.auth,
            headers={"Accept-Encoding": "gzip", "Accept": "application/json"},
            stream=stream,
            timeout=timeout,
        )

    def _describe(self, method: str, endpoint: str, params: dict[str, str]) -> str:
        query = "&".join(f"{key}={value}" for key, value in sorted(params.items()))
        return self._clean(f"{method} {endpoint}" + (f"?{query}" if query else ""))

    def _clean(self, text: str) -> str:
        return redact(text[:500], self.settings.secrets)


def _decode(line: bytes) -> t.Any:
    """One export line: orjson, or Python's json for what orjson refuses (same results)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        # NaN, huge integers, lone surrogates: json takes them, as this client always did;
        # what json refuses too raises its ValueError, reported as a broken stream.
        return json.loads(line)


def _limit(limit: int | None) -> int | None:
    if limit is not None and not (
        isinstance(limit, int) and not isinstance(limit, bool) and 0 < limit <= MAX_LIMIT
    ):
        raise ValueError(f"limit must be a whole number from 1 to {MAX_LIMIT:,}, got {limit!r}")
    return limit


def _optional(**values: object) -> dict[str, str]:
    return {key: str(value) for key, value in values.items() if value is not None}


def _error_text(response: requests.Response) -> str:
    try:
        answer = response.json()
    except ValueError:
        return response.text.strip() or response.reason or "no error text"
    if isinstance(answer, dict) and answer.get("error"):
        return str(answer["error"])
    return response.text.strip()
