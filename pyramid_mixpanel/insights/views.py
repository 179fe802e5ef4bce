"""Settings, state and views of :mod:`pyramid_mixpanel.insights`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import re
import threading
import typing as t
import zoneinfo
from dataclasses import dataclass, field

from pyramid.httpexceptions import (
    HTTPBadGateway,
    HTTPBadRequest,
    HTTPNotFound,
    HTTPServiceUnavailable,
)
from pyramid.response import Response

from ..converters import Setting, as_secret, parse_table, positive_int
from ..exceptions import MixpanelConfigurationError, MixpanelQueryError
from ..log import Log
from ..metrics.config import MetricsSettings, parse_metrics_settings
from ..metrics.connect import REGIONS, Connection, encrypt
from ..metrics.export import write_csv
from ..metrics.freshness import freshness
from ..metrics.model import AccountSummary, DailyMetrics, FunnelMetrics, storable
from ..metrics.store import MetricsStore, rank_events
from ..query import MixpanelQuery
from . import INSIGHTS_KEY
from .render import WEEKDAYS, account_page, heatmap_counts, overview_page, report_series

if t.TYPE_CHECKING:
    from pyramid.config import Configurator
    from pyramid.request import Request

__all__ = [
    "InsightsSettings",
    "InsightsState",
    "InsightsViews",
    "parse_insights_settings",
    "register",
]

NOT_MIGRATED = (
    "the metrics store has no tables yet: run 'pmixpanel migrate <config.ini>' (or a first"
    " 'pmixpanel sync')"
)

PREFIX = "mixpanel.insights."
#: The longest range of days a view answers (``from`` to ``to``, both included).
MAX_RANGE_DAYS = 366
#: The first day a view answers: Mixpanel's times are epoch seconds, nothing is older.
FIRST_DAY = dt.date(1970, 1, 1)
#: ``from`` and ``to``: ``YYYY-MM-DD`` and nothing else (``date.fromisoformat`` also takes
#: ``20260101`` and week dates; without ``re.ASCII``, ``\d`` takes any script's digits).
DAY = re.compile(r"\d{4}-\d{2}-\d{2}", re.ASCII)
BAD_DAY = f"from and to must be days as YYYY-MM-DD, from {FIRST_DAY} on"
BAD_RANGE = f"from must not be after to, and a range spans at most {MAX_RANGE_DAYS} days"
#: Accounts per page of the overview API: the default and the most.
PER_PAGE, MAX_PER_PAGE = 50, 500
SORT_KEYS: dict[str, t.Callable[[AccountSummary], t.Any]] = {
    "account": lambda row: row.account,
    "events": lambda row: row.events,
    # Accounts without a figure sort last either way (see _sorted).
    "trend": lambda row: row.trend,
    "users": lambda row: row.mean_daily_users,
    "score": lambda row: row.score,
    "anomalies": lambda row: row.anomalies,
}
#: The chat commands of the customer-success PRD, and close variants.
COMMANDS = (
    (
        "events",
        re.compile(
            r"^\s*(?:show\s+(?:me\s+)?)?(?:the\s+)?(?:mixpanel\s+)?events\s+(?:for|of)?\s*"
            r"(?P<account>.+?)\s*[?.!]?\s*$",
            re.I,
        ),
    ),
    (
        "funnels",
        re.compile(
            r"^\s*(?:what(?:'s|\s+is)\s+)?(?:the\s+)?funnel\s+conversions?\s+(?:for|of)?\s*"
            r"(?P<account>.+?)\s*[?.!]?\s*$",
            re.I,
        ),
    ),
)
UNDERSTOOD = [
    "Show Mixpanel events for <account>",
    "What's the funnel conversion for <account>?",
]


@dataclass(frozen=True)
class InsightsSettings:
    """The parsed ``mixpanel.insights.*`` settings."""

    permission: str = "mixpanel.insights"
    api_prefix: str = "/api/mixpanel"
    page_prefix: str = "/mixpanel/accounts"
    days: int = 30
    #: Where a Mixpanel service account is connected, and who may do it.
    connect_path: str = "/api/integrations/mixpanel/connect"
    connect_permission: str = "mixpanel.insights.connect"


def _prefix(key: str, value: object) -> str | None:
    text = as_secret(key, value)
    if text is not None and (not text.startswith("/") or text.endswith("/") or "{" in text):
        raise MixpanelConfigurationError(f"{key} must be a path like /api/mixpanel, got {text!r}")
    return text


TABLE: tuple[Setting, ...] = (
    Setting(PREFIX + "permission", "permission", as_secret),
    Setting(PREFIX + "api_prefix", "api_prefix", _prefix),
    Setting(PREFIX + "page_prefix", "page_prefix", _prefix),
    Setting(PREFIX + "days", "days", positive_int(MAX_RANGE_DAYS)),
    Setting(PREFIX + "connect_path", "connect_path", _prefix),
    Setting(PREFIX + "connect_permission", "connect_permission", as_secret),
)


def parse_insights_settings(settings: t.Mapping[str, object]) -> InsightsSettings:
    """Parse ``mixpanel.insights.*``; an unknown key is logged with the closest known one."""
    values = parse_table(settings, TABLE, namespaces=(PREFIX,))
    return InsightsSettings(**values)  # type: ignore[arg-type]  # keys come from the table


@dataclass
class InsightsState:
    """What the views share: settings, the metrics store (opened on first use) and the sync.

    Nothing touches the database before the first call of a view: the store is opened then,
    without migrating (``pmixpanel migrate`` and ``pmixpanel sync`` do that), and a schema that
    is not at the latest revision answers 503 with what to run.
    """

    settings: InsightsSettings
    app_settings: t.Mapping[str, object]
    metrics: MetricsSettings
    log: Log = field(default_factory=Log)
    lock: threading.Lock = field(default_factory=threading.Lock)
    thread: threading.Thread | None = None
    #: The last background sync: ``{"status": "finished"|"failed", ...}``.
    last_sync: dict[str, t.Any] | None = None
    #: The timezone of the stored days (``mixpanel.project_timezone``): "yesterday" is there.
    timezone: str = "UTC"
    _store: MetricsStore | None = None
    _store_lock: threading.Lock = field(default_factory=threading.Lock)
    _ready: bool = False

    def ready(self) -> bool:
        """Whether the store's schema is migrated (the store is opened on the first call)."""
        if not self._ready:
            with self._store_lock:
                if self._store is None:
                    self._store = MetricsStore(self.metrics.database_url, migrate=False)
                # Only a positive answer is kept: a sync may migrate the store at any time.
                self._ready = self._store.is_current()
        return self._ready

    @property
    def store(self) -> MetricsStore:
        """The metrics store; 503 while its schema is not migrated."""
        if not self.ready():
            raise HTTPServiceUnavailable(json_body={"error": NOT_MIGRATED})
        return t.cast(MetricsStore, self._store)

    def close(self) -> None:
        """Release the store's connections."""
        if self._store is not None:
            self._store.close()

    def start_sync(self) -> bool:
        """Start an incremental sync in a thread; ``False`` when one is already running."""
        with self.lock:
            if self.thread is not None and self.thread.is_alive():
                return False
            self.thread = threading.Thread(
                target=self._sync, name="pyramid_mixpanel-insights-sync", daemon=True
            )
            self.thread.start()
            return True

    def _sync(self) -> None:
        from ..metrics.sync import sync

        started = dt.datetime.now(dt.timezone.utc)
        try:
            report = sync(self.app_settings, progress=False)
        except Exception as exc:  # reported to whoever asks for the status, and logged
            self.log.error("mixpanel.insights_sync_failed", error=f"{type(exc).__name__}: {exc}")
            self.last_sync = {
                "status": "failed",
                "started": started.isoformat(),
                "error": f"{type(exc).__name__}: {exc}"[:500],
            }
            return
        self.last_sync = {
            "status": "finished",
            "started": started.isoformat(),
            "report": _jsonable(report),
        }


