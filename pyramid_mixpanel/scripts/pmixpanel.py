"""``pmixpanel``: inspect and operate delivery from the command line, the Pyramid way.

::

    pmixpanel status development.ini          # what waits in the queue / spool, dead letters
    pmixpanel replay development.ini          # send what the spool holds, with a progress bar
    pmixpanel dead development.ini            # list dead letters
    pmixpanel dead development.ini --requeue  # queue every dead letter again (or --requeue ID…)
    pmixpanel plan development.ini            # the tracking plan (--format markdown|json|csv)
    pmixpanel lint development.ini            # naming lint; exit 1 on problems (for CI)

The config file is bootstrapped like ``pshell`` does, so ``includeme`` runs and the same
settings apply as in the app. ``key=value`` arguments after the file are passed as variables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import typing as t

from pyramid.paster import bootstrap, setup_logging

from ..delivery import BackgroundEngine
from ..lifecycle import RUNTIME_KEY
from ..plan import lint, render_plan
from ..runtime import Runtime


class PMixpanelCommand:
    """The ``pmixpanel`` command; ``bootstrap`` is an attribute so tests can swap it."""

    bootstrap = staticmethod(bootstrap)
    setup_logging = staticmethod(setup_logging)

    def __init__(self, argv: list[str], out: t.TextIO | None = None) -> None:
        self.args = self.parser().parse_args(argv[1:])
        self.out = out or sys.stdout

    @staticmethod
    def parser() -> argparse.ArgumentParser:
        """The command line."""
        parser = argparse.ArgumentParser(
            prog="pmixpanel", description="Operate pyramid_mixpanel delivery."
        )
        commands = parser.add_subparsers(dest="command", required=True)
        for name, text in (
            ("status", "show what waits for delivery and the dead letters"),
            ("replay", "send what the queue or spool holds now"),
            ("dead", "list dead letters, or queue them again"),
            ("plan", "print the tracking plan: events and properties with descriptions"),
            ("lint", "check event and property names; exit 1 when something is off"),
        ):
            sub = commands.add_parser(name, help=text, description=text)
            sub.add_argument("config_uri", help="the app's .ini file, e.g. development.ini")
            sub.add_argument("config_vars", nargs="*", default=(), help="key=value variables")
            if name == "replay":
                sub.add_argument(
                    "--timeout",
                    type=float,
                    default=300.0,
                    help="give up after this many seconds (default 300)",
                )
            if name == "dead":
                sub.add_argument(
                    "--requeue",
                    nargs="*",
                    type=int,
                    metavar="ID",
                    help="queue these dead letters again (all when no ID is given)",
                )
                sub.add_argument("--limit", type=int, default=50, help="how many to list")
            if name == "plan":
                sub.add_argument(
                    "--format", choices=("markdown", "json", "csv"), default="markdown"
                )
        return parser

    def run(self) -> int:
        """Bootstrap the app and run the sub-command; return the exit code."""
        variables = dict(item.split("=", 1) for item in self.args.config_vars if "=" in item)
        self.setup_logging(self.args.config_uri, global_conf=variables)
        env = self.bootstrap(self.args.config_uri, options=variables)
        try:
            runtime: Runtime = env["registry"][RUNTIME_KEY]
            if self.args.command == "plan":
                self.out.write(render_plan(runtime.catalog, self.args.format))
                return 0
            if self.args.command == "lint":
                issues = lint(runtime.catalog)
                for issue in issues:
                    self.print(str(issue))
                self.print(f"{len(issues)} naming issue(s)")
                return 1 if issues else 0
            if runtime.settings.testing:
                self.print("mixpanel.token is not set (testing mode): nothing is ever sent.")
                return 1
            if runtime.engine is None:
                self.print(
                    f"mixpanel.delivery is {runtime.settings.delivery!r}: messages are sent at"
                    " the end of each request, nothing waits in a queue."
                )
                return 1
            handler = getattr(self, f"do_{self.args.command}")
            return int(handler(runtime.engine))
        finally:
            env["closer"]()

    def print(self, text: str) -> None:
        """Write one line of output."""
        self.out.write(text + "\n")

    def do_status(self, engine: BackgroundEngine) -> int:
        """Print the queue's state."""
        where = getattr(engine.store, "path", None) or "memory (this process only)"
        self.print(f"store: {where}")
        self.print(f"pending: {engine.store.pending()}")
        due = engine.store.next_due()
        if due is not None and due > time.time():
            self.print(f"next attempt in: {due - time.time():.1f}s")
        self.print(f"dead letters: {len(engine.store.dead(limit=1_000_000))}")
        return 0

    def do_replay(self, engine: BackgroundEngine) -> int:
        """Run the sender until the queue is empty, showing progress; 1 if some is left."""
        from tqdm import tqdm

        total = engine.store.pending()
        deadline = time.monotonic() + self.args.timeout
        engine.start()
        with tqdm(total=total, unit="msg", file=self.out, disable=total == 0) as bar:
            left = total
            while left and time.monotonic() < deadline:
                time.sleep(0.05)
                now_left = engine.store.pending()
                bar.update(max(0, left - now_left))
                left = now_left
        stats = engine.stats.snapshot()
        self.print(
            f"sent {stats['sent']}, retried {stats['retried']}, dead {stats['dead']}, left {left}"
        )
        return 1 if left else 0

    def do_dead(self, engine: BackgroundEngine) -> int:
        """List or requeue dead letters."""
        if self.args.requeue is not None:
            moved = engine.store.requeue_dead(self.args.requeue or None)
            self.print(f"requeued {moved} dead letter(s); run 'pmixpanel replay' to send them")
            return 0
        letters = engine.store.dead(limit=self.args.limit)
        if not letters:
            self.print("no dead letters")
        for letter in letters:
            when = dt.datetime.fromtimestamp(letter.failed_at, dt.timezone.utc)
            self.print(
                f"{letter.id}\t{letter.endpoint}\t{when:%Y-%m-%d %H:%M:%S}Z"
                f"\t{_describe(letter.body)}\t{letter.error}"
            )
        return 0


def _describe(body: str) -> str:
    """The event name or profile id of a message, never its properties (no PII on screen)."""
    try:
        message = json.loads(body)
    except ValueError:
        return "(unreadable)"
    if "event" in message:
        return f"event {message['event']!r}"
    for key in ("$distinct_id", "$group_id", "customer_id"):
        if key in message:
            return f"{key} {message[key]!r}"
    return "(message)"


def main(argv: list[str] | None = None, out: t.TextIO | None = None) -> int:
    """Console-script entry point."""
    return PMixpanelCommand(sys.argv if argv is None else argv, out).run()
