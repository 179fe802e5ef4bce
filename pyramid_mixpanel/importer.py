"""Historical import: backfill a JSONL or CSV file of past events to Mixpanel's ``/import``.

::

    report = import_file("events.jsonl", settings, concurrency=10)
    print(report.summary())

The file is streamed in constant memory. The main thread reads and validates rows, packs them
into batches of at most ``mixpanel.batch_max_records`` records (2000) and
``mixpanel.batch_max_bytes`` (10 MB) of JSON, and hands them to ``concurrency`` sender threads,
each with its own :class:`~.delivery.transport.HttpTransport` (gzip, ``strict=1``, the
configured credentials). At most twice ``concurrency`` batches are in memory at once. A batch
Mixpanel cannot take now (429, 5xx, unreachable) is retried with :class:`RetryPolicy` up to
``max_retries`` times; a refusal (400, 401, 403, 413) is final and never retried.

Rows
    JSONL: one ``{"event": "...", "properties": {"distinct_id": ..., "time": ...}}`` per line
    (Mixpanel's import format). CSV: a header line; ``mapping`` names the columns of ``event``,
    ``distinct_id`` and ``time`` (each defaults to a column of that name), every other non-empty
    cell becomes a string property. ``time`` may be epoch seconds, epoch milliseconds (numbers
    from 10^11 up) or ISO 8601 (UTC when no offset is given); it is sent as integer
    milliseconds. A row without an event, a distinct_id or a usable time, dated before
    1971-01-01 or more than an hour ahead, with an invalid ``$insert_id``, larger than 1 MB, or
    (unless ``allow_undeclared``) naming an event the catalogue does not declare, is rejected
    before sending.
``$insert_id``
    A valid one in the row (at most 36 letters, digits or ``-``) is kept. Otherwise it is the
    first 32 hex digits of the SHA-256 of the row as sent (event, distinct_id, time in ms and
    every property, keys sorted), so importing the same file twice creates no duplicates:
    Mixpanel deduplicates on it.
Checkpoint (``<input>.checkpoint``)
    Where every row before is done (imported, refused or rejected): batches finish out of order,
    so it is the end of the longest run of finished batches. A rerun of an unchanged input
    resumes there; a finished run marks it complete. Rows given up after ``max_retries`` hold it
    back, so a rerun sends them again.
Report (``<input>.failed.jsonl``)
    One line per row that was not imported: ``{"line", "status", "error", "row"}`` with status
    ``rejected`` (before sending), ``refused`` (by Mixpanel: its ``failed_records`` message, or
    the error of a batch refused as a whole) or ``unsent`` (given up or interrupted: rerun to
    retry). Absent when there is nothing to report.
"""

from __future__ import annotations

import binascii
import csv
import datetime as dt
import functools
import hashlib
import json
import math
import os
import queue
import sys
import threading
import time
import typing as t
from dataclasses import dataclass, field

import orjson
from tqdm import tqdm

from .delivery.policy import RetryPolicy
from .delivery.transport import HttpTransport, Outcome
from .log import redact

if t.TYPE_CHECKING:
    from .catalog import Catalog
    from .settings import MixpanelSettings

__all__ = [
    "FIELDS",
    "FORMATS",
    "ImportReport",
    "ImportSetupError",
    "RowRejectedError",
    "derive_insert_id",
    "event_time_ms",
    "import_file",
    "parse_mapping",
    "prepare_record",
    "valid_insert_id",
]

FORMATS = ("jsonl", "csv")
#: The fields a CSV mapping names: ``event=<column>,distinct_id=<column>,time=<column>``.
FIELDS = ("event", "distinct_id", "time")
MAX_CONCURRENCY = 20
#: Mixpanel refuses an event of 1 MB of uncompressed JSON or more.
MAX_EVENT_BYTES = 1_000_000
#: Mixpanel refuses events dated before 1971-01-01 (milliseconds since the epoch).
EARLIEST_MS = 31_536_000_000
#: ... and moves events dated more than an hour ahead to the time of import.
FUTURE_SLACK_MS = 3_600_000
#: Epoch numbers from here up are milliseconds (10^11 seconds would be the year 5138).
MILLISECONDS_FROM = 10**11
#: How much of the input identifies it in the checkpoint, with its size.
HEAD_BYTES = 1 << 20
#: Seconds between checkpoint writes while batches complete.
CHECKPOINT_EVERY = 0.5
INSERT_ID_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-")
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
ONE_MS = dt.timedelta(milliseconds=1)

