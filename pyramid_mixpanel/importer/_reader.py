"""Reading the input: its lines, JSONL and CSV rows, and the CSV column mapping."""

from __future__ import annotations

import csv
import typing as t

import orjson

from ._errors import ImportSetupError

__all__ = ["FIELDS", "FORMATS", "CsvRows", "Lines", "Row", "jsonl_rows", "parse_mapping"]

FORMATS = ("jsonl", "csv")
#: The fields a CSV mapping names: ``event=<column>,distinct_id=<column>,time=<column>``.
FIELDS = ("event", "distinct_id", "time")

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


class Lines:
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


def jsonl_rows(lines: Lines) -> t.Iterator[Row]:
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


class CsvRows:
    """CSV records as rows, after a header line that must hold the mapped columns."""

    def __init__(self, lines: Lines, mapping: t.Mapping[str, str], filename: str) -> None:
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