def _day(text: str | None, default: dt.date) -> dt.date | None:
    """The day ``text`` names (``default`` when absent), or ``None`` when it names none."""
    if text is None:
        return default
    if DAY.fullmatch(text) is None:
        return None
    try:
        day = dt.date.fromisoformat(text)
    except ValueError:  # 2024-13-01, 2023-02-29
        return None
    return day if day >= FIRST_DAY else None


def _bad_request(error: str, page: bool) -> HTTPBadRequest:
    """A 400 saying ``error``: JSON for the API, an HTML page (Pyramid's) for the page."""
    return HTTPBadRequest(error) if page else HTTPBadRequest(json_body={"error": error})


def _jsonable(value: object) -> t.Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {key: _jsonable(item) for key, item in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    return value


def _daily(day: DailyMetrics) -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], _jsonable(day))


def _previous(start: dt.date, end: dt.date) -> tuple[dt.date, dt.date] | None:
    """The period of as many days just before ``start`` (``None`` before 1970)."""
    length = (end - start).days + 1
    first = start - dt.timedelta(days=length)
    return (first, start - dt.timedelta(days=1)) if first >= FIRST_DAY else None


def _sorted(rows: list[AccountSummary], sort: str, descending: bool) -> list[AccountSummary]:
    key = SORT_KEYS[sort]
    present = sorted((row for row in rows if key(row) is not None), key=key, reverse=descending)
    return present + [row for row in rows if key(row) is None]