# orjson parses and encodes about five times faster than the standard library, which is most
# of an import's CPU. One encoding serves both the body and the hash behind $insert_id. Keys are
# sorted so "properties" is the last key and the body ends with the "}}" that closes it.
SORTED = orjson.OPT_SORT_KEYS
# Batches are compressed at level 1: for JSON events it is twice as fast as the default and
# the bodies stay several times smaller than the uncompressed 10 MB limit.
GZIP_LEVEL = 1


class ImportSetupError(ValueError):
    """The import cannot start (input, format, mapping or credentials); the message says why."""


class RowRejectedError(ValueError):
    """A row that cannot be imported as it is; the message says why."""


# -- rows -------------------------------------------------------------------------------------


def event_time_ms(value: object, latest_ms: int | None = None) -> int:
    """Mixpanel's ``time`` as integer milliseconds since the epoch.

    ``value`` is epoch seconds or milliseconds (a number, or a string of one) or an ISO 8601
    string (UTC when it has no offset). Raises :class:`RowRejectedError` for anything else, a date
    before 1971-01-01, or one after ``latest_ms`` (default: an hour from now).
    """
    number: object = value
    if isinstance(value, str):
        text = value.strip()
        try:
            number = int(text)
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return _in_range(_iso_ms(text, value), value, latest_ms)
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise RowRejectedError(
            f"time {value!r} is not epoch seconds, epoch milliseconds or ISO 8601"
        )
    if not math.isfinite(number):
        raise RowRejectedError(f"time {value!r} is not a finite number")
    if abs(number) >= MILLISECONDS_FROM:
        ms = round(number)
    else:
        ms = number * 1000 if isinstance(number, int) else round(number * 1000)
    return _in_range(ms, value, latest_ms)


def _in_range(ms: int, value: object, latest_ms: int | None) -> int:
    if ms < EARLIEST_MS:
        raise RowRejectedError(f"time {value!r} is before 1971-01-01: Mixpanel refuses it")
    if latest_ms is None:
        latest_ms = int(time.time() * 1000) + FUTURE_SLACK_MS
    if ms > latest_ms:
        raise RowRejectedError(
            f"time {value!r} is more than an hour in the future: Mixpanel would move the"
            " event to the time of import"
        )
    return ms


