"""The accuracy check of ``benchmarks/accuracy.py`` on a smaller stream: exact, in CI.

Every figure the sync stores (daily metrics, funnel rows per entry day, funnels over ranges
counting each user once) against independent references, for a random export with copies,
disorder, sessions across midnight, users in two accounts and repeated funnel entries over 50
accounts. The check itself is checked: summing daily funnel rows over a range, the mistake this
replaced, is caught.
"""

from __future__ import annotations

import datetime as dt

import pytest

from benchmarks import accuracy
from pyramid_mixpanel.metrics import FunnelMetrics, MetricsStore


@pytest.fixture(scope="module")
def events() -> list[dict[str, object]]:
    return accuracy.stream(seed=11, events=6000, accounts=50, days=10)


def test_every_stored_figure_is_exact(events: list[dict[str, object]]) -> None:
    figures = accuracy.check(events, days=10)
    assert figures.wrong == []
    assert figures.compared > 5000


def test_the_check_catches_daily_rows_added_up(
    events: list[dict[str, object]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def added_up(
        store: MetricsStore, account: str, first: dt.date, last: dt.date
    ) -> list[FunnelMetrics]:
        totals: dict[str, list[int]] = {}
        for row in store.funnels(account, first, last):
            steps = totals.setdefault(row.funnel_id, [0] * len(row.steps))
            for step, users in enumerate(row.steps):
                steps[step] += users
        return [FunnelMetrics(account, f, f, first, s) for f, s in totals.items()]

    monkeypatch.setattr(MetricsStore, "funnel_totals", added_up)
    figures = accuracy.check(events, days=10)
    assert any(line.startswith("range ") for line in figures.wrong)


def test_the_benchmark_prints_its_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert accuracy.main(["--events", "1500", "--accounts", "50", "--days", "5"]) == 0
    out = capsys.readouterr().out
    assert "0 wrong (100.0000% exact)" in out
    assert "-> PASS" in out
