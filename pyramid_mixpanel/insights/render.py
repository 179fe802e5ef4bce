"""The account page: an event-volume chart, top events and funnel steps, as plain HTML + SVG.

Rendered on the server with no script and no third-party asset, so it works behind a closed
network, in an e-mail and in a screenshot. Everything from the database is escaped.
"""

from __future__ import annotations

import datetime as dt
import typing as t
from html import escape

from ..metrics.model import DailyMetrics, FunnelMetrics, ProfileAggregate

__all__ = ["account_page", "funnel_chart", "funnel_summary", "volume_chart"]


BAR = "#2563eb"
FUNNEL = "#16a34a"
ANOMALY = "#dc2626"
WIDTH, HEIGHT, PAD = 720, 220, 30

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 60em; margin: 2em auto; color: #111 }
h1 small { color: #666; font-weight: normal }
table { border-collapse: collapse } td, th { padding: .2em .8em; text-align: left }
td.n { text-align: right; font-variant-numeric: tabular-nums }
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
) -> str:
    """The whole HTML page of one account.

    ``funnels``: one per funnel over the whole range
    (:meth:`~pyramid_mixpanel.metrics.MetricsStore.funnel_totals`).
    """
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
        f"<p>{escape(funnel_summary(funnel))}</p>" + funnel_chart(funnel, index)
        for index, funnel in enumerate(funnels)
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{escape(account)} · Mixpanel insights</title><style>{STYLE}</style></head>
<body>
<h1>{escape(account)} <small>Mixpanel insights</small></h1>
{summary}
<h2>Event volume</h2>
{volume_chart(days, start, end)}
<h2>Top events</h2>
{
        f"<table id='top-events'><tr><th>Event</th><th>Count</th></tr>{top}</table>"
        if top
        else "<p class='empty'>No events in this range.</p>"
    }
<h2>Funnels</h2>
{funnel_html or "<p class='empty'>No funnel data in this range.</p>"}
</body></html>
"""
