"""Engagement score and volume anomalies of an account-day, and the alert hook.

Engagement score
    ``mixpanel.metrics.signals`` maps event names to adoption categories (``Report Exported =
    reporting``) and ``mixpanel.metrics.weights`` gives each category a weight (1 when not
    given). For one account and day, with ``U`` its active users and ``U_c`` those who did at
    least one event of category ``c``::

        score = 100 * sum(w_c * U_c / U) / sum(w_c)

    i.e. the weighted share of active users who used each part of the product: 0 when nobody
    did anything that counts (or no signals are configured), 100 when every active user touched
    every weighted category.

Anomalies
    An account-day's event volume ``x`` is compared with the account's volumes on the trailing
    ``anomaly_days`` synced days (days without events count as 0; days before the account's
    first day are left out)::

        z = (x - mean) / max(stddev, sqrt(mean), 1)

    The deviation is floored at the noise of a count (``sqrt(mean)``, and 1) so a perfectly flat
    history is not flagged for a change of one event. ``|z| >= anomaly_threshold`` is a
    ``"spike"`` (above) or a ``"drop"`` (below; a day with no events at all is flagged too),
    provided at least ``anomaly_min_days`` days of history exist.
"""

from __future__ import annotations

import datetime as dt
import math
import typing as t

from ..log import Log
from .config import MetricsSettings
from .model import Anomaly

if t.TYPE_CHECKING:
    from .freshness import Freshness

__all__ = [
    "detect_anomaly",
    "engagement_score",
    "engagement_scorer",
    "log_anomaly",
    "send_alert",
]

# Metrics keep no secret and no PII; the shared logger still redacts and honours structlog.
_LOG = Log()


def engagement_score(adopted: t.Mapping[str, int], users: int, settings: MetricsSettings) -> float:
    """The 0-100 engagement score of an account-day (see the module documentation).

    :param adopted: per category, the active users who did one of its events.
    :param users: the account's active users that day.
    """
    counts = [adopted.get(category, 0) for category in settings.categories]
    return engagement_scorer(settings)(counts, users)


def engagement_scorer(settings: MetricsSettings) -> t.Callable[[t.Sequence[int], int], float]:
    """:func:`engagement_score` with the weights worked out once, for many account-days.

    The returned function takes the adopting users of each category in the order of
    ``settings.categories``, and the active users.
    """
    weights = [settings.weights.get(category, 1.0) for category in settings.categories]
    total = math.fsum(weights)

    def score(adopted: t.Sequence[int], users: int) -> float:
        if not users or not weights:
            return 0.0
        reached = math.fsum(
            weight * min(count, users) / users
            for weight, count in zip(weights, adopted, strict=True)
        )
        return round(100 * reached / total, 2)

    return score


def detect_anomaly(
    account: str,
    date: dt.date,
    total_events: int,
    history: t.Sequence[int],
    settings: MetricsSettings,
) -> Anomaly | None:
    """Flag ``total_events`` against ``history`` (the trailing days' volumes), or ``None``."""
    days = len(history)
    if days < settings.anomaly_min_days:
        return None
    mean = math.fsum(history) / days
    variance = math.fsum((value - mean) ** 2 for value in history) / days
    stddev = max(math.sqrt(variance), math.sqrt(mean), 1.0)
    z = (total_events - mean) / stddev
    if abs(z) < settings.anomaly_threshold:
        return None
    return Anomaly(
        account=account,
        date=date,
        kind="spike" if z > 0 else "drop",
        total_events=total_events,
        mean=round(mean, 4),
        stddev=round(stddev, 4),
        z=round(z, 4),
        threshold=settings.anomaly_threshold,
        history_days=days,
    )


def log_anomaly(anomaly: Anomaly, log: Log = _LOG) -> None:
    """The default alert: a ``mixpanel.metrics_anomaly`` warning on the ``pyramid_mixpanel`` log."""
    log.warning(
        "mixpanel.metrics_anomaly",
        kind=anomaly.kind,
        account=anomaly.account,
        date=anomaly.date.isoformat(),
        events=anomaly.total_events,
        usual=round(anomaly.mean, 1),
        stddev=round(anomaly.stddev, 1),
        z=round(anomaly.z, 1),
    )


def send_alert(anomaly: Anomaly | Freshness, settings: MetricsSettings, log: Log = _LOG) -> bool:
    """Call ``mixpanel.metrics.alert`` (or log); ``False`` if the hook raised.

    With an :class:`Anomaly`, or a stale :class:`~.freshness.Freshness`: the one hook serves
    both. Without a hook an anomaly is logged by :func:`log_anomaly`, stale data as
    ``mixpanel.metrics_stale``. A failing hook is logged and never stops a sync: the flag is
    stored either way.
    """
    try:
        if settings.alert is not None:
            settings.alert(anomaly)
        elif isinstance(anomaly, Anomaly):
            log_anomaly(anomaly, log)
        else:
            log.warning("mixpanel.metrics_stale", **anomaly.as_dict())
    except Exception as exc:
        log.error(
            "mixpanel.metrics_alert_failed",
            account=anomaly.account,
            date=str(anomaly.date),
            error=f"{type(exc).__name__}: {str(exc)[:300]}",
        )
        return False
    return True
