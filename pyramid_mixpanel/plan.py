"""The tracking plan, generated from the catalogue, and the naming lint.

The plan lists every event and property with its description, as Markdown, JSON or CSV, so the
documentation of what an app sends is generated from the code that sends it instead of being
kept by hand. The lint checks the naming guidelines of ``docs/tracking.md``:

* Title Case (``Page Viewed``, not ``page viewed``);
* events as ``<Item> <Action>`` in past tense (``Button Clicked``, not ``Click Button``);
* ``$`` only for Mixpanel's reserved names (enforced at startup by the catalogue itself);
* no two members with the same Mixpanel name, and no near-duplicates (``Signed Up`` vs
  ``Sign Up``) within a section.
"""

from __future__ import annotations

import csv
import difflib
import io
import json
import re
import typing as t
from dataclasses import dataclass

from .catalog import Catalog, Section

__all__ = ["LintIssue", "lint", "lint_section", "plan_rows", "render_plan"]


# Past tenses that do not end in -ed.
IRREGULAR_PAST = frozenset(
    [
        "began",
        "bought",
        "brought",
        "built",
        "came",
        "caught",
        "chose",
        "did",
        "drew",
        "drove",
        "fed",
        "felt",
        "found",
        "forgot",
        "forgave",
        "froze",
        "gave",
        "got",
        "went",
        "grew",
        "had",
        "heard",
        "held",
        "hid",
        "hit",
        "kept",
        "knew",
        "laid",
        "led",
        "left",
        "lent",
        "let",
        "lost",
        "made",
        "meant",
        "met",
        "paid",
        "put",
        "quit",
        "read",
        "rode",
        "rang",
        "rose",
        "ran",
        "said",
        "saw",
        "sold",
        "sent",
        "set",
        "shook",
        "shut",
        "sang",
        "sat",
        "slept",
        "spent",
        "split",
        "spread",
        "stood",
        "stole",
        "struck",
        "swept",
        "swung",
        "took",
        "taught",
        "told",
        "thought",
        "threw",
        "understood",
        "undid",
        "upheld",
        "woke",
        "wore",
        "won",
        "wrote",
        "withdrew",
    ]
)
# "Signed Up", "Logged In": the verb may come before a particle.
PARTICLES = frozenset({"up", "in", "out", "off", "on", "down", "over", "back", "away"})
SMALL_WORDS = frozenset({"a", "an", "and", "as", "at", "by", "for", "in", "of", "on", "or", "to"})


@dataclass(frozen=True)
class LintIssue:
    """One naming problem: where it is and what is wrong."""

    section: str
    attr: str
    name: str
    problem: str

    def __str__(self) -> str:
        return f"{self.section}: {self.attr} = {self.name!r}: {self.problem}"


def _words(name: str) -> list[str]:
    return [word for word in re.split(r"[\s/]+", name) if word]


def _title_case(name: str) -> bool:
    words = _words(name)
    return all(
        word[0].isupper() or not word[0].isalpha() or (i and word in SMALL_WORDS)
        for i, word in enumerate(words)
    )


def _past_tense(word: str) -> bool:
    lowered = word.lower()
    return lowered.endswith("ed") or lowered in IRREGULAR_PAST


def _stem(name: str) -> str:
    """Fold a name so tense and spelling variants meet: ``Signed Up`` ~ ``Sign Up``."""
    words = [re.sub(r"(ed|d|s)$", "", word.lower()) for word in _words(name)]
    return " ".join(words)


def lint_section(section: Section[t.Any], events: bool) -> list[LintIssue]:
    """Check one catalogue section."""
    issues: list[LintIssue] = []
    seen: dict[str, str] = {}
    stems: dict[str, tuple[str, str]] = {}
    for attr, member in section.by_attr.items():
        name = member.name

        def report(problem: str, attr: str = attr, name: str = name) -> None:
            issues.append(LintIssue(section.label, attr, name, problem))

        if name in seen:
            report(f"the same Mixpanel name as {seen[name]}")
            continue
        seen[name] = attr
        if name.startswith("$"):
            continue  # Mixpanel's own names follow Mixpanel's spelling
        if not _title_case(name):
            report("use Title Case, e.g. " + repr(name.title()))
        if events:
            words = _words(name)
            if words and words[-1].lower() in PARTICLES:
                words = words[:-1]
            if len(words) < 2 or not _past_tense(words[-1]):
                report("name events '<Item> <Action>' in past tense, e.g. 'Button Clicked'")
        stem = _stem(name)
        close = stems.get(stem) or next(
            (
                other
                for other_stem, other in stems.items()
                if difflib.SequenceMatcher(None, stem, other_stem).ratio() > 0.9
            ),
            None,
        )
        if close is not None:
            report(f"nearly the same as {close[0]} = {close[1]!r}")
        stems[stem] = (attr, name)
    return issues


def lint(catalog: Catalog) -> list[LintIssue]:
    """Check every section of the catalogue against the naming guidelines."""
    issues: list[LintIssue] = []
    for section in catalog.sections:
        issues.extend(lint_section(section, events=section is catalog.events))
    return issues


def plan_rows(catalog: Catalog) -> list[dict[str, str]]:
    """One row per member: section, attribute, Mixpanel name, description."""
    rows = []
    for section in catalog.sections:
        for attr, member in section.by_attr.items():
            rows.append(
                {
                    "section": section.label,
                    "class": section.cls.__qualname__,
                    "attribute": attr,
                    "name": member.name,
                    "description": member.description,
                }
            )
    return rows


def render_plan(catalog: Catalog, fmt: str = "markdown") -> str:
    """The tracking plan as ``markdown``, ``json`` or ``csv``."""
    rows = plan_rows(catalog)
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["section"])
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()
    lines = ["# Tracking plan", ""]
    for section in catalog.sections:
        members = [row for row in rows if row["section"] == section.label]
        lines += [f"## {section.label.capitalize()} (`{section.cls.__qualname__}`)", ""]
        if not members:
            lines += ["None declared.", ""]
            continue
        lines += ["| name | attribute | description |", "|---|---|---|"]
        for row in members:
            description = row["description"].replace("|", "\\|")
            lines.append(f"| {row['name']} | `{row['attribute']}` | {description} |")
        lines.append("")
    return "\n".join(lines)