def _iso_ms(text: str, value: object) -> int:
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"  # Python 3.10's fromisoformat does not read "Z"
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise RowRejectedError(
            f"time {value!r} is not epoch seconds, epoch milliseconds or ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return (when - EPOCH) // ONE_MS


def _hash_id(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()[:32]


def derive_insert_id(event: str, properties: t.Mapping[str, object]) -> str:
    """The deterministic ``$insert_id`` of an event as sent (``time`` in ms, ``distinct_id``).

    32 hex digits of the SHA-256 of ``{"event", "properties"}`` with sorted keys, without any
    ``$insert_id``: the same event always gets the same id, within Mixpanel's rule of at most
    36 letters, digits or ``-``.
    """
    props = {key: value for key, value in properties.items() if key != "$insert_id"}
    return _hash_id(orjson.dumps({"event": event, "properties": props}, option=SORTED))


def valid_insert_id(value: object) -> bool:
    """True for a ``$insert_id`` Mixpanel accepts: 1 to 36 letters, digits or ``-``."""
    return isinstance(value, str) and 0 < len(value) <= 36 and INSERT_ID_CHARS.issuperset(value)


class _Preparer:
    """Validate and normalise one row into the JSON Mixpanel gets, or raise RowRejectedError."""

    def __init__(self, catalog: Catalog | None, latest_ms: int) -> None:
        self.catalog = catalog
        self.declared: t.Container[str] = catalog.events.by_name if catalog else ()
        self.latest_ms = latest_ms
        # The hint (a fuzzy match over the catalogue) is computed once per undeclared name.
        self.undeclared = functools.lru_cache(maxsize=1024)(self._undeclared)

    def __call__(self, record: object, owned: bool = False) -> bytes:
        """The event's JSON; ``owned``: ``record`` was parsed here and may be changed in place."""
        # The fast path: a well-formed row with a string distinct_id, whole-number time and no
        # $insert_id of its own, which is nearly every row of a large import. Anything else,
        # including every row that will be rejected, takes the full path below.
        if type(record) is dict:
            event, properties = record.get("event"), record.get("properties")
            if (
                type(event) is str
                and type(properties) is dict
                and event
                and (self.catalog is None or event in self.declared)
                and type(properties.get("distinct_id")) is str
                and "$insert_id" not in properties
            ):
                when = properties.get("time")
                if type(when) is int and when >= 0:
                    ms = when if when >= MILLISECONDS_FROM else when * 1000
                    if EARLIEST_MS <= ms <= self.latest_ms:
                        sent = properties if owned else dict(properties)
                        sent["time"] = ms
                        try:
                            encoded = orjson.dumps(
                                {"event": event, "properties": sent}, option=SORTED
                            )
                        except TypeError:  # not JSON: the full path says which value
                            return self._checked(record, owned)
                        body = b'%s,"$insert_id":"%s"}}' % (
                            encoded[:-2],
                            binascii.hexlify(hashlib.sha256(encoded).digest()[:16]),
                        )
                        if len(body) < MAX_EVENT_BYTES:
                            return body
        return self._checked(record, owned)

    def _checked(self, record: object, owned: bool) -> bytes:
        if not isinstance(record, dict):
            raise RowRejectedError(f"a row must be a JSON object, got {type(record).__name__}")
        event = record.get("event")
        if not isinstance(event, str) or not event:
            raise RowRejectedError(
                "event is missing" if event in (None, "") else "event is not a string"
            )
        if self.catalog is not None and event not in self.declared:
            raise RowRejectedError(self.undeclared(event))
        properties = record.get("properties")
        if not isinstance(properties, dict):
            raise RowRejectedError("properties is missing or not an object")
        distinct_id = properties.get("distinct_id")
        if isinstance(distinct_id, bool) or not isinstance(distinct_id, (str, int)):
            raise RowRejectedError(
                "properties.distinct_id is missing"
                if distinct_id is None
                else f"distinct_id {distinct_id!r} is not a string"
            )
        if "time" not in properties:
            raise RowRejectedError("properties.time is missing")
        ms = event_time_ms(properties["time"], self.latest_ms)
        given = properties.get("$insert_id")
        if given is not None and not valid_insert_id(given):
            raise RowRejectedError(
                f"$insert_id {given!r} is invalid: Mixpanel wants 1 to 36 letters, digits or '-'"
            )
        # Normalise in place when the row is ours (saves a copy per row), else on a copy.
        sent = properties if owned else dict(properties)
        sent["time"] = ms
        if type(distinct_id) is not str:
            sent["distinct_id"] = str(distinct_id)
        if given is not None:
            del sent["$insert_id"]
        try:
            encoded = orjson.dumps({"event": event, "properties": sent}, option=SORTED)
        except TypeError as exc:  # a Python caller's value that is not JSON
            raise RowRejectedError(f"a property is not JSON: {exc}") from None
        insert_id = given or _hash_id(encoded)
        body = b'%s,"$insert_id":"%s"}}' % (encoded[:-2], insert_id.encode())
        if len(body) >= MAX_EVENT_BYTES:
            raise RowRejectedError(f"the event is {len(body):,} bytes: Mixpanel's limit is 1 MB")
        return body

    def _undeclared(self, event: str) -> str:
        section = t.cast("Catalog", self.catalog).events
        return f"event {section.unknown(event)} (--allow-undeclared imports it anyway)"


def prepare_record(record: object, catalog: Catalog | None = None) -> str:
    """The JSON Mixpanel gets for one row, as :func:`import_file` sends it.

    Checks the event name against ``catalog`` when given. Raises :class:`RowRejectedError`.
    """
    # Rows read from a file cannot hold NaN (the parser refuses it); a Python caller's can, and
    # orjson would write it as null: refuse it instead of changing the data.
    if not _finite(record):
        raise RowRejectedError("NaN and Infinity are not valid JSON for Mixpanel")
    return _Preparer(catalog, int(time.time() * 1000) + FUTURE_SLACK_MS)(record).decode()


def _finite(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(item) for item in value)
    return True


def parse_mapping(text: str) -> dict[str, str]:
    """Parse ``event=Event,distinct_id=user,time=timestamp`` into ``{field: column}``."""
    mapping: dict[str, str] = {}
    for item in text.split(","):
        name, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not column:
            raise ImportSetupError(f"--map wants field=column items, got {item.strip()!r}")
        if name not in FIELDS:
            raise ImportSetupError(f"--map: {name!r} is not one of {', '.join(FIELDS)}")
        if name in mapping:
            raise ImportSetupError(f"--map names {name!r} twice")
        mapping[name] = column
    return mapping


# -- reading ----------------------------------------------------------------------------------

# (line, offset after the row, the row, why it cannot be used or None)
Row = tuple[int, int, object, str | None]


class _Lines:
    """The input's binary lines with the line number and byte offset reached."""

    def __init__(self, file: t.BinaryIO) -> None:
        self.file = file
        self.line = 0
        self.offset = 0
        self.bad = False  # a line of the current CSV record is not UTF-8

    def seek(self, line: int, offset: int) -> None:
        self.file.seek(offset)
        self.line, self.offset = line, offset

    def text(self) -> t.Iterator[str]:
        for raw in self.file:
            self.line += 1
            self.offset += len(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad = True
                text = raw.decode("utf-8", "replace")
            yield text.removeprefix("\ufeff") if self.line == 1 else text


def _jsonl_rows(lines: _Lines) -> t.Iterator[Row]:
    # Counters live in locals for speed (this loop runs once per row) and are written back to
    # ``lines`` when the generator ends or is closed.
    line, offset, loads = lines.line, lines.offset, orjson.loads
    try:
        for raw in lines.file:
            line += 1
            offset += len(raw)
            if raw.isspace():
                continue
            try:
                record = loads(raw)
            except orjson.JSONDecodeError as exc:  # NaN, Infinity and bad UTF-8 included
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield line, offset, text, f"not valid JSON: {exc}"
                continue
            yield line, offset, record, None
    finally:
        lines.line, lines.offset = line, offset


class _CsvRows:
    """CSV records as rows, after a header line that must hold the mapped columns."""

    def __init__(self, lines: _Lines, mapping: t.Mapping[str, str], filename: str) -> None:
        self.lines = lines
        self.reader = csv.reader(lines.text(), strict=True)
        try:
            self.header = next(self.reader)
        except (StopIteration, csv.Error) as exc:
            raise ImportSetupError(f"{filename} has no readable CSV header line ({exc})") from None
        columns = {key: mapping.get(key, key) for key in FIELDS}
        for key, column in columns.items():
            if column not in self.header:
                raise ImportSetupError(
                    f"{filename}: no column {column!r} for {key} (the header has"
                    f" {', '.join(map(repr, self.header))}); name it with --map {key}=<column>"
                )
        self.event, self.distinct_id, self.time = (self.header.index(columns[k]) for k in FIELDS)
        mapped = {self.event, self.distinct_id, self.time}
        self.properties = [(i, n) for i, n in enumerate(self.header) if i not in mapped]

    def __iter__(self) -> t.Iterator[Row]:
        lines, width = self.lines, len(self.header)
        while True:
            lines.bad = False
            try:
                cells = next(self.reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield lines.line, lines.offset, None, f"not valid CSV: {exc}"
                continue
            if not cells:
                continue
            row = dict(zip(self.header, cells, strict=False))
            if lines.bad:
                yield lines.line, lines.offset, row, "not valid UTF-8"
            elif len(cells) != width:
                yield lines.line, lines.offset, cells, f"{len(cells)} cells, the header has {width}"
            else:
                yield lines.line, lines.offset, self.record(cells), None

    def record(self, cells: list[str]) -> dict[str, object]:
        """Mixpanel's shape of a CSV record: empty cells are left out."""
        properties = {name: cells[i] for i, name in self.properties if cells[i]}
        for key, index in (("distinct_id", self.distinct_id), ("time", self.time)):
            if cells[index]:
                properties[key] = cells[index]
        return {"event": cells[self.event], "properties": properties}


# -- the import -------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did. Counts are rows of this run unless said otherwise."""

    path: str
    #: Rows read in this run (not counting those skipped thanks to the checkpoint).
    read: int = 0
    #: Rows Mixpanel accepted.
    sent: int = 0
    #: Rows Mixpanel refused (``failed_records``, or a batch refused as a whole).
    refused: int = 0
    #: Rows not sent: Mixpanel still failing after ``max_retries``, or the run was interrupted.
    unsent: int = 0
    #: Rows rejected before sending (see the report for why).
    rejected_locally: int = 0
    #: Rows done by an earlier run, skipped thanks to the checkpoint.
    skipped_by_checkpoint: int = 0
    #: Report lines kept from an earlier run (rows before the checkpoint that failed then).
    earlier_failures: int = 0
    batches: int = 0
    #: Every row was handled: the checkpoint is marked complete.
    complete: bool = False
    #: Stopped by Ctrl-C (``KeyboardInterrupt``); the checkpoint says where to resume.
    interrupted: bool = False
    elapsed: float = 0.0
    #: The report of rows not imported, or ``None`` when there is nothing to report.
    failed_report: str | None = None
    checkpoint: str | None = None

    @property
    def failed(self) -> int:
        """Rows that were sent but not imported: refused plus unsent."""
        return self.refused + self.unsent

    @property
    def ok(self) -> bool:
        """True when every row of the input is in Mixpanel."""
        return self.complete and not (self.failed or self.rejected_locally or self.earlier_failures)

    def summary(self) -> str:
        """One line for humans."""
        rate = self.read / self.elapsed if self.elapsed else 0.0
        text = (
            f"{os.path.basename(self.path)}: imported {self.sent:,} of {self.read:,} rows"
            f" ({rate:,.0f} rows/s); refused by Mixpanel {self.refused:,}, not sent"
            f" {self.unsent:,}, rejected before sending {self.rejected_locally:,}; skipped"
            f" {self.skipped_by_checkpoint:,} done by an earlier run"
        )
        if self.earlier_failures:
            text += f" ({self.earlier_failures:,} of which failed then)"
        if self.failed_report:
            text += f"; failures: {self.failed_report}"
        if self.interrupted:
            text += "; interrupted: run the same command again to resume"
        elif self.unsent:
            text += "; run the same command again to retry what was not sent"
        return text


@dataclass
class _Batch:
    seq: int
    lines: list[int]
    bodies: list[bytes]
    nbytes: int  # bytes of input covered, for the progress bar


Done = tuple[int, int, int]  # (line, offset, rows) of the input done up to


@dataclass
class _State:
    """Checkpoint bookkeeping: the contiguous prefix of finished batches."""

    done: Done
    ends: dict[int, Done] = field(default_factory=dict)
    finished: dict[int, bool] = field(default_factory=dict)
    next_seq: int = 0


def import_file(
    path: str | os.PathLike[str],
    settings: MixpanelSettings,
    *,
    concurrency: int = 10,
    mapping: t.Mapping[str, str] | None = None,
    fmt: str | None = None,
    checkpoint: bool = True,
    restart: bool = False,
    progress: bool = True,
    allow_undeclared: bool = False,
    max_retries: int = 8,
    policy: RetryPolicy | None = None,
    out: t.TextIO | None = None,
    on_batch: t.Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import the events of a JSONL or CSV file into Mixpanel; see the module docstring.

    :param fmt: ``jsonl`` or ``csv``; by default ``csv`` for a ``.csv`` file, else ``jsonl``.
    :param mapping: for CSV, ``{field: column}`` for ``event``, ``distinct_id`` and ``time``.
    :param checkpoint: read and write ``<path>.checkpoint``; ``restart`` ignores the old one.
    :param max_retries: retries of a batch Mixpanel cannot take now before giving up on it.
    :param out: where the progress bar and notices go (default: standard error).
    :param on_batch: called with the report after each batch is settled.
    :raises ImportSetupError: before anything is sent, when the import cannot start.

    Ctrl-C stops the import cleanly (batches in flight are settled, the checkpoint written)
    and returns the report with ``interrupted`` set.
    """
    return _Importer(
        os.fspath(path),
        settings,
        concurrency=concurrency,
        mapping=mapping,
        fmt=fmt,
        checkpoint=checkpoint,
        restart=restart,
        progress=progress,
        allow_undeclared=allow_undeclared,
        max_retries=max_retries,
        policy=policy or RetryPolicy(),
        out=out,
        on_batch=on_batch,
    ).run()


class _Importer:
    def __init__(
        self,
        path: str,
        settings: MixpanelSettings,
        *,
        concurrency: int,
        mapping: t.Mapping[str, str] | None,
        fmt: str | None,
        checkpoint: bool,
        restart: bool,
        progress: bool,
        allow_undeclared: bool,
        max_retries: int,
        policy: RetryPolicy,
        out: t.TextIO | None,
        on_batch: t.Callable[[ImportReport], None] | None,
    ) -> None:
        if not (settings.has_service_account or settings.api_secret or settings.token):
            raise ImportSetupError(
                "the import needs credentials: mixpanel.service_account.username,"
                " .secret and .project_id (recommended), mixpanel.api_secret or mixpanel.token"
            )
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise ImportSetupError(
                f"concurrency must be between 1 and {MAX_CONCURRENCY}, got {concurrency}"
            )
        if max_retries < 0:
            raise ImportSetupError(f"max_retries must be 0 or more, got {max_retries}")
        fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
        if fmt not in FORMATS:
            raise ImportSetupError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if mapping and fmt != "csv":
            raise ImportSetupError("a column mapping (--map) is only for CSV input")
        self.path = path
        self.name = os.path.basename(path)
        self.settings = settings
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.policy = policy
        self.out = out or sys.stderr
        self.progress = progress
        self.on_batch = on_batch
        self.checkpoint_path = f"{path}.checkpoint" if checkpoint else None
        self.restart = restart
        self.report_path = f"{path}.failed.jsonl"
        self.report = ImportReport(path, checkpoint=self.checkpoint_path)
        self.prepare = _Preparer(
            None if allow_undeclared else settings.build_catalog(),
            int(time.time() * 1000) + FUTURE_SLACK_MS,
        )
        try:
            self.file: t.BinaryIO = open(path, "rb")  # noqa: SIM115  # closed by run()
            size = os.fstat(self.file.fileno()).st_size
            head = hashlib.sha256(self.file.read(HEAD_BYTES)).hexdigest()
            self.file.seek(0)
        except OSError as exc:
            raise ImportSetupError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.size = size
        self.identity: dict[str, object] = {"size": size, "head_sha256": head}
        self.lines = _Lines(self.file)
        try:
            self.rows: t.Iterable[Row] = (
                _CsvRows(self.lines, mapping or {}, self.name)
                if fmt == "csv"
                else _jsonl_rows(self.lines)
            )
        except ImportSetupError:
            self.file.close()
            raise
        self.transports = [
            HttpTransport(settings, compresslevel=GZIP_LEVEL) for _ in range(concurrency)
        ]
        self.work: queue.Queue[_Batch | None] = queue.Queue()
        self.results: queue.Queue[tuple[_Batch, Outcome, int]] = queue.Queue()
        self.stop = threading.Event()
        self.outstanding = 0
        self._report_file: t.TextIO | None = None
        self._saved_at = 0.0

    # -- the main thread ----------------------------------------------------------------------

    def run(self) -> ImportReport:
        started = time.monotonic()
        resume = None if self.checkpoint_path is None or self.restart else self._load()
        self.state = _State(resume or (self.lines.line, self.lines.offset, 0))
        self.lines.seek(*self.state.done[:2])
        self.report.skipped_by_checkpoint = self.state.done[2]
        self._start_report(resume is not None)
        self.bar = tqdm(
            total=self.size,
            initial=self.state.done[1],
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            file=self.out,
            disable=not self.progress,
        )
        senders = [
            threading.Thread(target=self._sender, args=(transport,), daemon=True)
            for transport in self.transports
        ]
        for sender in senders:
            sender.start()
        try:
            eof = self._read()
            self._settle_all(senders)
            if self.state.next_seq == self.report.batches:  # none given up
                self.state.done = eof
                self.report.complete = True
        except BaseException as exc:
            self.stop.set()
            self._settle_all(senders, notify=False)
            if not isinstance(exc, KeyboardInterrupt):
                raise
            self.report.interrupted = True
        finally:
            for sender in senders:
                sender.join()
            self.file.close()
            self._save()
            self._close_report()
            self.bar.close()
            for transport in self.transports:
                transport.session.close()
            self.report.elapsed = time.monotonic() - started
        return self.report

    def _read(self) -> Done:
        """Read the input, reject bad rows, dispatch batches; return the end of the input."""
        report, prepare = self.report, self.prepare
        max_records = self.settings.batch_max_records
        max_bytes = self.settings.batch_max_bytes - 2  # the brackets of the JSON array
        lines: list[int] = []
        bodies: list[bytes] = []
        size = 0
        line, offset, rows = self.state.done
        start, read = offset, rows
        try:
            for line_no, end, record, problem in self.rows:
                if problem is None:
                    try:
                        body = prepare(record, True)
                    except RowRejectedError as exc:
                        problem = str(exc)
                if problem is not None:
                    report.rejected_locally += 1
                    self._write("rejected", line_no, problem, record)
                else:
                    # A record larger than the byte budget on its own still goes, alone.
                    if bodies and (len(bodies) == max_records or size + len(body) + 1 > max_bytes):
                        self._dispatch(lines, bodies, (line, offset, rows), offset - start)
                        lines, bodies, size, start = [], [], 0, offset
                    lines.append(line_no)
                    bodies.append(body)
                    size += len(body) + 1
                line, offset, rows = line_no, end, rows + 1
        finally:
            # Counted here rather than per row: the loop is the import's hot path.
            report.read += rows - read
        if bodies:
            self._dispatch(lines, bodies, (line, offset, rows), offset - start)
            start = offset
        self.bar.update(self.lines.offset - start)  # the tail: rejected rows, blank lines
        return self.lines.line, self.lines.offset, rows

    def _dispatch(self, lines: list[int], bodies: list[bytes], end: Done, nbytes: int) -> None:
        while self.outstanding >= 2 * self.concurrency:
            self._settle(*self.results.get())
        seq = self.report.batches
        self.report.batches += 1
        self.state.ends[seq] = end
        self.work.put(_Batch(seq, lines, bodies, nbytes))
        self.outstanding += 1

    def _settle_all(self, senders: list[threading.Thread], notify: bool = True) -> None:
        """Tell the senders to stop after the queued batches; settle every batch."""
        for _ in senders:
            self.work.put(None)
        while self.outstanding:
            self._settle(*self.results.get(), notify=notify)

    def _settle(self, batch: _Batch, outcome: Outcome, attempts: int, notify: bool = True) -> None:
        """Count a batch's outcome, report its failed rows, advance the checkpoint."""
        self.outstanding -= 1
        report, count = self.report, len(batch.bodies)
        if outcome.kind == "sent":
            report.sent += count
        elif outcome.kind == "dead":
            refused = outcome.failed or range(count)
            for index in sorted(refused):
                error = outcome.reasons.get(index) or outcome.error
                self._write("refused", batch.lines[index], error, json.loads(batch.bodies[index]))
            report.refused += len(refused)
            report.sent += count - len(refused)
        else:
            error = f"not sent after {attempts} attempt(s): {outcome.error}"
            for line, body in zip(batch.lines, batch.bodies, strict=True):
                self._write("unsent", line, error, json.loads(body))
            report.unsent += count
        self._advance(batch.seq, outcome.kind != "retry")
        self.bar.update(batch.nbytes)
        self.bar.set_postfix(sent=report.sent, failed=report.failed, refresh=False)
        if notify and self.on_batch is not None:
            self.on_batch(report)

    def _advance(self, seq: int, finished: bool) -> None:
        state = self.state
        state.finished[seq] = finished
        moved = False
        while state.finished.get(state.next_seq):
            del state.finished[state.next_seq]
            state.done = state.ends.pop(state.next_seq)
            state.next_seq += 1
            moved = True
        # At most twice a second: a lost half second is re-sent on resume with the same insert
        # ids (so not duplicated), while a write per batch costs throughput. run() saves last.
        if moved and time.monotonic() - self._saved_at >= CHECKPOINT_EVERY:
            self._save()

    # -- the sender threads -------------------------------------------------------------------

    def _sender(self, transport: HttpTransport) -> None:
        while (batch := self.work.get()) is not None:
            self.results.put((batch, *self._deliver(transport, batch)))

    def _deliver(self, transport: HttpTransport, batch: _Batch) -> tuple[Outcome, int]:
        """Post a batch, retrying while Mixpanel cannot take it now; the last outcome."""
        attempts = 0
        outcome = Outcome("retry", "interrupted before it was sent")
        while not self.stop.is_set():
            attempts += 1
            try:
                outcome = transport.post("imports", batch.bodies)
            except Exception as exc:  # a bug must cost this batch, not hang the import
                error = redact(f"{type(exc).__name__}: {exc}"[:500], self.settings.secrets)
                outcome = Outcome("retry", error)
                break
            if outcome.kind != "retry" or attempts > self.max_retries:
                break
            self.stop.wait(self.policy.delay(attempts, outcome.retry_after))
        return outcome, attempts

    # -- the report of failed rows ------------------------------------------------------------

    def _start_report(self, resuming: bool) -> None:
        """Keep the report lines of rows before the checkpoint; drop the rest (redone now)."""
        kept: list[str] = []
        if resuming:
            try:
                with open(self.report_path, encoding="utf-8") as old:
                    kept = [text for text in old if _line_of(text) <= self.state.done[0]]
            except FileNotFoundError:
                pass
        if kept:
            self._report_file = open(self.report_path, "w", encoding="utf-8")  # noqa: SIM115
            self._report_file.writelines(kept)
            self.report.earlier_failures = len(kept)
            self.report.failed_report = self.report_path
        elif os.path.exists(self.report_path):
            os.remove(self.report_path)

    def _write(self, status: str, line: int, error: str, row: object) -> None:
        if self._report_file is None:
            self._report_file = open(self.report_path, "a", encoding="utf-8")  # noqa: SIM115
            self.report.failed_report = self.report_path
        entry = {"line": line, "status": status, "error": error, "row": row}
        self._report_file.write(json.dumps(entry) + "\n")

    def _close_report(self) -> None:
        if self._report_file is not None:
            self._report_file.close()

    # -- the checkpoint -----------------------------------------------------------------------

    def _load(self) -> Done | None:
        path = t.cast(str, self.checkpoint_path)
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            done = (int(data["line"]), int(data["offset"]), int(data["rows"]))
            identity = {"size": data["size"], "head_sha256": data["head_sha256"]}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            self._say(f"{os.path.basename(path)} is unreadable: starting from the first line")
            return None
        if identity != self.identity:
            self._say(
                f"{self.name} changed since {os.path.basename(path)} was written: starting"
                " from the first line"
            )
            return None
        self._say(
            f"resuming {self.name} after line {done[0]:,}: {done[2]:,} row(s) were done by an"
            " earlier run (--restart starts over)"
        )
        return done

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        if self.checkpoint_path is None:
            return
        if self._report_file is not None:
            self._report_file.flush()  # what the checkpoint covers is reported first
        line, offset, rows = self.state.done
        data = {
            "input": self.name,
            **self.identity,
            "line": line,
            "offset": offset,
            "rows": rows,
            "complete": self.report.complete,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = self.checkpoint_path + ".tmp"
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
        os.replace(temporary, self.checkpoint_path)

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")


def _line_of(report_line: str) -> float:
    """The input line a report line is about (infinity when unreadable: dropped on resume)."""
    try:
        return float(json.loads(report_line)["line"])
    except (ValueError, KeyError, TypeError):
        return math.inf
