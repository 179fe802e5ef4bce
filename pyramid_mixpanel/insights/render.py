"""The account page: an event-volume chart, top events and funnel steps, as plain HTML + SVG.

Rendered on the server with no script and no third-party asset, so it works behind a closed
network, in an e-mail and in a screenshot. Everything from the database is escaped.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from html import escape
from urllib.parse import quote, urlencode

from ..metrics.model import (
    AccountSummary,
    DailyMetrics,
    FunnelMetrics,
    GroupProfile,
    ProfileAggregate,
)
from ..metrics.reports import ALL_ACCOUNTS, ReportValue

__all__ = [
    "OVERVIEW_COLUMNS",
    "account_page",
    "funnel_chart",
    "funnel_summary",
    "heatmap",
    "heatmap_counts",
    "overview_page",
    "report_series",
    "volume_chart",
]


BAR = "#2563eb"
FUNNEL = "#16a34a"
ANOMALY = "#dc2626"
WIDTH, HEIGHT, PAD = 720, 220, 30

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; color: #111 }
h1 small { color: #666; font-weight: normal }
table { border-collapse: collapse } td, th { padding: .2em .8em; text-align: left }
td.n { text-align: right; font-variant-numeric: tabular-nums }
svg { max-width: 100%; height: auto }
.scroll { overflow-x: auto }
@media (max-width: 40em) { body { margin: 1em .5em } td, th { padding: .2em .4em } }
.empty { color: #666 }
"""


def volume_chart(days: t.Sequence[DailyMetrics], start: dt.date, end: dt.date) -> str:
    """An SVG bar chart of events per day from ``start`` to ``end`` (missing days are 0)."""
    by_day = {day.date: day for day in days}
    count = (end - start).days + 1
    dates = [start + dt.timedelta(days=n) for n in range(count)]
    peak = max((day.total_events for day in days), default=0) or 1
    step = (WIDTH - 2 * PAD) / count
    bars = []
    for index, date in enumerate(dates):
        day = by_day.get(date)
        total = day.total_events if day else 0
        height = (HEIGHT - 2 * PAD) * total / peak
        color = ANOMALY if day is not None and day.anomaly else BAR
        bars.append(
            f'<rect x="{PAD + index * step + 1:.1f}" y="{HEIGHT - PAD - height:.1f}"'
            f' width="{max(step - 2, 1):.1f}" height="{height:.1f}" fill="{color}">'
            f"<title>{date.isoformat()}: {total} events</title></rect>"
        )
    return (
        f'<svg id="volume-chart" role="img" aria-label="Events per day" width="{WIDTH}"'
        f' height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}">'
        f'<line x1="{PAD}" y1="{HEIGHT - PAD}" x2="{WIDTH - PAD}" y2="{HEIGHT - PAD}"'
        ' stroke="#999"/>'
        f'<text x="{PAD}" y="{HEIGHT - 8}" font-size="12">{start.isoformat()}</text>'
        f'<text x="{WIDTH - PAD}" y="{HEIGHT - 8}" font-size="12" text-anchor="end">'
        f"{end.isoformat()}</text>"
        f'<text x="{PAD}" y="{PAD - 10}" font-size="12">peak {peak if days else 0}</text>'
        + "".join(bars)
        + "</svg>"
    )


WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
HEAT = (37, 99, 235)  # the chart blue, from transparent to full
CELL = 22


def heatmap_counts(days: t.Sequence[DailyMetrics]) -> list[list[int]]:
    """Events per weekday (Monday first) and hour of the day, over ``days``."""
    grid = [[0] * 24 for _ in WEEKDAYS]
    for day in days:
        row = grid[day.date.weekday()]
        for hour, count in enumerate(day.hours[:24]):
            row[hour] += count
    return grid


def heatmap(days: t.Sequence[DailyMetrics], zone: str) -> str:
    """An SVG grid of events per weekday and hour (in the days' timezone ``zone``)."""
    grid = heatmap_counts(days)
    peak = max((count for row in grid for count in row), default=0) or 1
    left, top = 40, 18
    cells = []
    for hour in range(0, 24, 3):
        cells.append(
            f'<text x="{left + hour * CELL}" y="{top - 5}" font-size="10">{hour:02d}h</text>'
        )
    for index, (name, row) in enumerate(zip(WEEKDAYS, grid, strict=True)):
        y = top + index * CELL
        cells.append(f'<text x="0" y="{y + 15}" font-size="11">{name}</text>')
        for hour, count in enumerate(row):
            shade = 0.08 + 0.92 * count / peak if count else 0.0
            cells.append(
                f'<rect x="{left + hour * CELL}" y="{y}" width="{CELL - 2}" height="{CELL - 2}"'
                f' fill="rgb{HEAT}" fill-opacity="{shade:.2f}" stroke="#e5e7eb">'
                f"<title>{name} {hour:02d}:00-{hour:02d}:59 {escape(zone)}: {count} events"
                "</title></rect>"
            )
    width, height = left + 24 * CELL, top + len(WEEKDAYS) * CELL
    return (
        f'<svg id="heatmap" role="img" aria-label="Events by weekday and hour ({escape(zone)})"'
        f' width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        + "".join(cells)
        + "</svg>"
    )


