"""The import itself: read and validate rows, send batches from threads, settle and retry."""

from __future__ import annotations

import json
import os
import queue
import sys
import threading
import time
import typing as t
from dataclasses import dataclass

from .._extras import require
from ..delivery.base import Outcome
from ..delivery.policy import RetryPolicy
from ..delivery.transport import MixpanelTransport
from ..log import redact
from ._checkpoint import CHECKPOINT_EVERY, Checkpoint, Done, State, input_identity
from ._errors import ImportSetupError, RowRejectedError
from ._reader import FORMATS, MAX_LINE_BYTES, CsvRows, Lines, Row, jsonl_rows
from ._report import FailedRows, ImportReport
from ._validation import FUTURE_SLACK_MS, Preparer

if t.TYPE_CHECKING:
    from ..settings import MixpanelSettings

__all__ = ["GZIP_LEVEL", "MAX_CONCURRENCY", "import_file"]

MAX_CONCURRENCY = 20
# Batches are compressed at level 1. Measured on import rows (230 bytes of JSON an event), per
# event: level 1 costs 1.1 µs of CPU and sends 41 bytes (5.7 times less); the transport's
# default 5 costs 1.8 µs for 35 bytes; 0 (stored, not compressed) costs 0.2 µs but sends all
# 232. Level 1 is the cheapest that compresses: at Mixpanel's rate limit (about 30,000 events/s
# a project) it needs 10 Mbit/s of upload where level 0 would need 56.
GZIP_LEVEL = 1
# Bytes of the input read at a time (the rows are then taken from memory line by line).
READ_BUFFER = 1 << 18


