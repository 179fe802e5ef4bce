"""Per-request cost of ``request.mixpanel`` against a bare ``mixpanel.Mixpanel`` client.

Both sides make the same four calls — three ``track`` with two properties each and one
``profile_set`` with two properties — into a consumer that does nothing, so only the cost of
the add-on (request-scoped helper, validation, buffering, release) is compared. Ours also builds
``request.mixpanel`` from a real Pyramid request and settles it as the request lifecycle would.
A and B are interleaved over several rounds; medians are reported.
Target: ratio <= 1.0 (cheaper than the official client itself).

Run: ``make bench`` (or ``python benchmarks/overhead.py``).
"""

from __future__ import annotations

import statistics
import sys
import time
import typing as t

import mixpanel
from pyramid.config import Configurator
from pyramid.request import Request

from pyramid_mixpanel import EventProperties, Events, ProfileProperties
from pyramid_mixpanel.lifecycle import request_mixpanel

ROUNDS = 15
CALLS_PER_ROUND = 2000
TARGET = 1.0


class NoopConsumer(mixpanel.Consumer):  # type: ignore[misc]  # untyped base
    """Swallows messages: the benchmark measures building them, not sending them."""

    def __init__(self) -> None:
        pass

    def send(self, *args: object, **kwargs: object) -> None:
        pass

    def flush(self) -> None:
        pass


def ours() -> t.Callable[[], None]:
    with Configurator(
        settings={"mixpanel.token": "bench-token", "mixpanel.consumer": NoopConsumer}
    ) as config:
        config.include("pyramid_mixpanel")
    registry = config.registry
    # Requests are built ahead of time: creating a WebOb request is Pyramid's cost, not ours.
    requests: list[Request] = []

    def prepare() -> None:
        requests.clear()
        for _ in range(CALLS_PER_ROUND):
            request = Request.blank("/")
            request.registry = registry
            requests.append(request)

    def one_request() -> None:
        mp = request_mixpanel(requests.pop())
        mp.distinct_id = "user-1"
        mp.track(Events.page_viewed, {EventProperties.path: "/a", EventProperties.title: "A"})
        mp.track(
            Events.button_link_clicked, {EventProperties.path: "/a", EventProperties.title: "B"}
        )
        mp.track(Events.user_logged_in, {EventProperties.path: "/a", EventProperties.title: "C"})
        mp.profile_set(
            {ProfileProperties.dollar_email: "a@b.c", ProfileProperties.dollar_name: "A"}
        )
        mp.settle(True)

    one_request.prepare = prepare  # type: ignore[attr-defined]  # a function attribute, on purpose
    return one_request


def bare() -> t.Callable[[], None]:
    client = mixpanel.Mixpanel("bench-token", consumer=NoopConsumer())

    def one_request() -> None:
        client.track("user-1", "Page Viewed", {"Path": "/a", "Title": "A"})
        client.track("user-1", "Button/Link Clicked", {"Path": "/a", "Title": "B"})
        client.track("user-1", "User Logged In", {"Path": "/a", "Title": "C"})
        client.people_set("user-1", {"$email": "a@b.c", "$name": "A"})

    return one_request


def per_call_us(func: t.Callable[[], None]) -> float:
    prepare = getattr(func, "prepare", None)
    if prepare is not None:
        prepare()
    started = time.perf_counter_ns()
    for _ in range(CALLS_PER_ROUND):
        func()
    return (time.perf_counter_ns() - started) / CALLS_PER_ROUND / 1000


def main() -> int:
    a, b = ours(), bare()
    for func in (a, b):  # warm-up
        per_call_us(func)
    ours_us: list[float] = []
    bare_us: list[float] = []
    for _ in range(ROUNDS):
        ours_us.append(per_call_us(a))
        bare_us.append(per_call_us(b))
    ratios = [x / y for x, y in zip(ours_us, bare_us, strict=True)]
    ours_median = statistics.median(ours_us)
    bare_median = statistics.median(bare_us)
    ratio = statistics.median(ratios)
    print("Per-request cost: 3 track + 1 profile_set, no-op consumer")
    print(f"{'':32}{'median µs/request':>20}")
    print(f"{'bare mixpanel.Mixpanel (limit)':32}{bare_median:>20.1f}")
    print(f"{'request.mixpanel':32}{ours_median:>20.1f}")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(
        f"ratio (median of {ROUNDS} interleaved rounds): {ratio:.2f}  target <= {TARGET}: {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