def _summary(row: AccountSummary) -> dict[str, t.Any]:
    return {**t.cast(dict[str, t.Any], _jsonable(row)), "trend": row.trend}


def _funnel(funnel: FunnelMetrics) -> dict[str, t.Any]:
    data = t.cast(dict[str, t.Any], _jsonable(funnel))
    data.update(
        conversion_rate=funnel.conversion_rate,
        completed_users=funnel.completed_users,
        drop_off_step=funnel.drop_off_step,
    )
    return data


class InsightsViews:
    """The views, bound to one :class:`InsightsState`."""

    def __init__(self, state: InsightsState) -> None:
        self.state = state

    def _range(self, request: Request, page: bool = False) -> tuple[dt.date, dt.date]:
        """``from`` and ``to`` (400 unless both are days from 1970 on, at most a year apart)."""
        now = dt.datetime.now(zoneinfo.ZoneInfo(self.state.timezone))
        yesterday = now.date() - dt.timedelta(days=1)
        end = _day(request.params.get("to"), yesterday)
        if end is None:
            raise _bad_request(BAD_DAY, page)
        # Clamped: the default start of a range ending near 1970 (or year 1) must not overflow.
        default_start = max(FIRST_DAY, end - dt.timedelta(days=self.state.settings.days - 1))
        start = _day(request.params.get("from"), default_start)
        if start is None:
            raise _bad_request(BAD_DAY, page)
        if start > end or (end - start).days >= MAX_RANGE_DAYS:
            raise _bad_request(BAD_RANGE, page)
        return start, end

    def _account(self, request: Request, page: bool = False) -> str:
        account = t.cast(str, request.matchdict["account"])
        # An id the store cannot hold (too long, a NUL: PostgreSQL would refuse the query) is
        # no account: asked for, it is not found.
        if not storable(account) or not self.state.store.has_account(account):
            error = f"no metrics for account {account[:100]!r}"
            raise HTTPNotFound(error) if page else HTTPNotFound(json_body={"error": error})
        return account

    def events(self, request: Request) -> dict[str, t.Any]:
        """Daily metrics and top events of one account."""
        account = self._account(request)
        start, end = self._range(request)
        days = self.state.store.daily(account, start, end)
        return {
            "account": account,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "days": [_daily(day) for day in days],
            "top_events": [{"event": name, "count": count} for name, count in rank_events(days)],
            # Events per weekday (Monday first) and hour, in the days' timezone.
            "heatmap": {
                "timezone": self.state.timezone,
                "weekdays": list(WEEKDAYS),
                "counts": heatmap_counts(days),
            },
        }

    def funnels(self, request: Request) -> dict[str, t.Any]:
        """Funnel conversion of one account: over the whole range, and per day.

        ``range`` has one entry per funnel: local funnels count each user once, by their first
        entry in the range (``"unique_users": true``); funnels pulled from Mixpanel add up
        their daily rows (``false``). ``funnels`` has the rows per entry day.
        """
        account = self._account(request)
        start, end = self._range(request)
        store = self.state.store
        before = self._previous_totals(account, start, end)
        ranged = []
        for funnel in store.funnel_totals(account, start, end):
            entry = {**_funnel(funnel), "unique_users": funnel.source == "local"}
            previous = before.get((funnel.source, funnel.funnel_id))
            entry["previous"] = None if previous is None else _funnel(previous)
            entry["change"] = None
            if previous is not None and previous.steps and previous.steps[0]:
                entry["change"] = {
                    "conversion_points": round(
                        100 * (funnel.conversion_rate - previous.conversion_rate), 2
                    ),
                    "steps": [a - b for a, b in zip(funnel.steps, previous.steps, strict=False)],
                }
            ranged.append(entry)
        return {
            "account": account,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "range": ranged,
            "funnels": [_funnel(funnel) for funnel in store.funnels(account, start, end)],
        }

    def _previous_totals(
        self, account: str, start: dt.date, end: dt.date
    ) -> dict[tuple[str, str], FunnelMetrics]:
        """The account's funnels over the previous period, by (source, funnel id)."""
        period = _previous(start, end)
        if period is None:
            return {}
        totals = self.state.store.funnel_totals(account, *period)
        return {(f.source, f.funnel_id): f for f in totals}

    def _order(self, request: Request, page: bool = False) -> tuple[str, bool]:
        sort = request.params.get("sort", "events")
        order = request.params.get("order", "asc" if sort == "account" else "desc")
        if sort not in SORT_KEYS or order not in ("asc", "desc"):
            error = f"sort is one of {', '.join(SORT_KEYS)}; order is asc or desc"
            raise _bad_request(error, page)
        return sort, order == "desc"

    def accounts(self, request: Request) -> dict[str, t.Any]:
        """Every account over the range: volume, trend, users, score, unusual days; paged."""
        start, end = self._range(request)
        sort, descending = self._order(request)
        try:
            number = int(request.params.get("page", "1"))
            size = int(request.params.get("per_page", str(PER_PAGE)))
        except ValueError:
            number = size = 0
        if number < 1 or not 1 <= size <= MAX_PER_PAGE:
            raise _bad_request(f"page >= 1 and per_page from 1 to {MAX_PER_PAGE}", False)
        rows = _sorted(self.state.store.overview(start, end), sort, descending)
        chosen = rows[(number - 1) * size : number * size]
        return {
            "from": start.isoformat(),
            "to": end.isoformat(),
            "sort": sort,
            "order": "desc" if descending else "asc",
            "page": number,
            "per_page": size,
            "total": len(rows),
            "accounts": [_summary(row) for row in chosen],
        }

    def accounts_page(self, request: Request) -> Response:
        """The accounts overview page: one sortable table."""
        start, end = self._range(request, page=True)
        sort, descending = self._order(request, page=True)
        rows = _sorted(self.state.store.overview(start, end), sort, descending)
        html = overview_page(rows, start, end, sort, descending, self.state.settings.page_prefix)
        return Response(html, content_type="text/html", charset="utf-8")

    def metrics_csv(self, request: Request) -> Response:
        """Every account's daily metrics as CSV, for churn analysis in a spreadsheet."""
        start, end = self._range(request)
        buffer = io.StringIO()
        write_csv(self.state.store.all_daily(start, end), buffer)
        response = Response(buffer.getvalue(), content_type="text/csv", charset="utf-8")
        name = f"mixpanel-metrics-{start.isoformat()}-{end.isoformat()}.csv"
        response.content_disposition = f'attachment; filename="{name}"'
        return response

    def ask(self, request: Request) -> dict[str, t.Any]:
        """A chat command: the matching endpoint's answer and a one-line summary."""
        question = request.params.get("q", "")[:500]
        for command, pattern in COMMANDS:
            match = pattern.match(question)
            if match is None:
                continue
            account = match.group("account").strip("\"'")
            request.matchdict = {**(request.matchdict or {}), "account": account}
            answer = self.events(request) if command == "events" else self.funnels(request)
            return {
                "command": command,
                "account": account,
                "summary": _said(command, answer),
                "answer": answer,
            }
        raise HTTPBadRequest(json_body={"error": "not a command I know", "understood": UNDERSTOOD})

    def reports(self, request: Request) -> dict[str, t.Any]:
        """The account's saved Insights reports over the range, per report and metric."""
        account = self._account(request)
        start, end = self._range(request)
        return {
            "account": account,
            "from": start.isoformat(),
            "to": end.isoformat(),
            "reports": report_series(self.state.store.reports(account, start, end)),
        }

    def group(self, request: Request) -> dict[str, t.Any]:
        """The account's group profile in Mixpanel (Group Analytics)."""
        account = t.cast(str, request.matchdict["account"])
        found = self.state.store.group_profile(account) if storable(account) else None
        if found is None:
            error = f"no group profile for account {account[:100]!r}"
            raise HTTPNotFound(json_body={"error": error})
        return t.cast(dict[str, t.Any], _jsonable(found))

    def users(self, request: Request) -> dict[str, t.Any]:
        """The account's profiles, counted (no one is named)."""
        account = t.cast(str, request.matchdict["account"])
        users = self.state.store.users(account) if storable(account) else None
        if users is None:
            error = f"no profiles for account {account[:100]!r}"
            raise HTTPNotFound(json_body={"error": error})
        return t.cast(dict[str, t.Any], _jsonable(users))

    def start_sync(self, request: Request) -> Response:
        """Start an incremental sync (202), or say one is running (409)."""
        if self.state.start_sync():
            return Response(json_body={"status": "started"}, status=202)
        return Response(json_body={"status": "running"}, status=409)

    def sync_status(self, request: Request) -> dict[str, t.Any]:
        """Whether a sync runs, how the last one ended, and how old the data is."""
        thread = self.state.thread
        state = self.state
        fresh = None
        if state.ready():
            fresh = freshness(state.store, state.metrics.max_age_hours, state.timezone)
        return {
            "running": bool(thread is not None and thread.is_alive()),
            "last_synced_day": fresh.as_dict()["last_synced_day"] if fresh else None,
            "freshness": fresh.as_dict() if fresh else None,
            "last_sync": self.state.last_sync,
        }

    def connection(self, request: Request) -> dict[str, t.Any]:
        """Whether a Mixpanel connection is stored, whose, and when it was verified."""
        return _connection(self.state.store.connection())

    def connect(self, request: Request) -> dict[str, t.Any]:
        """Verify a service account with one call to Mixpanel, then store it (secret encrypted).

        400 for a bad body or credentials Mixpanel refuses, 502 when Mixpanel cannot say, 503
        without ``mixpanel.metrics.secret_key``. The secret is never answered or logged.
        """
        state = self.state
        key = state.metrics.secret_key
        if key is None:
            raise HTTPServiceUnavailable(
                json_body={"error": "set mixpanel.metrics.secret_key to store a connection"}
            )
        fields = _connect_body(request)
        settings = {
            **state.app_settings,
            "mixpanel.service_account.username": fields["username"],
            "mixpanel.service_account.secret": fields["secret"],
            "mixpanel.service_account.project_id": fields["project_id"],
            "mixpanel.region": fields["region"],
        }
        try:
            # One cheap authenticated call: the project's saved funnels.
            MixpanelQuery(settings, max_retries=0).funnels()
        except MixpanelQueryError as exc:
            state.log.warning("mixpanel.connect_refused", status=exc.status)
            if exc.status in (401, 403):
                raise HTTPBadRequest(
                    json_body={"error": f"Mixpanel refused these credentials ({exc.status})"}
                ) from None
            raise HTTPBadGateway(
                json_body={
                    "error": f"Mixpanel could not verify them now ({exc.status or 'no answer'})"
                }
            ) from None
        connection = Connection(
            fields["username"],
            fields["project_id"],
            fields["region"],
            dt.datetime.now(dt.timezone.utc),
            encrypt(fields["secret"], key),
        )
        state.store.save_connection(connection)
        state.log.info(
            "mixpanel.connected", username=connection.username, project_id=connection.project_id
        )
        return _connection(connection)

    def disconnect(self, request: Request) -> dict[str, t.Any]:
        """Remove the stored connection."""
        deleted = self.state.store.delete_connection()
        return {"connected": False, "deleted": deleted}

    def page(self, request: Request) -> Response:
        """The account's HTML page."""
        account = self._account(request, page=True)
        start, end = self._range(request, page=True)
        store = self.state.store
        days = store.daily(account, start, end)
        html = account_page(
            account,
            start,
            end,
            days,
            rank_events(days),
            store.funnel_totals(account, start, end),
            store.users(account),
            self._previous_totals(account, start, end),
            self.state.timezone,
            report_series(store.reports(account, start, end)),
            store.group_profile(account),
        )
        return Response(html, content_type="text/html", charset="utf-8")


