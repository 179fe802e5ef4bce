"""``pmixpanel``: inspect and operate delivery from the command line, the Pyramid way.

::

    pmixpanel status development.ini          # what waits in the queue / spool, dead letters
    pmixpanel replay development.ini          # send what the spool holds, with a progress bar
    pmixpanel dead development.ini            # list dead letters
    pmixpanel dead development.ini --requeue  # queue every dead letter again (or --requeue ID…)
    pmixpanel plan development.ini            # the tracking plan (--format markdown|json|csv)
    pmixpanel lint development.ini            # naming lint; exit 1 on problems (for CI)
    pmixpanel import development.ini events.jsonl   # backfill past events through /import
    pmixpanel sync development.ini                  # per-account metrics: resume to yesterday
    pmixpanel sync development.ini --from 2026-01-01 --to 2026-01-31   # or backfill days
    pmixpanel migrate development.ini               # create/upgrade the metrics tables
    pmixpanel lexicon diff development.ini          # catalogue vs Lexicon; exit 1 on drift
    pmixpanel lexicon push development.ini          # upload what changed (--dry-run, --prune)

The config file is bootstrapped like ``pshell`` does, so ``includeme`` runs and the same
settings apply as in the app. ``key=value`` arguments after the file are passed as variables.
"""

from __future__ import annotations

import argparse
import configparser
import datetime as dt
import json
import os
import sys
import time
import typing as t

from plaster.exceptions import PlasterError
from pyramid.exceptions import ConfigurationExecutionError
from pyramid.paster import bootstrap, setup_logging

from ..delivery import BackgroundEngine, RetryPolicy
from ..exceptions import MixpanelError, explain
from ..importer import (
    FORMATS,
    MAX_CONCURRENCY,
    MAX_LINE_BYTES,
    ImportSetupError,
    import_file,
    parse_mapping,
)
from ..log import redact
from ..plan import lint, render_plan
from ..runtime import Runtime, get_runtime

__all__ = ["PMixpanelCommand", "main", "setup_error"]