def report_series(values: t.Sequence[ReportValue]) -> list[dict[str, t.Any]]:
    """Saved-report values grouped per report and metric, oldest day first.

    Each with the latest value and the range's total; ``all_accounts``: the report is not
    broken down by account.
    """
    grouped: dict[tuple[str, str, str], list[ReportValue]] = {}
    for value in values:
        grouped.setdefault((value.report_id, value.metric, value.account), []).append(value)
    out = []
    for (report_id, metric, account), items in sorted(grouped.items()):
        items.sort(key=lambda v: v.date)
        out.append(
            {
                "report_id": report_id,
                "metric": metric,
                "all_accounts": account == ALL_ACCOUNTS,
                "values": [{"date": v.date.isoformat(), "value": v.value} for v in items],
                "latest": {"date": items[-1].date.isoformat(), "value": items[-1].value},
                "total": sum(v.value for v in items),
            }
        )
    return out


def _reports_table(series: t.Sequence[dict[str, t.Any]]) -> str:
    if not series:
        return "<p class='empty'>No saved reports in this range.</p>"
    rows = "".join(
        f"<tr><td>{escape(s['report_id'])}</td><td>{escape(s['metric'])}"
        + (" <small>(all accounts)</small>" if s["all_accounts"] else "")
        + f"</td><td class='n'>{s['latest']['value']:g}</td>"
        f"<td>{escape(s['latest']['date'])}</td><td class='n'>{s['total']:g}</td></tr>"
        for s in series
    )
    return (
        "<div class='scroll'><table id='reports'><tr><th>Report</th><th>Metric</th>"
        "<th>Latest</th><th>On</th><th>Range total</th></tr>" + rows + "</table></div>"
    )


def _group_section(group: GroupProfile | None) -> str:
    if group is None:
        return ""
    rows = "".join(
        f"<tr><th>{escape(name)}</th><td>{escape(str(value))}</td></tr>"
        for name, value in group.properties.items()
    )
    return f"<h2>Group profile <small>({escape(group.group_key)})</small></h2>" + (
        f"<table id='group'>{rows}</table>" if rows else "<p class='empty'>No properties.</p>"
    )


def funnel_chart(funnel: FunnelMetrics, index: int) -> str:
    """Horizontal bars, one per step, with the share of the first step."""
    first = funnel.steps[0] if funnel.steps and funnel.steps[0] else 1
    rows = []
    for step, users in enumerate(funnel.steps):
        width = 400 * users / first
        rows.append(
            f'<rect x="0" y="{step * 28}" width="{width:.1f}" height="22" fill="{FUNNEL}"/>'
            f'<text x="{width + 6:.1f}" y="{step * 28 + 16}" font-size="13">step {step + 1}:'
            f" {users} ({100 * users / first:.0f}%)</text>"
        )
    height = max(len(funnel.steps), 1) * 28
    return (
        f'<svg class="funnel-chart" id="funnel-{index}" width="560" height="{height}"'
        f' viewBox="0 0 560 {height}">' + "".join(rows) + "</svg>"
    )


def funnel_trend(funnel: FunnelMetrics, previous: FunnelMetrics | None) -> str:
    """How the funnel's conversion moved against the previous period of as many days."""
    if previous is None or not previous.steps or not previous.steps[0]:
        return "No entries in the previous period to compare with."
    points = 100 * (funnel.conversion_rate - previous.conversion_rate)
    return (
        f"Previous period: {previous.conversion_rate:.0%} converted"
        f" ({previous.completed_users} of {previous.steps[0]}); {points:+.0f} points."
    )


def funnel_summary(funnel: FunnelMetrics) -> str:
    """One line on a funnel over the page's range, saying what its numbers count."""
    entered = funnel.steps[0] if funnel.steps else 0
    if funnel.source == "local":
        return (
            f"{funnel.conversion_rate:.0%} converted: {funnel.completed_users} of {entered}"
            " users completed (each user once, by their first entry in the range)."
        )
    return (
        f"{funnel.conversion_rate:.0%} converted: {funnel.completed_users} of {entered} entries"
        " completed (Mixpanel's daily rows added up: a user who entered on several days counts"
        " on each)."
    )