#: Views that change or show the stored Mixpanel connection: their own permission.
CONNECT_VIEWS = frozenset({"connection", "connect", "disconnect"})
#: Views that build their own response (HTML, CSV, a status code); the others render JSON.
RESPONSES = frozenset({"sync", "page", "accounts_page", "metrics_csv"})
#: The connect endpoint's body: field -> (longest, required).
CONNECT_FIELDS = {
    "username": (255, True),
    "secret": (512, True),
    "project_id": (64, True),
    "region": (8, False),
}


def _connect_body(request: Request) -> dict[str, str]:
    """The connect endpoint's fields, checked; 400 saying what is wrong (never the secret)."""
    try:
        body = request.json_body
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise HTTPBadRequest(json_body={"error": "send a JSON object"})
    unknown = sorted(str(name)[:50] for name in body if name not in CONNECT_FIELDS)
    if unknown:
        raise HTTPBadRequest(json_body={"error": f"unknown fields: {unknown}"})
    fields: dict[str, str] = {}
    for name, (longest, required) in CONNECT_FIELDS.items():
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and name == "project_id":
            value = str(value)
        if value is None and not required:
            continue
        if not isinstance(value, str) or not value.strip() or len(value) > longest:
            raise HTTPBadRequest(
                json_body={"error": f"{name} must be a non-empty string of at most {longest}"}
            )
        fields[name] = value.strip()
    if not fields["project_id"].isdigit():
        raise HTTPBadRequest(json_body={"error": "project_id must be the project's number"})
    region = fields.setdefault("region", "us").lower()
    if region not in REGIONS:
        raise HTTPBadRequest(json_body={"error": f"region must be one of {', '.join(REGIONS)}"})
    fields["region"] = region
    return fields


