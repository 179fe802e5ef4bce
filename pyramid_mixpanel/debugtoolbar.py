"""A pyramid_debugtoolbar panel: what the request tracked and what became of it.

Enable it with ``debugtoolbar.extra_panels = pyramid_mixpanel.debugtoolbar.MixpanelDebugPanel``
(``pyramid_debugtoolbar`` is an optional dependency). The panel lists each message of the
request — endpoint, event or profile operation, properties — and says whether the request's
messages were delivered, held back (failed request, aborted transaction) or recorded in
testing mode.
"""

from __future__ import annotations

import json
import typing as t

from pyramid_debugtoolbar.panels import DebugPanel

if t.TYPE_CHECKING:
    from pyramid.request import Request

    from .track import MixpanelTrack

__all__ = ["MixpanelDebugPanel", "describe"]


def describe(track: MixpanelTrack | None) -> dict[str, t.Any]:
    """The panel's data for one request's ``request.mixpanel`` (``None``: never used)."""
    if track is None:
        return {"state": "not used", "messages": []}
    if track.testing:
        state = "testing mode: recorded, not sent"
        if track.outcome is False:
            state += " (and held back: the request failed)"
        messages = [(m["endpoint"], m["msg"]) for m in track.mocked_messages]
    else:
        state = {True: "handed to delivery", False: "held back: the request failed"}.get(
            t.cast(bool, track.outcome), "pending"
        )
        messages = [(endpoint, json.loads(body)) for endpoint, body in track.history]
    return {
        "state": state,
        "distinct_id": track.distinct_id,
        "messages": [
            (endpoint, json.dumps(message, indent=2, sort_keys=True, default=str))
            for endpoint, message in messages
        ],
    }


class MixpanelDebugPanel(DebugPanel):  # type: ignore[misc]  # untyped base
    """Lists what ``request.mixpanel`` tracked and whether it was delivered."""

    name = "mixpanel"
    has_content = True
    template = "pyramid_mixpanel:templates/mixpanel.dbtmako"
    title = "Mixpanel"
    nav_title = "Mixpanel"

    def __init__(self, request: Request) -> None:
        self.track: MixpanelTrack | None = None
        # Finished callbacks run after the request was judged, so the outcome is final when
        # the panel is rendered later by the toolbar.
        request.add_finished_callback(self._finished)

    def _finished(self, request: Request) -> None:
        self.track = request.__dict__.get("mixpanel")

    def render_vars(self, request: Request) -> dict[str, t.Any]:
        """The template's variables, computed when the panel is shown."""
        data = describe(self.track)
        count = len(data["messages"])
        self.nav_subtitle = f"{count} message{'s' if count != 1 else ''}"
        return data
