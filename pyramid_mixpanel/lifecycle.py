"""When a request's messages are released: only after the request really succeeded.

Pyramid's order matters here. pyramid_retry runs each attempt as a new request; tweens (pyramid_tm
over excview over the view) run next; response callbacks run only when a response was produced,
also when an exception view rendered it (``request.exception`` is then set); finished callbacks
always run, and ``request.exception`` is reset to ``None`` in them when no exception view matched,
so they cannot tell a failure from a success on their own.

Hence, per ``mixpanel.release_policy``:

``commit`` (default)
    Under an active pyramid_tm transaction, messages are released by an after-commit hook
    registered when ``request.mixpanel`` is first used, and only if the commit succeeded; an
    aborted, doomed or vetoed transaction never calls the hook, so nothing is sent. Without a
    transaction this is the same as ``success``.
``success``
    Released by a response callback when ``request.exception`` is not set.
``always``
    Released by a finished callback whatever happened (the original package's behaviour).

In every policy, a request whose exception propagated (no response callback ran) sends nothing:
the finished callback discards what is still buffered and logs how many messages were dropped.
"""

from __future__ import annotations

import typing as t

from .track import MixpanelTrack, distinct_id_of, mixpanel_init

if t.TYPE_CHECKING:
    from pyramid.request import Request
    from pyramid.response import Response

    from .identity import DeviceCookie

__all__ = ["LISTENERS", "distinct_id_of", "request_mixpanel"]
#: Called with every ``request.mixpanel`` when it is built (the pytest plugin's recorder).
LISTENERS: list[t.Callable[[MixpanelTrack], None]] = []


def request_mixpanel(request: Request) -> MixpanelTrack:
    """Build ``request.mixpanel`` and tie its release to the request's outcome."""
    track = mixpanel_init(request)
    for listener in LISTENERS:
        listener(track)
    cookie = track.device_cookie
    if cookie is not None:
        request.add_response_callback(_write_device_cookie(track, cookie))
    policy = track.settings.release_policy
    if policy == "always":
        request.add_finished_callback(lambda _request: track.settle(True))
        return track

    if policy == "commit" and _join_transaction(request, track):
        request.add_response_callback(_after_commit_response(track))
    else:
        request.add_response_callback(_on_response(track))
    request.add_finished_callback(_on_finished(track))
    return track


def _write_device_cookie(
    track: MixpanelTrack, cookie: DeviceCookie
) -> t.Callable[[Request, Response], None]:
    def callback(request: Request, response: Response) -> None:
        # A new visitor, a forged cookie or reset(): the browser keeps the id drawn for it.
        if track.issued_device_id is not None:
            cookie.write(request, response, track.issued_device_id)

    return callback


def _join_transaction(request: Request, track: MixpanelTrack) -> bool:
    """Register an after-commit hook on the request's live pyramid_tm transaction, if any."""
    if not request.environ.get("tm.active"):
        return False
    try:
        transaction = request.tm.get()
    except Exception:  # transaction.interfaces.NoTransaction in explicit mode, after commit
        return False

    def after_commit(status: bool) -> None:
        track.settle(status, "the transaction failed to commit")

    transaction.addAfterCommitHook(after_commit)
    return True


def _on_response(track: MixpanelTrack) -> t.Callable[[Request, Response], None]:
    def callback(request: Request, response: Response) -> None:
        if request.exception is not None:
            track.settle(False, f"an exception view rendered {type(request.exception).__name__}")
        else:
            track.settle(True)

    return callback


def _after_commit_response(track: MixpanelTrack) -> t.Callable[[Request, Response], None]:
    def callback(request: Request, response: Response) -> None:
        # The hook settles on commit. Reaching the response unsettled means the transaction was
        # aborted (exception view, doom, commit veto), which drops after-commit hooks.
        track.settle(False, "the transaction was aborted")

    return callback


def _on_finished(track: MixpanelTrack) -> t.Callable[[Request], None]:
    def callback(request: Request) -> None:
        track.settle(False, "the request raised an exception")

    return callback
