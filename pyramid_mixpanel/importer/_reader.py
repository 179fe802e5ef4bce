"""Reading the input: its lines, JSONL and CSV rows, and the CSV column mapping."""

from __future__ import annotations

import csv
import functools
import typing as t

import orjson

from ._errors import ImportSetupError, clipped

__all__ = [
    "FIELDS",
    "FORMATS",
    "MAX_LINE_BYTES",
    "CsvRows",
    "Lines",
    "Row",
    "RowTooLongError",
    "jsonl_rows",
    "parse_mapping",
    "too_long",
]

FORMATS = ("jsonl", "csv")
#: The fields a CSV mapping names: ``event=<column>,distinct_id=<column>,time=<column>``.
FIELDS = ("event", "distinct_id", "time")
#: The default ``max_line_bytes``: a longer line (a CSV record, over its lines) is a rejected row.
#: Above Mixpanel's 1 MB per event, so every line that could be imported fits, with room for
#: whitespace; and bounded, so a damaged file of one 200 MB line costs 1 MiB of memory.
MAX_LINE_BYTES = 1 << 20
# The rest of a line over the limit is read past this much at a time.
SKIP_CHUNK = 1 << 16
BOM = b"\xef\xbb\xbf"

# (line, offset after the row, the row, why it cannot be used or None)
Row = tuple[int, int, object, str | None]


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


class RowTooLongError(Exception):
    """Raised by :meth:`Lines.text` past a CSV record over the limit; the message says why."""


def too_long(size: int, limit: int) -> str:
    """Why a row over ``max_line_bytes`` is rejected."""
    return f"the row is {size:,} bytes: more than max_line_bytes ({limit:,}, --max-line-bytes)"


class Lines:
    """The input's binary lines with the line number and byte offset reached.

    No line is ever held whole beyond ``limit`` bytes (nor a CSV record, over its lines): the
    rest of a longer one is read past in chunks, so one huge line costs no more memory than
    the limit, and is a rejected row.
    """

    def __init__(self, file: t.BinaryIO, limit: int = MAX_LINE_BYTES) -> None:
        self.file = file
        self.limit = limit
        self.line = 0
        self.offset = 0
        self.bad = False  # a line of the current CSV record is not UTF-8
        self.taken = 0  # bytes of the current CSV record so far

    def seek(self, line: int, offset: int) -> None:
        self.file.seek(offset)
        self.line, self.offset = line, offset

    def rest(self, raw: bytes) -> int:
        """Read past the rest of the line ``raw`` begins, in bounded chunks; the bytes skipped."""
        skipped, readline = 0, self.file.readline
        while raw[-1:] != b"\n" and (raw := readline(SKIP_CHUNK)):
            skipped += len(raw)
        return skipped

    def text(self) -> t.Iterator[str]:
        """The lines as text for the csv module; :class:`RowTooLongError` past a long record.

        ``taken`` counts the bytes of the record being read (CsvRows resets it before each).
        """
        readline, limit = self.file.readline, self.limit
        while True:
            room = limit - self.taken
            raw = readline(room + 1)
            if not raw:
                return
            self.line += 1
            self.offset += len(raw)
            self.taken += len(raw)
            if len(raw) > room:
                skipped = self.rest(raw)
                self.offset += skipped
                raise RowTooLongError(too_long(self.taken + skipped, limit))
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self.bad = True
                text = raw.decode("utf-8", "replace")
            yield text.removeprefix("\ufeff") if self.line == 1 else text


def jsonl_rows(lines: Lines) -> t.Iterator[Row]:
    """The JSONL rows of ``lines`` from where it is; blank lines are skipped."""
    # Counters live in locals for speed (this loop runs once per row) and are written back to
    # ``lines`` when the generator ends or is closed.
    line, offset, loads, limit = lines.line, lines.offset, orjson.loads, lines.limit
    file = lines.file
    try:
        if offset == 0:
            # A byte-order mark (Excel and Notepad write one) is not JSON: it is skipped.
            if file.read(len(BOM)) == BOM:
                offset = len(BOM)
            else:
                file.seek(0)
        # Lines are read at most one byte over the limit: enough to tell a line is too long.
        for raw in iter(functools.partial(file.readline, limit + 1), b""):
            line += 1
            offset += len(raw)
            if len(raw) > limit:
                skipped = lines.rest(raw)
                offset += skipped
                yield line, offset, None, too_long(len(raw) + skipped, limit)
                continue
            try:
                record = loads(raw)
            except orjson.JSONDecodeError as exc:  # NaN, Infinity and bad UTF-8 included
                if raw.isspace():  # a blank line is not JSON, nor a row: tested only here
                    continue
                text = raw.decode("utf-8", "replace").rstrip("\r\n")
                yield line, offset, text, f"not valid JSON: {exc}"
                continue
            yield line, offset, record, None
    finally:
        lines.line, lines.offset = line, offset


class CsvRows:
    """CSV records as rows, after a header line that must hold the mapped columns."""

    def __init__(self, lines: Lines, mapping: t.Mapping[str, str], filename: str) -> None:
        self.lines = lines
        self.reader = self._reader()
        try:
            self.header = next(self.reader)
        except (StopIteration, csv.Error, RowTooLongError) as exc:
            raise ImportSetupError(f"{filename} has no readable CSV header line ({exc})") from None
        columns = {key: mapping.get(key, key) for key in FIELDS}
        for key, column in columns.items():
            if column not in self.header:
                header = clipped(", ".join(map(repr, self.header)), 200)
                raise ImportSetupError(
                    f"{filename}: no column {column!r} for {key} (the header has"
                    f" {header}); name it with --map {key}=<column>"
                )
        self.event, self.distinct_id, self.time = (self.header.index(columns[k]) for k in FIELDS)
        mapped = {self.event, self.distinct_id, self.time}
        self.properties = [(i, n) for i, n in enumerate(self.header) if i not in mapped]

    def _reader(self) -> t.Iterator[list[str]]:
        return csv.reader(self.lines.text(), strict=True)

    def __iter__(self) -> t.Iterator[Row]:
        lines, width = self.lines, len(self.header)
        while True:
            lines.bad, lines.taken = False, 0
            try:
                cells = next(self.reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield lines.line, lines.offset, None, f"not valid CSV: {exc}"
                continue
            except RowTooLongError as exc:
                # The record ends at its line over the limit. The lines are read by a generator,
                # which cannot go on once it raised: a fresh reader starts at the next line.
                self.reader = self._reader()
                yield lines.line, lines.offset, None, str(exc)
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