def account_page(
    account: str,
    start: dt.date,
    end: dt.date,
    days: t.Sequence[DailyMetrics],
    top_events: t.Sequence[tuple[str, int]],
    funnels: t.Sequence[FunnelMetrics],
    users: ProfileAggregate | None,
    previous: t.Mapping[tuple[str, str], FunnelMetrics] | None = None,
    zone: str = "UTC",
    reports: t.Sequence[dict[str, t.Any]] = (),
    group: GroupProfile | None = None,
) -> str:
    """The whole HTML page of one account.

    ``funnels``: one per funnel over the whole range
    (:meth:`~pyramid_mixpanel.metrics.MetricsStore.funnel_totals`); ``previous``: the same
    over the period of as many days before, by (source, funnel id), for the trend.
    """
    previous = previous or {}
    total = sum(day.total_events for day in days)
    anomalies = [day for day in days if day.anomaly]
    score = days[-1].engagement_score if days else None
    summary = (
        f"<p>{total} events from {start.isoformat()} to {end.isoformat()}"
        + (f", {users.users} known users" if users else "")
        + (f", engagement score {score:.0f}/100 on the last day" if score is not None else "")
        + ".</p>"
    )
    if anomalies:
        summary += (
            "<p>Unusual days: "
            + ", ".join(
                f"{escape(day.date.isoformat())} ({escape(str(day.anomaly))})" for day in anomalies
            )
            + "</p>"
        )
    top = "".join(
        f'<tr><td>{escape(name)}</td><td class="n">{count}</td></tr>' for name, count in top_events
    )
    funnel_html = "".join(
        f"<h3>{escape(funnel.funnel_name)} <small>({escape(funnel.source)})</small></h3>"
        f"<p>{escape(funnel_summary(funnel))}</p>"
        f"<p class='trend'>{escape(funnel_trend(funnel, previous.get(_key(funnel))))}</p>"
        + funnel_chart(funnel, index)
        for index, funnel in enumerate(funnels)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(account)} · Mixpanel insights</title><style>{STYLE}</style></head>
<body>
<h1>{escape(account)} <small>Mixpanel insights</small></h1>
{summary}
<h2>Event volume</h2>
{volume_chart(days, start, end)}
<h2>Activity by weekday and hour <small>({escape(zone)})</small></h2>
<div class="scroll">{heatmap(days, zone)}</div>
<h2>Top events</h2>
{
        f"<table id='top-events'><tr><th>Event</th><th>Count</th></tr>{top}</table>"
        if top
        else "<p class='empty'>No events in this range.</p>"
    }
<h2>Funnels</h2>
{funnel_html or "<p class='empty'>No funnel data in this range.</p>"}
<h2>Saved reports</h2>
{_reports_table(reports)}
{_group_section(group)}
</body></html>
"""


def _key(funnel: FunnelMetrics) -> tuple[str, str]:
    return (funnel.source, funnel.funnel_id)


#: The overview's columns: (sort key, heading).
OVERVIEW_COLUMNS = (
    ("account", "Account"),
    ("events", "Events"),
    ("trend", "Trend"),
    ("users", "Daily users (mean)"),
    ("score", "Engagement"),
    ("anomalies", "Unusual days"),
)


def overview_page(
    summaries: t.Sequence[AccountSummary],
    start: dt.date,
    end: dt.date,
    sort: str,
    descending: bool,
    page_prefix: str,
) -> str:
    """Every account in one sortable table, each linking to its page."""
    dates = {"from": start.isoformat(), "to": end.isoformat()}
    heads = []
    for key, label in OVERVIEW_COLUMNS:
        flip = not descending if key == sort else key != "account"
        order = "desc" if flip else "asc"
        link = "?" + urlencode({**dates, "sort": key, "order": order})
        mark = (" ▼" if descending else " ▲") if key == sort else ""
        heads.append(f'<th><a href="{escape(link)}">{escape(label)}</a>{mark}</th>')
    rows = []
    for row in summaries:
        href = f"{page_prefix}/{quote(row.account, safe='')}?" + urlencode(dates)
        trend = "n/a" if row.trend is None else f"{row.trend:+.0%}"
        score = "n/a" if row.score is None else f"{row.score:.0f}"
        rows.append(
            f'<tr><td><a href="{escape(href)}">{escape(row.account)}</a></td>'
            f'<td class="n">{row.events}</td><td class="n">{trend}</td>'
            f'<td class="n">{row.mean_daily_users:g}</td><td class="n">{score}</td>'
            f'<td class="n">{row.anomalies}</td></tr>'
        )
    table = (
        f"<div class='scroll'><table id='accounts'><tr>{''.join(heads)}</tr>{''.join(rows)}"
        "</table></div>"
        if rows
        else "<p class='empty'>No accounts have metrics yet.</p>"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Accounts · Mixpanel insights</title><style>{STYLE}</style></head>
<body>
<h1>Accounts <small>Mixpanel insights</small></h1>
<p>{len(summaries)} accounts, {start.isoformat()} to {end.isoformat()}; the trend compares the
events with the {(end - start).days + 1} days before.</p>
{table}
</body></html>
"""
