"""Mixpanel's ID merge, as documented, for the loopback stand-in: who did each event in the end.

Each rule cites its page on docs.mixpanel.com. The model keeps identity clusters (a union-find)
and answers, for a ``distinct_id`` seen on an event or profile update, the cluster's canonical id
once every event has been processed: merges are retroactive in every mode ("Mixpanel will
retroactively set the $user_id on any prior events with the user's $device_id").
"""

from __future__ import annotations

import re
import typing as t

UUID_V4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.I)
MODES = ("simplified", "original", "legacy")


class IdentityModel:
    """Identity clusters of one project in one ID merge mode."""

    def __init__(self, mode: str = "simplified") -> None:
        assert mode in MODES, mode
        self.mode = mode
        self._parent: dict[str, str] = {}
        #: Identified ids an ``$anon_id`` was merged to (original mode).
        self._anon_owner: dict[str, str] = {}
        #: Distinct ids an alias points to (legacy mode).
        self._alias_of: dict[str, str] = {}
        #: Ids that are users (canonical when in a cluster with device ids).
        self._users: set[str] = set()
        #: Records ignored by a documented rule, with the reason.
        self.ignored: list[tuple[dict[str, t.Any], str]] = []

    # -- what an event says -------------------------------------------------------------------

    def distinct_id(self, record: dict[str, t.Any]) -> str | None:
        """The ``distinct_id`` Mixpanel stores for an event."""
        properties = record.get("properties", {})
        if self.mode == "simplified":
            # identifying-users-simplified, "Mechanism": "If an event contains a $user_id, the
            # value of the $user_id will be set as the distinct_id"; with only a $device_id,
            # the device id is ("$device:<id>" in the table of "Example User Flows").
            if properties.get("$user_id"):
                return str(properties["$user_id"])
            if properties.get("$device_id") and not properties.get("distinct_id"):
                return f"$device:{properties['$device_id']}"
        distinct = properties.get("distinct_id")
        return None if distinct is None else str(distinct)

    def observe(self, record: dict[str, t.Any]) -> None:
        """Apply the merge rules an accepted event triggers."""
        properties = record.get("properties", {})
        event = record.get("event")
        if self.mode == "simplified":
            user, device = properties.get("$user_id"), properties.get("$device_id")
            if user and device:
                # "When a $user_id and $device_id are present in the same event for the first
                # time, a mapping is created to merge the $user_id and $device_id values
                # together, forming an identity cluster" (identifying-users-simplified).
                self._users.add(str(user))
                self._union(f"$device:{device}", str(user))
            return
        if self.mode == "original" and event == "$identify":
            identified, anon = properties.get("$identified_id"), properties.get("$anon_id")
            # reference/create-identity: "The $anon_id must be UUID v4 format and not already
            # merged to an $identified_id" (otherwise the event merges nothing).
            if not (identified and anon):
                self.ignored.append((record, "$identified_id and $anon_id are required"))
            elif not UUID_V4.fullmatch(str(anon)):
                self.ignored.append((record, "$anon_id is not a UUID v4"))
            elif self._anon_owner.get(str(anon), identified) != identified:
                self.ignored.append((record, "$anon_id is already merged to another user"))
            else:
                self._anon_owner[str(anon)] = str(identified)
                self._users.add(str(identified))
                self._union(str(anon), str(identified))
            return
        if self.mode == "legacy" and event == "$create_alias":
            alias, original = properties.get("alias"), properties.get("distinct_id")
            # identifying-users-original, "$create_alias": "the same alias ID cannot point to
            # multiple different Distinct IDs".
            if not (alias and original):
                self.ignored.append((record, "alias and distinct_id are required"))
            elif self._alias_of.get(str(alias), original) != original:
                self.ignored.append((record, "the alias already points to another id"))
            else:
                self._alias_of[str(alias)] = str(original)
                self._users.add(str(alias))
                self._union(str(alias), str(original))

    # -- who it is in the end -----------------------------------------------------------------

    def person(self, distinct_id: str) -> str:
        """The canonical id of the cluster ``distinct_id`` belongs to (itself when alone).

        Simplified and original: the user id ("the canonical distinct_id is always set to the
        $user_id"); legacy: the original id the aliases point to.
        """
        root = self._find(distinct_id)
        members = [m for m in self._parent if self._find(m) == root] or [distinct_id]
        if self.mode == "legacy":
            originals = [m for m in members if m not in self._alias_of]
            return min(originals or members)
        users = [m for m in members if m in self._users]
        return min(users or members)

    def _find(self, item: str) -> str:
        parent = self._parent.setdefault(item, item)
        while parent != item:
            item, parent = parent, self._parent.setdefault(parent, parent)
        return item

    def _union(self, a: str, b: str) -> None:
        root_a, root_b = self._find(a), self._find(b)
        if root_a != root_b:
            self._parent[root_a] = root_b
