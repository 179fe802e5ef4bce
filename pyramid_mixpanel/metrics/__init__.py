"""Per-account metrics from Mixpanel: aggregated from the raw export, stored in SQL.

Events and profiles are mapped to *accounts* (your customers' account ids) by a property such as
a ``company_id`` group key, or by a callable. Per account and UTC day the sync stores total
events, unique users, sessions (30-minute inactivity rule), events per user, events per name,
breakdowns by configured properties, an engagement score and an anomaly flag; funnel conversion
computed locally and pulled from saved Mixpanel funnels; and profile aggregates. Counts and
account ids are stored, no distinct ids, emails or names; for local funnels over a range to count
each user once, each user's funnel entries are kept under a keyed pseudonym
(:meth:`MetricsStore.pseudonym`).

Needs the ``metrics`` extra (``pip install 'pyramid_mixpanel[metrics]'``)::

    from pyramid_mixpanel.metrics import MetricsStore, sync

    report = sync(registry.settings, from_date="2026-01-01", to_date="2026-01-31")
    with MetricsStore("sqlite:///mixpanel-metrics.db") as store:
        store.daily("acme", date(2026, 1, 1), date(2026, 1, 31))

or ``pmixpanel sync development.ini [--from DAY --to DAY | --days N]``.
"""

from __future__ import annotations

from .aggregate import AggregateResult, Aggregator, aggregate_events, aggregate_profiles
from .config import LocalFunnel, MetricsSettings, parse_metrics_settings
from .model import Anomaly, DailyMetrics, FunnelEntry, FunnelMetrics, ProfileAggregate
from .score import detect_anomaly, engagement_score, log_anomaly
from .store import MetricsStore
from .sync import MalformedExportError, SyncError, SyncReport, sync

__all__ = [
    "AggregateResult",
    "Aggregator",
    "Anomaly",
    "DailyMetrics",
    "FunnelEntry",
    "FunnelMetrics",
    "LocalFunnel",
    "MalformedExportError",
    "MetricsSettings",
    "MetricsStore",
    "ProfileAggregate",
    "SyncError",
    "SyncReport",
    "aggregate_events",
    "aggregate_profiles",
    "detect_anomaly",
    "engagement_score",
    "log_anomaly",
    "parse_metrics_settings",
    "sync",
]