@dataclass
class _Batch:
    seq: int
    lines: list[int]
    bodies: list[bytes]
    nbytes: int  # bytes of input covered, for the progress bar


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
    max_line_bytes: int = MAX_LINE_BYTES,
    policy: RetryPolicy | None = None,
    out: t.TextIO | None = None,
    on_batch: t.Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import the events of a JSONL or CSV file into Mixpanel; see the package docstring.

    :param fmt: ``jsonl`` or ``csv``; by default ``csv`` for a ``.csv`` file, else ``jsonl``.
    :param mapping: for CSV, ``{field: column}`` for ``event``, ``distinct_id`` and ``time``.
    :param checkpoint: read and write ``<path>.checkpoint``; ``restart`` ignores the old one.
    :param max_retries: retries of a batch Mixpanel cannot take now before giving up on it.
    :param max_line_bytes: a longer line (line ending included; a CSV record over all its lines)
        is a rejected row, read past without being held whole. Default 1 MiB.
    :param out: where the progress bar and notices go (default: standard error).
    :param on_batch: called with the report after each batch is settled.
    :raises ImportSetupError: before anything is sent, when the import cannot start.
    :raises CheckpointError: (an ``ImportSetupError``) when the checkpoint is damaged or cannot
        be read or written; before anything is sent, but for a write failing mid-way.

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
        max_line_bytes=max_line_bytes,
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
        max_line_bytes: int,
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
        if max_line_bytes < 1:
            raise ImportSetupError(f"max_line_bytes must be 1 or more, got {max_line_bytes}")
        fmt = fmt or ("csv" if path.lower().endswith(".csv") else "jsonl")
        if fmt not in FORMATS:
            raise ImportSetupError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        if mapping and fmt != "csv":
            raise ImportSetupError("a column mapping (--map) is only for CSV input")
        # Checked before anything is opened: the import extra brings it.
        self._progress_bar = require("tqdm", "import", "pmixpanel import").tqdm
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
        self.report = ImportReport(path, checkpoint=self.checkpoint_path)
        self.failed = FailedRows(f"{path}.failed.jsonl", self.report)
        self.prepare = Preparer(
            None if allow_undeclared else settings.build_catalog(),
            int(time.time() * 1000) + FUTURE_SLACK_MS,
        )
        try:
            # Closed by run(). A larger buffer than the default (the file system's block, often
            # 4 KiB): a read of the file per thousand rows rather than per twenty.
            self.file: t.BinaryIO = open(path, "rb", buffering=READ_BUFFER)  # noqa: SIM115
            size, identity = input_identity(self.file)
        except OSError as exc:
            raise ImportSetupError(f"cannot read {path}: {exc.strerror or exc}") from None
        self.size = size
        self.checkpoint = (
            Checkpoint(self.checkpoint_path, self.name, identity, self.out, self.file)
            if self.checkpoint_path is not None
            else None
        )
        self.lines = Lines(self.file, max_line_bytes)
        try:
            self.rows: t.Iterable[Row] = (
                CsvRows(self.lines, mapping or {}, self.name)
                if fmt == "csv"
                else jsonl_rows(self.lines)
            )
        except ImportSetupError:
            self.file.close()
            raise
        self.transports = [
            # Rows are prepared and checked by the reader: posted as they are.
            MixpanelTransport.from_settings(settings, compresslevel=GZIP_LEVEL, prepared=True)
            for _ in range(concurrency)
        ]
        self.work: queue.Queue[_Batch | None] = queue.Queue()
        self.results: queue.Queue[tuple[_Batch, Outcome, int]] = queue.Queue()
        self.stop = threading.Event()
        self.outstanding = 0
        self._saved_at = 0.0

    # -- the main thread ----------------------------------------------------------------------

    def run(self) -> ImportReport:
        started = time.monotonic()
        start = (self.lines.line, self.lines.offset)  # the first row's (after a CSV header)
        try:
            resume = None
            if self.checkpoint is not None and not self.restart:
                resume = self.checkpoint.load(start)
            self.state = State(resume or (*start, 0))
            self.lines.seek(*self.state.done[:2])
            self.report.skipped_by_checkpoint = self.state.done[2]
            self.failed.start(resume is not None, self.state.done[0])
            # Written now, so a checkpoint that cannot be written stops the import before
            # anything is sent rather than after.
            self._save()
        except BaseException:
            self.file.close()
            self.failed.close()
            for transport in self.transports:
                transport.close()
            raise
        self.bar = self._progress_bar(
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
            try:
                self._save()
            finally:
                self.failed.close()
                self.bar.close()
                for transport in self.transports:
                    transport.close()
                self.report.elapsed = time.monotonic() - started
        return self.report

    def _read(self) -> Done:
        """Read the input, reject bad rows, dispatch batches; return the end of the input."""
        # The bound method: calling it costs less than calling the Preparer itself.
        report, prepare = self.report, self.prepare.__call__
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
                    self.failed.write("rejected", line_no, problem, record)
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
        arrived, unsent, refused = outcome.partition(count)
        report.sent += len(arrived)
        for index in refused:
            error = outcome.reasons.get(index) or outcome.error
            self.failed.write("refused", batch.lines[index], error, json.loads(batch.bodies[index]))
        report.refused += len(refused)
        if unsent:
            error = f"not sent after {attempts} attempt(s): {outcome.error}"
            for index in unsent:
                self.failed.write(
                    "unsent", batch.lines[index], error, json.loads(batch.bodies[index])
                )
            report.unsent += len(unsent)
        self._advance(batch.seq, not unsent)
        self.bar.update(batch.nbytes)
        self.bar.set_postfix(sent=report.sent, failed=report.failed, refresh=False)
        if notify and self.on_batch is not None:
            self.on_batch(report)

    def _advance(self, seq: int, finished: bool) -> None:
        moved = self.state.settle(seq, finished)
        # At most twice a second: a lost half second is re-sent on resume with the same insert
        # ids (so not duplicated), while a write per batch costs throughput. run() saves last.
        if moved and time.monotonic() - self._saved_at >= CHECKPOINT_EVERY:
            self._save()

    # -- the sender threads -------------------------------------------------------------------

    def _sender(self, transport: MixpanelTransport) -> None:
        while (batch := self.work.get()) is not None:
            self.results.put((batch, *self._deliver(transport, batch)))

    def _deliver(self, transport: MixpanelTransport, batch: _Batch) -> tuple[Outcome, int]:
        """Post a batch, retrying while Mixpanel cannot take it now; the last outcome."""
        attempts = 0
        pending = list(range(len(batch.bodies)))  # positions not yet arrived nor refused
        refused: dict[int, str] = {}
        error, retry_after = "interrupted before it was sent", None
        while pending and not self.stop.is_set():
            attempts += 1
            # The first post sends the batch as it is; a retry, what is still due of it.
            bodies = batch.bodies if attempts == 1 else [batch.bodies[i] for i in pending]
            try:
                outcome = transport.post("imports", bodies)
            except Exception as exc:  # a bug must cost this batch, not hang the import
                error = redact(f"{type(exc).__name__}: {exc}"[:500], self.settings.secrets)
                break
            _, retry, dead = outcome.partition(len(pending))
            for index in dead:
                refused[pending[index]] = outcome.reasons.get(index) or outcome.error
            # Only what is still due goes round again: what arrived or was refused is done.
            pending = [pending[index] for index in retry]
            error, retry_after = outcome.error, outcome.retry_after
            if not pending or attempts > self.max_retries:
                break
            self.stop.wait(self.policy.delay(attempts, retry_after))
        return _combined(len(batch.bodies), pending, refused, error), attempts

    # -- the checkpoint -----------------------------------------------------------------------

    def _save(self) -> None:
        self._saved_at = time.monotonic()
        checkpoint = self.checkpoint
        if checkpoint is None:
            return
        self.failed.flush()  # what the checkpoint covers is reported first
        # After a failed write, no other is tried: the import stops with that error (and the
        # batches in flight are settled without tripping over it again).
        self.checkpoint = None
        checkpoint.save(self.state.done, self.report.complete)
        self.checkpoint = checkpoint


def _combined(count: int, pending: list[int], refused: dict[int, str], error: str) -> Outcome:
    """One outcome for a batch whose records were settled over several posts."""
    failed = frozenset(refused)
    if pending:
        whole = len(pending) == count
        return Outcome(
            "retry",
            error,
            failed=failed,
            reasons=refused,
            pending=frozenset() if whole else frozenset(pending),
        )
    if refused:
        return Outcome(
            "dead", error, failed=failed if len(failed) < count else frozenset(), reasons=refused
        )
    return Outcome("sent")