def _connection(connection: Connection | None) -> dict[str, t.Any]:
    if connection is None:
        return {"connected": False}
    return {
        "connected": True,
        "username": connection.username,
        "project_id": connection.project_id,
        "region": connection.region,
        "verified_at": connection.verified_at.isoformat(),
    }


def _said(command: str, answer: dict[str, t.Any]) -> str:
    """The one line a chat answer starts with."""
    account, span = answer["account"], f"from {answer['from']} to {answer['to']}"
    if command == "events":
        days = answer["days"]
        total = sum(day["total_events"] for day in days)
        top = answer["top_events"][0]["event"] if answer["top_events"] else None
        most = f"; most frequent: {top}" if top else ""
        return f"{account}: {total} events on {len(days)} active days {span}{most}."
    parts = [
        f"{f['funnel_name']} {f['conversion_rate']:.0%}"
        f" ({f['completed_users']} of {f['steps'][0] if f['steps'] else 0})"
        for f in answer["range"]
    ]
    if not parts:
        return f"{account}: no funnel data {span}."
    return f"{account}, funnel conversion {span}: " + "; ".join(parts) + "."


def register(config: Configurator) -> None:
    """Parse the settings and add the routes and views of :mod:`pyramid_mixpanel.insights`.

    Runs as a configuration action: no database is opened here.
    """
    from ..runtime import get_runtime

    app_settings = config.get_settings()
    settings = parse_insights_settings(app_settings)
    # Parsed here so a bad mixpanel.metrics.* setting stops the app at startup.
    metrics = parse_metrics_settings(app_settings)
    runtime = get_runtime(config.registry)
    state = InsightsState(
        settings, app_settings, metrics, runtime.log, timezone=runtime.settings.project_timezone
    )
    config.registry[INSIGHTS_KEY] = state
    views = InsightsViews(state)
    api, page = settings.api_prefix, settings.page_prefix
    permission = settings.permission
    for name, pattern, view, method in (
        ("events", f"{api}/events/{{account}}", views.events, "GET"),
        ("funnels", f"{api}/funnels/{{account}}", views.funnels, "GET"),
        ("users", f"{api}/users/{{account}}", views.users, "GET"),
        ("reports", f"{api}/reports/{{account}}", views.reports, "GET"),
        ("group", f"{api}/groups/{{account}}", views.group, "GET"),
        ("sync", f"{api}/sync", views.start_sync, "POST"),
        ("sync_status", f"{api}/sync", views.sync_status, "GET"),
        ("accounts", f"{api}/accounts", views.accounts, "GET"),
        ("metrics_csv", f"{api}/metrics.csv", views.metrics_csv, "GET"),
        ("ask", f"{api}/ask", views.ask, "GET"),
        ("accounts_page", page, views.accounts_page, "GET"),
        ("page", f"{page}/{{account}}", views.page, "GET"),
        ("connection", settings.connect_path, views.connection, "GET"),
        ("connect", settings.connect_path, views.connect, "POST"),
        ("disconnect", settings.connect_path, views.disconnect, "DELETE"),
    ):
        route = f"pyramid_mixpanel.insights.{name}"
        config.add_route(route, pattern, request_method=method)
        renderer = "json" if name not in RESPONSES else None
        needs = settings.connect_permission if name in CONNECT_VIEWS else permission
        config.add_view(view, route_name=route, renderer=renderer, permission=needs)
