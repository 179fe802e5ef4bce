"""Historical import: backfill a JSONL or CSV file of past events to Mixpanel's ``/import``.

::

    report = import_file("events.jsonl", settings, concurrency=10)
    print(report.summary())

The file is streamed in constant memory. The main thread reads and validates rows, packs them
into batches of at most ``mixpanel.batch_max_records`` records (2000) and
``mixpanel.batch_max_bytes`` (10,000,000 bytes) of JSON, and hands them to ``concurrency``
sender threads, each with its own :class:`~.delivery.transport.MixpanelTransport` (gzip,
``strict=1``, the configured credentials). At most twice ``concurrency`` batches are in memory
at once. A batch Mixpanel cannot take now (429, 5xx, unreachable) is retried with
:class:`RetryPolicy` up to ``max_retries`` times — only its records that have not arrived yet; a
refusal (400, 401, 403) is final and never retried; a batch Mixpanel finds too large (413) is
split by the transport until each part fits, so only a row too large on its own is refused.

Rows
    JSONL: one ``{"event": "...", "properties": {"distinct_id": ..., "time": ...}}`` per line
    (Mixpanel's import format). CSV: a header line; ``mapping`` names the columns of ``event``,
    ``distinct_id`` and ``time`` (each defaults to a column of that name), every other non-empty
    cell becomes a string property. ``time`` may be epoch seconds, epoch milliseconds (numbers
    from 10^11 up) or ISO 8601 (UTC when no offset is given); it is sent as integer
    milliseconds. A row without an event, a distinct_id or a usable time, dated before
    1971-01-01 or more than an hour ahead, with an invalid ``$insert_id``, larger than 1 MB, or
    (unless ``allow_undeclared``) naming an event the catalogue does not declare, is rejected
    before sending. A UTF-8 byte-order mark at the start of the file is skipped.
Hostile input
    Whatever a row holds (any bytes, any JSON, any CSV) it is imported or rejected with a
    reason: it never stops the import. No line is held whole beyond ``max_line_bytes``
    (default 1 MiB, :data:`MAX_LINE_BYTES`; for CSV, a record over all its lines): the rest of a
    longer one is read past in chunks and the row rejected.
``$insert_id``
    A valid one in the row (at most 36 letters, digits or ``-``) is kept. Otherwise it is the
    first 32 hex digits of the SHA-256 of the row as sent (event, distinct_id, time in ms and
    every property, keys sorted), so importing the same file twice creates no duplicates:
    Mixpanel deduplicates on it.
Checkpoint (``<input>.checkpoint``)
    Where every row before is done (imported, refused or rejected): batches finish out of order,
    so it is the end of the longest run of finished batches. A rerun of an unchanged input
    resumes there; a finished run marks it complete. Rows given up after ``max_retries`` hold it
    back, so a rerun sends them again. A checkpoint that cannot be read, or holds no place in
    the input, raises :class:`CheckpointError` (an :class:`ImportSetupError`) naming it and the
    fix (delete it, or ``restart``), before anything is sent: resuming from a guess could skip
    rows, and starting over unasked could send a whole file again.
Report (``<input>.failed.jsonl``)
    One line per row that was not imported: ``{"line", "status", "error", "row"}`` with status
    ``rejected`` (before sending), ``refused`` (by Mixpanel: its ``failed_records`` message, or
    the error of a batch refused as a whole) or ``unsent`` (given up or interrupted: rerun to
    retry). Absent when there is nothing to report.
"""

from __future__ import annotations

from ._errors import CheckpointError, ImportSetupError, RowRejectedError
from ._reader import FIELDS, FORMATS, MAX_LINE_BYTES, parse_mapping
from ._report import ImportReport
from ._sender import GZIP_LEVEL, MAX_CONCURRENCY, import_file
from ._validation import derive_insert_id, event_time_ms, prepare_record, valid_insert_id

__all__ = [
    "FIELDS",
    "FORMATS",
    "GZIP_LEVEL",
    "MAX_CONCURRENCY",
    "MAX_LINE_BYTES",
    "CheckpointError",
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