class PMixpanelCommand:
    """The ``pmixpanel`` command; ``bootstrap`` is an attribute so tests can swap it."""

    bootstrap = staticmethod(bootstrap)
    setup_logging = staticmethod(setup_logging)
    #: How ``import`` waits between retries of a batch (tests swap in a faster one).
    retry_policy = RetryPolicy()

    def __init__(self, argv: list[str], out: t.TextIO | None = None) -> None:
        self.args = self.parser().parse_args(argv[1:])
        self.out = out or sys.stdout
        #: The app's settings, once bootstrapped.
        self.app_settings: t.Mapping[str, object] = {}

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
            ("import", "backfill past events from a JSONL or CSV file through /import"),
            ("sync", "aggregate Mixpanel into per-account metrics (backfill or resume)"),
            ("migrate", "create or upgrade the per-account metrics tables"),
        ):
            sub = commands.add_parser(name, help=text, description=text)
            sub.add_argument("config_uri", help="the app's .ini file, e.g. development.ini")
            if name == "import":
                sub.add_argument("input", help="events.jsonl, or events.csv with --map")
            sub.add_argument("config_vars", nargs="*", default=(), help="key=value variables")
            if name == "import":
                _import_options(sub)
            if name == "sync":
                _sync_options(sub)
            if name == "replay":
                sub.add_argument(
                    "--timeout",
                    type=float,
                    default=300.0,
                    help="give up after this many seconds (default 300)",
                )
            if name == "dead":
                sub.add_argument(
                    "--lane",
                    choices=("mixpanel", "customerio"),
                    default="mixpanel",
                    help="whose dead letters: Mixpanel's (default) or Customer.io's",
                )
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
            if name == "status":
                sub.add_argument(
                    "--json", action="store_true", help="one JSON document, for scripts"
                )
        _lexicon_options(commands)
        _metrics_options(commands)
        return parser

    def run(self) -> int:
        """Bootstrap the app and run the sub-command; return the exit code."""
        variables = dict(item.split("=", 1) for item in self.args.config_vars if "=" in item)
        uri = self.args.config_uri
        try:
            self.setup_logging(uri, global_conf=variables)
            env = self.bootstrap(uri, options=variables)
        except Exception as exc:
            # A mistake in the .ini file or its settings is the operator's input: one line
            # saying what and where, exit 2. Anything else is a bug and keeps its traceback.
            message = setup_error(uri, exc)
            if message is None:
                raise
            self.print(f"pmixpanel: {message}")
            return 2
        runtime = get_runtime(env["registry"])
        try:
            return self.dispatch(runtime, env["registry"].settings)
        except MixpanelError as exc:
            self.print(
                f"pmixpanel {self.args.command}: {redact(explain(exc), runtime.settings.secrets)}"
            )
            return 2
        finally:
            # Release the spool and sessions; only replay waits for what is left to be sent.
            runtime.close(None if self.args.command == "replay" else 0)
            env["closer"]()

    def dispatch(self, runtime: Runtime, settings: t.Mapping[str, object]) -> int:
        """Run the sub-command against the app's runtime."""
        command = self.args.command
        if command == "plan":
            self.out.write(render_plan(runtime.catalog, self.args.format))
            return 0
        if command == "lint":
            issues = lint(runtime.catalog)
            for issue in issues:
                self.print(str(issue))
            self.print(f"{len(issues)} naming issue(s)")
            return 1 if issues else 0
        if command == "import":
            return self.do_import(runtime)
        if command == "lexicon":
            return self.do_lexicon(runtime)
        if command == "sync":
            return self.do_sync(settings, runtime)
        if command == "migrate":
            return self.do_migrate(settings, runtime)
        if command == "metrics":
            return self.do_metrics(settings, runtime)
        self.app_settings = settings
        if command == "status" and self.args.json:
            return self.do_status_json(runtime)
        if command == "status":
            metrics = self.metrics_freshness(runtime)
            if metrics is not None:
                self.print(f"metrics: {_freshness_line(metrics)}")
        if runtime.settings.testing:
            self.print(f"testing mode ({runtime.setup()['reason']}): nothing is ever sent.")
            return 1
        engines = {
            name: delivery
            for name, delivery in runtime.lanes.items()
            if isinstance(delivery, BackgroundEngine)
        }
        if not engines:
            self.print(
                f"mixpanel.delivery is {runtime.settings.delivery!r}: nothing waits in a queue"
                " of this app."
            )
            return 1
        if command == "dead":
            engine = engines.get(self.args.lane)
            if engine is None:
                self.print(f"{self.args.lane} is not configured in this app.")
                return 1
            return self.do_dead(engine)
        handler = getattr(self, f"do_{command}")
        return max(int(handler(engine)) for engine in engines.values())

    def print(self, text: str) -> None:
        """Write one line of output."""
        self.out.write(text + "\n")

    def do_status(self, engine: BackgroundEngine) -> int:
        """Print the queue's state."""
        where = getattr(engine.store, "path", None) or "memory (this process only)"
        self.print(f"lane: {engine.transport.name}")
        self.print(f"store: {where}")
        self.print(f"pending: {engine.store.pending()}")
        due = engine.store.next_due()
        if due is not None and due > time.time():
            self.print(f"next attempt in: {due - time.time():.1f}s")
        self.print(f"dead letters: {engine.store.dead_count()}")
        now = time.time()
        for beat in engine.store.beats():
            if beat.pid == os.getpid():
                continue  # this command's own process, not a sender of the app
            line = f"sender {beat.host}:{beat.pid}: progress {now - beat.progress:.0f}s ago"
            self.print(line + (f" (last error: {beat.error})" if beat.error else ""))
        return 0

    def do_status_json(self, runtime: Runtime) -> int:
        """``status --json``: what runs and, per queued lane, what waits; 1 when nothing can.

        ``{"setup": {...}, "lanes": {"mixpanel": {"store", "pending", "next_attempt_in",
        "dead_letters", "senders": [{"host", "pid", "progress_seconds_ago", "error"}]}}}``.
        The app's live counters are in its metrics (``pyramid_mixpanel.prometheus``, ``.otel``).
        """
        lanes: dict[str, t.Any] = {}
        now = time.time()
        for name, delivery in runtime.lanes.items():
            if runtime.settings.testing or not isinstance(delivery, BackgroundEngine):
                continue
            store = delivery.store
            due = store.next_due()
            lanes[name] = {
                "store": getattr(store, "path", None) or "memory",
                "pending": store.pending(),
                "next_attempt_in": round(due - now, 1) if due is not None and due > now else 0,
                "dead_letters": store.dead_count(),
                "senders": [
                    {
                        "host": beat.host,
                        "pid": beat.pid,
                        "progress_seconds_ago": round(now - beat.progress, 1),
                        "error": beat.error,
                    }
                    for beat in store.beats()
                    if beat.pid != os.getpid()
                ],
            }
        document: dict[str, t.Any] = {"setup": runtime.setup(), "lanes": lanes}
        metrics = self.metrics_freshness(runtime)
        if metrics is not None:
            document["metrics"] = metrics
        json.dump(document, self.out, indent=2)
        self.out.write("\n")
        return 0 if lanes else 1

    def metrics_freshness(self, runtime: Runtime) -> dict[str, t.Any] | None:
        """The per-account metrics' freshness, when the app configures them and they exist."""
        settings = self.app_settings
        if not any(str(key).startswith("mixpanel.metrics.") for key in settings):
            return None
        try:
            from ..metrics.config import parse_metrics_settings
            from ..metrics.freshness import freshness
            from ..metrics.store import MetricsStore
        except ImportError:  # the metrics extra is not installed here
            return None
        metrics = parse_metrics_settings(settings)
        with MetricsStore(metrics.database_url, migrate=False) as store:
            if not store.is_current():
                return {"error": "the metrics store is not migrated: run pmixpanel migrate"}
            state = freshness(store, metrics.max_age_hours, runtime.settings.project_timezone)
        return state.as_dict()

    def do_replay(self, engine: BackgroundEngine) -> int:
        """Run the sender until the queue is empty, showing progress; 1 if some is left.

        The progress bar is tqdm's, when it is installed (the ``import`` and ``metrics``
        extras bring it); without it, the summary line alone.
        """
        engine.adopt_journals()  # what processes that are gone left in their journals
        total = engine.store.pending()
        try:
            from tqdm import tqdm
        except ImportError:  # no bar: the summary line says it all
            bar = None
        else:
            bar = tqdm(total=total, unit="msg", file=self.out, disable=total == 0)
        deadline = time.monotonic() + self.args.timeout
        engine.start()
        left = total
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            now_left = engine.store.pending()
            if bar is not None:
                bar.update(max(0, left - now_left))
            left = now_left
        if bar is not None:
            bar.close()
        stats = engine.stats.snapshot()
        self.print(
            f"{engine.transport.name}: sent {stats['sent']}, retried {stats['retried']},"
            f" dead {stats['dead']}, left {left}"
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

    def do_import(self, runtime: Runtime) -> int:
        """Import a file through ``/import``; 0 when every row is in Mixpanel, 2 on bad input."""
        args = self.args
        try:
            report = import_file(
                args.input,
                runtime.settings,
                concurrency=args.concurrency,
                mapping=parse_mapping(args.map) if args.map else None,
                fmt=args.format,
                restart=args.restart,
                progress=not args.no_progress,
                allow_undeclared=args.allow_undeclared,
                max_retries=args.max_retries,
                max_line_bytes=args.max_line_bytes,
                policy=self.retry_policy,
                out=self.out,
            )
        except ImportSetupError as exc:
            self.print(f"pmixpanel import: {redact(str(exc), runtime.settings.secrets)}")
            return 2
        self.print(report.summary())
        return 0 if report.ok else 1

    def do_lexicon(self, runtime: Runtime) -> int:
        """``lexicon diff`` (exit 1 on drift) and ``lexicon push`` (``--dry-run``, ``--prune``)."""
        from ..lexicon import LexiconClient, LexiconMissingAccountError, diff, render_diff

        args = self.args
        try:
            client = LexiconClient(
                runtime.settings, retry=self.retry_policy, max_retries=args.max_retries
            )
        except LexiconMissingAccountError as exc:
            self.print(f"pmixpanel lexicon: {exc}")
            return 2
        if args.lexicon_command == "diff":
            result = diff(runtime.catalog, client.schemas())
            self.out.write(render_diff(result, args.format))
            return 1 if result else 0
        result = diff(runtime.catalog, client.schemas(), prune=args.prune)
        self.out.write(render_diff(result))
        uploads, deletions = len(result.uploads), len(result.deletions)
        if args.dry_run:
            self.print(f"dry run: would upload {uploads} schema(s), delete {deletions}")
            return 0
        requests = client.upload(result.uploads) if result.uploads else 0
        for entity_type, name in result.deletions:
            client.delete(entity_type, name)
        self.print(f"uploaded {uploads} schema(s) in {requests} request(s), deleted {deletions}")
        return 0

    def do_migrate(self, settings: t.Mapping[str, object], runtime: Runtime) -> int:
        """Bring the metrics store to the latest schema; 2 when the metrics extra is missing."""
        try:
            from ..metrics.config import parse_metrics_settings
            from ..metrics.store import MetricsStore
        except ImportError as exc:
            self.print(
                f"pmixpanel migrate needs the metrics extra ({exc}):"
                " pip install 'pyramid_mixpanel[metrics]'"
            )
            return 2
        metrics = parse_metrics_settings(settings)
        with MetricsStore(metrics.database_url, migrate=False) as store:
            before = store.revision()
            store.upgrade()
            after = store.revision()
        if before == after:
            self.print(f"metrics store: already at {after}")
        else:
            self.print(f"metrics store: migrated from {before or 'empty'} to {after}")
        return 0

    def do_sync(self, settings: t.Mapping[str, object], runtime: Runtime) -> int:
        """Sync per-account metrics; 0 when all is stored, 1 when Mixpanel refused, 2 bad input."""
        try:
            from ..metrics.sync import SyncError, sync
        except ImportError as exc:
            self.print(
                f"pmixpanel sync needs the metrics extra ({exc}):"
                " pip install 'pyramid_mixpanel[metrics]'"
            )
            return 2
        from ..query import MixpanelQueryError
        from ..settings import MixpanelConfigurationError

        args = self.args
        try:
            report = sync(
                settings,
                from_date=args.from_date,
                to_date=args.to_date,
                days=args.days,
                progress=not args.no_progress,
                out=self.out,
            )
        except (SyncError, MixpanelConfigurationError) as exc:
            self.print(f"pmixpanel sync: {redact(str(exc), runtime.settings.secrets)}")
            return 2
        except MixpanelQueryError as exc:
            self.print(
                f"pmixpanel sync: {redact(str(exc), runtime.settings.secrets)}; the days before"
                " it are stored, run again to resume"
            )
            return 1
        self.print(redact(report.summary(), runtime.settings.secrets))
        return 0 if report.ok else 1

    def do_metrics(self, settings: t.Mapping[str, object], runtime: Runtime) -> int:
        """``pmixpanel metrics export|freshness|forget``."""
        try:
            from ..metrics.config import parse_metrics_settings
            from ..metrics.export import write_csv
            from ..metrics.freshness import alert_if_stale, freshness
            from ..metrics.store import MetricsStore
        except ImportError as exc:
            self.print(
                f"pmixpanel metrics needs the metrics extra ({exc}):"
                " pip install 'pyramid_mixpanel[metrics]'"
            )
            return 2
        metrics = parse_metrics_settings(settings)
        action = self.args.metrics_command
        with MetricsStore(metrics.database_url) as store:
            if action == "forget":
                deleted = store.forget(self.args.account)
                self.print(f"deleted {deleted} row(s) of account {self.args.account!r}")
                return 0
            if action == "freshness":
                state = freshness(store, metrics.max_age_hours, runtime.settings.project_timezone)
                self.print(_freshness_line(state.as_dict()))
                alert_if_stale(state, metrics, runtime.log)
                return 1 if state.stale else 0
            last = store.last_synced_day() or dt.date.today()
            end = self.args.to_date or last
            start = self.args.from_date or end - dt.timedelta(days=29)
            rows = store.all_daily(start, end)
            if self.args.output:
                with open(self.args.output, "w", newline="", encoding="utf-8") as out:
                    count = write_csv(rows, out)
                self.print(f"wrote {count} account-day row(s) to {self.args.output}")
            else:
                write_csv(rows, self.out)
        return 0


def _freshness_line(metrics: dict[str, t.Any]) -> str:
    """One line on the metrics' age (``Freshness.as_dict``, or ``{"error": ...}``)."""
    if "error" in metrics:
        return str(metrics["error"])
    if metrics["age_hours"] is None:
        return "never synced"
    state = "STALE" if metrics["stale"] else "fresh"
    return (
        f"last synced day: {metrics['last_synced_day']}; {metrics['age_hours']:.1f} h old"
        f" (max {metrics['max_age_hours']} h): {state}"
    )


def _metrics_options(commands: t.Any) -> None:
    text = "the per-account metrics store: export, freshness, forget an account"
    metrics = commands.add_parser("metrics", help=text, description=text)
    actions = metrics.add_subparsers(dest="metrics_command", required=True)
    for name, help_text in (
        ("export", "write every account's daily metrics as CSV (for churn analysis)"),
        ("freshness", "say how old the stored data is; exit 1 (and alert) when it is stale"),
        ("forget", "delete every row of one account (metrics, funnels, entries, profiles)"),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config_uri", help="the app's .ini file, e.g. development.ini")
        if name == "forget":
            sub.add_argument("account", help="the account id whose rows are deleted")
        sub.add_argument("config_vars", nargs="*", default=(), help="key=value variables")
        if name == "export":
            _sync_days(sub)
            sub.add_argument("--output", "-o", help="a file to write (default: standard output)")


def _lexicon_options(commands: t.Any) -> None:
    text = "compare the catalogue with Mixpanel's Lexicon, or push it there"
    lexicon = commands.add_parser("lexicon", help=text, description=text)
    actions = lexicon.add_subparsers(dest="lexicon_command", required=True)
    for name, help_text in (
        ("diff", "show what differs between the code and Lexicon; exit 1 when something does"),
        ("push", "upload the schemas that changed; never deletes without --prune"),
    ):
        sub = actions.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config_uri", help="the app's .ini file, e.g. development.ini")
        sub.add_argument("config_vars", nargs="*", default=(), help="key=value variables")
        sub.add_argument(
            "--max-retries",
            type=int,
            default=5,
            help="retries of a request Mixpanel cannot take now (429, 5xx; default 5)",
        )
        if name == "diff":
            sub.add_argument("--format", choices=("table", "json"), default="table")
        else:
            sub.add_argument(
                "--dry-run", action="store_true", help="show the differences, send nothing"
            )
            sub.add_argument(
                "--prune",
                action="store_true",
                help="also delete what Lexicon has and the code does not declare",
            )


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date as YYYY-MM-DD: {text!r}") from None


def _sync_days(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--from", dest="from_date", type=_day, help="first day (UTC) of a backfill")
    sub.add_argument("--to", dest="to_date", type=_day, help="last day (UTC; default yesterday)")


def _sync_options(sub: argparse.ArgumentParser) -> None:
    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"must be a whole number of days >= 1, got {text!r}")
        return int(text)

    _sync_days(sub)
    sub.add_argument(
        "--days",
        type=positive,
        help="without --from: sync at most this many days back (a first run starts there)",
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")


def _import_options(sub: argparse.ArgumentParser) -> None:
    def bounded(low: int, high: int | None) -> t.Callable[[str], int]:
        def parse(text: str) -> int:
            try:
                number = int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
            if number < low or (high is not None and number > high):
                limits = f"between {low} and {high}" if high is not None else f"{low} or more"
                raise argparse.ArgumentTypeError(f"must be {limits}, got {number}")
            return number

        return parse

    sub.add_argument(
        "--concurrency",
        type=bounded(1, MAX_CONCURRENCY),
        default=10,
        help=f"batches in flight at once, 1 to {MAX_CONCURRENCY} (default 10)",
    )
    sub.add_argument(
        "--map",
        metavar="FIELD=COLUMN,...",
        help="CSV columns of event, distinct_id and time, e.g. event=Event,time=timestamp",
    )
    sub.add_argument(
        "--format", choices=FORMATS, help="jsonl or csv (default: csv for *.csv, else jsonl)"
    )
    sub.add_argument(
        "--restart", action="store_true", help="ignore the checkpoint of an earlier run"
    )
    sub.add_argument(
        "--allow-undeclared",
        action="store_true",
        help="import events the catalogue does not declare",
    )
    sub.add_argument(
        "--max-retries",
        type=bounded(0, None),
        default=8,
        help="retries of a batch Mixpanel cannot take now, before giving up (default 8)",
    )
    sub.add_argument(
        "--max-line-bytes",
        type=bounded(1, None),
        default=MAX_LINE_BYTES,
        metavar="BYTES",
        help=f"a longer line (a CSV record) is a rejected row, never read whole (default"
        f" {MAX_LINE_BYTES}: 1 MiB, over Mixpanel's 1 MB per event)",
    )
    sub.add_argument("--no-progress", action="store_true", help="no progress bar")


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


def setup_error(uri: str, exc: BaseException) -> str | None:
    """One line for a configuration problem met while loading ``uri``; ``None`` for a bug."""
    if isinstance(exc, ConfigurationExecutionError) and isinstance(exc.evalue, MixpanelError):
        exc = exc.evalue  # Pyramid wraps errors raised while committing; ours say it all
    if isinstance(exc, MixpanelError):
        return explain(exc)
    if isinstance(exc, OSError):
        return f"cannot read {uri}: {exc.strerror or exc}"
    if isinstance(exc, (ImportError, LookupError, PlasterError, configparser.Error)):
        return f"cannot load the app from {uri}: {type(exc).__name__}: {exc}"
    return None


def main(argv: list[str] | None = None, out: t.TextIO | None = None) -> int:
    """Console-script entry point."""
    return PMixpanelCommand(sys.argv if argv is None else argv, out).run()
