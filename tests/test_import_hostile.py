"""``pmixpanel import`` on hostile input: every row defect is a rejected row, never a crash.

Issue 13: huge numbers, damaged checkpoints, one 200 MB line, a byte-order mark, and whatever
hypothesis can think of. Real files, the loopback Mixpanel, no mocks of our code.
"""

from __future__ import annotations

import copy
import csv
import datetime as dt
import io
import json
import os
import pathlib
import tempfile
import threading
import time
import tracemalloc
import typing as t

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyramid_mixpanel.catalog import Catalog
from pyramid_mixpanel.importer import (
    MAX_LINE_BYTES,
    CheckpointError,
    ImportReport,
    ImportSetupError,
    RowRejectedError,
    event_time_ms,
    import_file,
    prepare_record,
    valid_insert_id,
)
from pyramid_mixpanel.importer._checkpoint import MAX_CHECKPOINT_BYTES, Checkpoint, input_identity
from pyramid_mixpanel.importer._reader import CsvRows, Lines, Row, jsonl_rows
from pyramid_mixpanel.importer._report import FailedRows
from pyramid_mixpanel.importer._validation import MAX_EVENT_BYTES, Preparer
from pyramid_mixpanel.rules import FUTURE_SLACK_MS, event_problem

from .test_import import (
    FAST,
    T0,
    ScriptedStandIn,
    checkpoint_of,
    import_records,
    report_lines,
    rows,
    run,
    settings_for,
    write_ini,
    write_jsonl,
)

NOW_MS = int(time.time() * 1000)
LATEST_MS = NOW_MS + FUTURE_SLACK_MS
FIX = "delete it, or run with --restart (restart=True), to start over from the first line"


@pytest.fixture
def api() -> t.Iterator[ScriptedStandIn]:
    with ScriptedStandIn() as server:
        yield server


def jsonl_bytes(records: list[t.Any]) -> bytes:
    return "".join(json.dumps(record) + "\n" for record in records).encode()


def csv_bytes(count: int, start: int = 0) -> bytes:
    return "".join(
        f"Page Viewed,user-{i % 13},{T0 + i},/p/{i}\n" for i in range(start, start + count)
    ).encode()


CSV_HEADER = b"event,distinct_id,time,Path\n"


def one_line(out: str) -> str:
    """The command's output is one line, with no traceback."""
    assert "Traceback" not in out
    lines = out.splitlines()
    assert len(lines) == 1, out
    return lines[0]


# -- 1. a time of 310+ digits -----------------------------------------------------------------


HUGE_TIMES = [  # the time cell of CSV lines 1002-1007, and why each is rejected
    (b"1" * 310, "is 310 characters long: not a time"),  # the reproduction
    (b"-" + b"9" * 400, "is 401 characters long: not a time"),
    (b"7" * 5000, "is 5,000 characters long: not a time"),  # beyond int()'s 4300 digits
    (b"9" * 60, "more than an hour in the future"),  # an int far beyond a float
    (b"1" + b"0" * 60 + b".5", "more than an hour in the future"),
    (b"1e400", "not a finite number"),
]


def test_a_csv_time_of_310_digits_is_a_rejected_row(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    # Issue 13: int -> float overflow crashed the import on every rerun, with 0 of the 1000
    # good rows before it sent.
    huge = b"".join(b"Page Viewed,u,%s,/huge\n" % cell for cell, _ in HUGE_TIMES)
    data = tmp_path / "events.csv"
    data.write_bytes(CSV_HEADER + csv_bytes(1000) + huge + csv_bytes(1000, start=1000))
    ini = write_ini(tmp_path, api)
    for _ in range(2):  # and on a rerun
        code, out = run([ini, str(data), "--no-progress", "--restart"])
        assert code == 1, out
        assert "Traceback" not in out
        assert "imported 2,000 of 2,006 rows" in out
        assert "rejected before sending 6" in out
        lines = report_lines(data)
        assert [line["line"] for line in lines] == list(range(1002, 1008))
        for line, (_, reason) in zip(lines, HUGE_TIMES, strict=True):
            assert line["status"] == "rejected"
            assert reason in line["error"]
            assert len(line["error"]) < 200  # the value is quoted, not copied whole
    assert len(api.events()) == 2000


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (10**400, "more than an hour in the future"),
        (-(10**400), "before 1971-01-01"),
        (10**5000, "more than an hour in the future"),  # not even a repr
        ("1" * 310, "310 characters long"),
        ("9" * 64, "more than an hour in the future"),
        ("-" + "9" * 63, "before 1971-01-01"),
        ("1" * 65, "65 characters long"),
        ("1e400", "not a finite number"),
        ("-1e400", "not a finite number"),
    ],
    ids=[
        "10**400",
        "-10**400",
        "10**5000",
        "310 digits",
        "64 digits",
        "-63 digits",
        "65 digits",
        "1e400",
        "-1e400",
    ],
)
def test_huge_times_are_refused_not_an_overflow(value: object, reason: str) -> None:
    with pytest.raises(RowRejectedError, match=reason) as refused:
        event_time_ms(value, LATEST_MS)
    assert len(str(refused.value)) < 200


def test_values_too_big_or_deep_for_a_repr_are_quoted_briefly() -> None:
    deep: list[t.Any] = []
    for _ in range(5000):
        deep = [deep]
    for row, reason in (
        ({"event": "E", "properties": {"distinct_id": deep, "time": T0}}, "is not a string"),
        ({"event": "E", "properties": {"distinct_id": "u", "time": deep}}, "is not epoch"),
        (
            {"event": "E", "properties": {"distinct_id": "u", "time": T0, "$insert_id": deep}},
            "is invalid",
        ),
        ({"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": deep}}, "nested"),
        ({"event": "E", "properties": {"distinct_id": 10**5000, "time": T0}}, "too large a number"),
        ({"event": "E", "properties": {"distinct_id": 2**64, "time": T0}}, "too large a number"),
        (
            {"event": "E", "properties": {"distinct_id": "u", "time": T0, "k" * 9999: [deep]}},
            r"properties\.k{60}\.\.\. has lists",
        ),
    ):
        with pytest.raises(RowRejectedError, match=reason) as refused:
            prepare_record(row)
        assert len(str(refused.value)) < 200
    widest = {"event": "E", "properties": {"distinct_id": 2**64 - 1, "time": T0}}
    assert json.loads(prepare_record(widest))["properties"]["distinct_id"] == str(2**64 - 1)


def test_a_long_undeclared_event_name_gets_no_fuzzy_hint() -> None:
    row = {"event": "Page Viewed" * 1000, "properties": {"distinct_id": "u", "time": T0}}
    with pytest.raises(RowRejectedError, match="is not declared") as refused:
        prepare_record(row, Catalog())
    assert "Did you mean" not in str(refused.value)
    assert len(str(refused.value)) < 200


def test_a_row_nested_too_deep_to_write_back_is_reported_without_it(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    # orjson reads 1024 levels; json.dumps (the report) recurses fewer.
    deep = b"[" * 1020 + b"]" * 1020
    props = b'{"event": "E", "properties": {"distinct_id": "u", "time": 1, "x": ' + deep + b"}}"
    data = tmp_path / "events.jsonl"
    data.write_bytes(jsonl_bytes(rows(1)) + deep + b"\n" + props + b"\n" + jsonl_bytes(rows(1)))
    report = import_file(data, settings_for(api), progress=False)
    assert (report.sent, report.rejected_locally) == (2, 2)
    lines = report_lines(data)
    assert [line["line"] for line in lines] == [2, 3]
    errors = ["a row must be a JSON object, got list", "event 'E' is not declared in"]
    written_back = [orjson.loads(deep), orjson.loads(props)]  # (json.loads recurses too deep)
    for line, error, row in zip(lines, errors, written_back, strict=True):
        assert line["error"].startswith(error)
        if line["row"] is None:
            # Python < 3.12: json.dumps (the report) gives up before orjson (the reader) does.
            assert line["error"].endswith("(the row nests too deep to be written here)")
        else:  # 3.12 and later write 1020 levels back
            assert line["row"] == row


# -- 2. damaged checkpoints -------------------------------------------------------------------

GOOD = 3  # rows in the input of the checkpoint tests


def checkpoint_case(data: pathlib.Path, **fields: object) -> str:
    """A checkpoint of ``data`` as the import writes it, with ``fields`` changed."""
    with open(data, "rb") as file:
        _, identity = input_identity(file)
    point = {"input": data.name, **identity, "line": 1, "offset": 0, "rows": 1, "complete": False}
    point["offset"] = len(jsonl_bytes(rows(1)))
    point.update(fields)
    return json.dumps(point)


def literal(data: pathlib.Path, key: str, text: str) -> str:
    """A checkpoint of ``data`` whose ``key`` is the JSON ``text``, as a damaged file may hold."""
    return checkpoint_case(data, **{key: "@"}).replace('"@"', text)


DAMAGED: list[tuple[str, t.Callable[[pathlib.Path], str | bytes], str]] = [
    ("offset -5", lambda data: checkpoint_case(data, offset=-5), "its offset is -5, not a whole"),
    ("offset 1e400", lambda data: literal(data, "offset", "1e400"), "its offset is inf, not a"),
    ("line NaN", lambda data: literal(data, "line", "NaN"), "its line is nan, not a whole"),
    ("rows -Infinity", lambda data: literal(data, "rows", "-Infinity"), "its rows is -inf, not"),
    ("rows a string", lambda data: checkpoint_case(data, rows="2"), "its rows is '2', not a whole"),
    ("rows true", lambda data: checkpoint_case(data, rows=True), "its rows is True, not a whole"),
    ("line a float", lambda data: checkpoint_case(data, line=1.0), "its line is 1.0, not a whole"),
    ("no size", lambda data: checkpoint_case(data, size=None), "its size is None"),
    ("no head hash", lambda data: checkpoint_case(data, head_sha256=7), "no head_sha256 text"),
    ("an array", lambda data: "[]", "[] is not a JSON object"),
    ("a string", lambda data: '"resume at line 3"', "'resume at line 3' is not a JSON object"),
    ("a number", lambda data: "42", "42 is not a JSON object"),
    ("not json", lambda data: "{not json", "not JSON: Expecting property name"),
    ("empty", lambda data: "", "not JSON: Expecting value"),
    ("no line", lambda data: '{"offset": 0}', "it has no line"),
    ("not utf-8", lambda data: b"\xff\xfe{}", "not JSON: 'utf-8' codec can't decode"),
    ("nested", lambda data: "[" * 50_000 + "]" * 5, "not JSON: maximum recursion depth"),
    ("huge int", lambda data: '{"line": ' + "9" * 5000 + "}", "not JSON: Exceeds the limit"),
    ("too large", lambda data: " " * (MAX_CHECKPOINT_BYTES + 1), "over 65,536 bytes"),
    (
        "offset past the end",
        lambda data: checkpoint_case(data, offset=10**400),
        "is past the end of events.jsonl",
    ),
    (
        "rows after the line",
        lambda data: checkpoint_case(data, rows=2),
        "and rows 2 are no place in events.jsonl",
    ),
    (
        "more lines than bytes",
        lambda data: checkpoint_case(data, line=3, offset=2, rows=0),
        "line 3, offset 2 and rows 0 are no place",
    ),
    (
        "not at a line start",
        lambda data: checkpoint_case(data, offset=50),
        "offset 50 is not at the start of a line",
    ),
]


@pytest.mark.parametrize(
    ("content", "what"), [case[1:] for case in DAMAGED], ids=[case[0] for case in DAMAGED]
)
def test_a_damaged_checkpoint_is_one_clear_line_and_exit_2(
    tmp_path: pathlib.Path,
    api: ScriptedStandIn,
    content: t.Callable[[pathlib.Path], str | bytes],
    what: str,
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    point = pathlib.Path(f"{data}.checkpoint")
    written = content(data)
    if isinstance(written, str):
        point.write_text(written)
    else:
        point.write_bytes(written)
    ini = write_ini(tmp_path, api)
    code, out = run([ini, str(data), "--no-progress"])
    assert code == 2, out
    line = one_line(out)
    assert line.startswith(f"pmixpanel import: the checkpoint {point} is damaged (")
    assert what in line
    assert line.endswith(f"): {FIX}")
    assert api.requests == []  # nothing was sent
    assert point.read_bytes() == (written if isinstance(written, bytes) else written.encode())
    # The fix the message gives works.
    code, out = run([ini, str(data), "--no-progress", "--restart"])
    assert code == 0, out
    assert checkpoint_of(data)["complete"] is True
    assert len(api.events()) == GOOD


def test_a_damaged_checkpoint_through_the_python_api(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    pathlib.Path(f"{data}.checkpoint").write_text(checkpoint_case(data, offset=-5))
    with pytest.raises(CheckpointError, match="its offset is -5") as raised:
        import_file(data, settings_for(api), progress=False)
    assert isinstance(raised.value, ImportSetupError)  # so `except ImportSetupError` still works
    assert api.requests == []
    assert import_file(data, settings_for(api), progress=False, restart=True).ok


def test_a_checkpoint_of_a_changed_input_still_starts_over(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    # Not damage: the input changed, so the checkpoint is about another file.
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    pathlib.Path(f"{data}.checkpoint").write_text(checkpoint_case(data, size=1, offset=10**400))
    out = io.StringIO()
    assert import_file(data, settings_for(api), progress=False, out=out).ok
    assert "changed since events.jsonl.checkpoint was written" in out.getvalue()


def test_a_valid_checkpoint_at_a_line_start_resumes(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    pathlib.Path(f"{data}.checkpoint").write_text(checkpoint_case(data))
    report = import_file(data, settings_for(api), progress=False)
    assert (report.skipped_by_checkpoint, report.sent) == (1, GOOD - 1)


def test_a_checkpoint_that_is_a_directory(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    point = pathlib.Path(f"{data}.checkpoint")
    point.mkdir()
    ini = write_ini(tmp_path, api)
    code, out = run([ini, str(data), "--no-progress"])
    assert code == 2
    assert one_line(out) == (
        f"pmixpanel import: the checkpoint {point} is a directory, not a file: move it out of"
        " the way (the import writes its checkpoint there)"
    )
    # --restart does not read it, but cannot write there either: stopped before sending.
    code, out = run([ini, str(data), "--no-progress", "--restart"])
    assert code == 2
    assert one_line(out).startswith(f"pmixpanel import: cannot write the checkpoint {point} (")
    assert "it must be a file in a folder this user can write to" in out
    assert api.requests == []
    assert not pathlib.Path(f"{point}.tmp").exists()


def test_an_unreadable_checkpoint(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    point = pathlib.Path(f"{data}.checkpoint")
    point.symlink_to(point)  # a loop: unreadable even for root, who ignores permissions
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 2
    line = one_line(out)
    assert line.startswith(f"pmixpanel import: cannot read the checkpoint {point} (")
    assert line.endswith(f"): make it readable, or {FIX}")
    assert api.requests == []


def test_a_checkpoint_that_cannot_be_written_mid_way_stops_the_import(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(5000))
    point = pathlib.Path(f"{data}.checkpoint")

    def break_the_checkpoint(report: ImportReport) -> None:
        if point.is_file():
            point.unlink()
            point.mkdir()

    with pytest.raises(CheckpointError, match="cannot write the checkpoint"):
        import_file(
            data, settings_for(api), concurrency=1, progress=False, on_batch=break_the_checkpoint
        )
    assert not [thread for thread in threading.enumerate() if "(_sender)" in thread.name]
    assert point.is_dir() and not pathlib.Path(f"{point}.tmp").exists()
    assert import_records(api)  # sent before the write failed


def test_a_report_path_that_is_a_directory(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    pathlib.Path(f"{data}.failed.jsonl").mkdir()
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 2
    assert one_line(out).startswith(f"pmixpanel import: cannot use the report {data}.failed.jsonl")
    assert api.requests == []


def test_a_damaged_report_of_an_earlier_run_is_not_a_crash(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(GOOD))
    pathlib.Path(f"{data}.checkpoint").write_text(checkpoint_case(data))
    old = [b'{"line": 1, "error": "kept"}', b'{"line": 1' + b"0" * 400 + b"}", b"\xff\xfe", b"["]
    pathlib.Path(f"{data}.failed.jsonl").write_bytes(b"\n".join([*old, b"[" * 5000]) + b"\n")
    report = import_file(data, settings_for(api), progress=False)
    assert (report.earlier_failures, report.sent) == (1, GOOD - 1)
    assert [line["error"] for line in report_lines(data)] == ["kept"]


# -- 3. one line of 200 MB --------------------------------------------------------------------


def test_a_line_over_the_limit_is_a_rejected_row(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    blob = "x" * (5 << 20)  # 5 MiB
    huge = {"event": "Page Viewed", "properties": {"distinct_id": "u", "time": T0, "Blob": blob}}
    data = write_jsonl(tmp_path / "events.jsonl", [*rows(10), huge, *rows(10, start=10)])
    ini = write_ini(tmp_path, api)
    code, out = run([ini, str(data), "--no-progress", "--max-line-bytes", "1000000"])
    assert code == 1, out
    (line,) = report_lines(data)
    size = len(json.dumps(huge)) + 1
    assert line == {
        "line": 11,
        "status": "rejected",
        "error": f"the row is {size:,} bytes: more than max_line_bytes (1,000,000,"
        " --max-line-bytes)",
        "row": None,
    }
    assert len(api.events()) == 20  # the rows before and after it
    point = checkpoint_of(data)
    assert (point["line"], point["rows"], point["offset"]) == (21, 21, data.stat().st_size)


def test_the_default_limit_is_a_mebibyte(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    assert MAX_LINE_BYTES == 1 << 20
    data = tmp_path / "events.jsonl"
    just = b'{"x": "' + b"y" * (MAX_LINE_BYTES - 10) + b'"}\n'  # exactly the limit
    data.write_bytes(just + b'{"x": "' + b"y" * (MAX_LINE_BYTES - 9) + b'"}\n')
    report = import_file(data, settings_for(api), progress=False)
    assert report.rejected_locally == 2
    reasons = [line["error"] for line in report_lines(data)]
    assert reasons[0] == "event is missing"  # read and parsed: within the limit
    assert reasons[1].startswith(f"the row is {MAX_LINE_BYTES + 1:,} bytes")


def test_a_line_over_the_limit_at_the_end_without_a_newline(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(jsonl_bytes(rows(2)) + b"z" * 300_000)
    report = import_file(data, settings_for(api), progress=False, max_line_bytes=100_000)
    assert (report.sent, report.rejected_locally, report.complete) == (2, 1, True)
    assert report_lines(data)[0]["error"].startswith("the row is 300,000 bytes")


def test_a_csv_line_over_the_limit_is_a_rejected_row(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.csv"
    long_record = (
        b'Page Viewed,u,1700000000,"'
        + b"a" * 20_000
        + b"\n"
        + b"b" * 20_000
        + b"\n"
        + b"c" * 20_000
        + b'"\n'  # lines 4-6: one record of 60,030 bytes over three lines
    )
    data.write_bytes(
        CSV_HEADER
        + csv_bytes(2)  # 2-3
        + long_record  # 4-6
        + b"Page Viewed,u,1700000000,"
        + b"z" * 3_000_000
        + b"\n"  # 7: one line of 3 MB
        + csv_bytes(2, start=2)  # 8-9
    )
    code, out = run(
        [write_ini(tmp_path, api), str(data), "--no-progress", "--max-line-bytes", "50000"]
    )
    assert code == 1, out
    lines = report_lines(data)
    assert [(line["line"], line["row"]) for line in lines] == [(6, None), (7, None)]
    assert lines[0]["error"].startswith("the row is 60,030 bytes: more than max_line_bytes")
    assert lines[1]["error"].startswith("the row is 3,000,026 bytes")
    assert sorted(e["properties"]["Path"] for e in api.events()) == [f"/p/{i}" for i in range(4)]


def test_a_csv_header_over_the_limit(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = tmp_path / "events.csv"
    data.write_bytes(b"event,distinct_id,time," + b"h" * 5000 + b"\n" + csv_bytes(1))
    with pytest.raises(ImportSetupError, match="no readable CSV header line .the row is 5,024"):
        import_file(data, settings_for(api), progress=False, max_line_bytes=1000)


def test_a_header_without_the_columns_is_quoted_briefly(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.csv"
    data.write_text(",".join(f"column{i}" for i in range(10_000)) + "\n")
    with pytest.raises(ImportSetupError, match="no column 'event'") as raised:
        import_file(data, settings_for(api), progress=False)
    assert len(str(raised.value)) < 400


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_memory_stays_bounded_on_a_huge_line(
    tmp_path: pathlib.Path, api: ScriptedStandIn, fmt: str
) -> None:
    line = 16 << 20
    data = tmp_path / f"events.{fmt}"
    with open(data, "wb") as file:
        if fmt == "jsonl":
            file.write(jsonl_bytes(rows(3)))
            file.write(b'{"event": "' + b"x" * line + b'"}\n')
            file.write(jsonl_bytes(rows(3, start=3)))
        else:
            file.write(CSV_HEADER + csv_bytes(3))
            file.write(b"Page Viewed,u," + b"9" * line + b",/huge\n")
            file.write(csv_bytes(3, start=3))
    tracemalloc.start()
    try:
        report = import_file(
            data, settings_for(api), concurrency=1, progress=False, max_line_bytes=256 << 10
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (report.sent, report.rejected_locally) == (6, 1)
    # The line is never held: the peak is the input's head (hashed for the checkpoint, 1 MiB)
    # and the limit, not 16 MiB.
    assert peak < line / 8, peak


def test_the_limit_is_checked(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(1))
    with pytest.raises(ImportSetupError, match="max_line_bytes must be 1 or more, got 0"):
        import_file(data, settings_for(api), max_line_bytes=0)


@pytest.mark.parametrize("value", ["0", "-1", "1MB"])
def test_a_bad_max_line_bytes_is_refused_by_the_parser(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pyramid_mixpanel.scripts.pmixpanel import PMixpanelCommand

    with pytest.raises(SystemExit) as exited:
        PMixpanelCommand(["pmixpanel", "import", "a.ini", "e.jsonl", "--max-line-bytes", value])
    assert exited.value.code == 2
    assert "argument --max-line-bytes" in capsys.readouterr().err


# -- 4. a byte-order mark ---------------------------------------------------------------------


def test_a_byte_order_mark_before_the_first_jsonl_row_is_skipped(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(b"\xef\xbb\xbf" + jsonl_bytes(rows(3)))
    report = import_file(data, settings_for(api), progress=False)
    assert report.ok and report.sent == 3  # the first row too
    assert sorted(e["properties"]["Path"] for e in api.events()) == ["/p/0", "/p/1", "/p/2"]
    assert checkpoint_of(data)["offset"] == data.stat().st_size
    assert import_file(data, settings_for(api), progress=False).skipped_by_checkpoint == 3


def test_a_byte_order_mark_only(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(b"\xef\xbb\xbf")
    assert import_file(data, settings_for(api), progress=False).ok
    assert import_file(data, settings_for(api), progress=False).ok  # the checkpoint is valid


def test_a_byte_order_mark_before_the_csv_header(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.csv"
    data.write_bytes(b"\xef\xbb\xbf" + CSV_HEADER + csv_bytes(2))
    report = import_file(data, settings_for(api), progress=False)  # no --map: "event" is found
    assert report.ok and report.sent == 2


def test_a_byte_order_mark_after_a_resume_point_is_data(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(jsonl_bytes(rows(1)) + b"\xef\xbb\xbf" + jsonl_bytes(rows(1, start=1)))
    report = import_file(data, settings_for(api), progress=False)
    assert (report.sent, report.rejected_locally) == (1, 1)
    assert "byte order mark" in report_lines(data)[0]["error"].lower()


# -- 5. properties: any row, any checkpoint ---------------------------------------------------

ZONES = st.integers(-1439, 1439).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
TIMES = (
    st.integers()
    | st.floats()
    | st.text(max_size=80)
    | st.from_regex(r"\A-?[0-9]{1,400}(\.[0-9]*)?\Z")
    | st.datetimes(timezones=st.none() | ZONES).map(lambda when: when.isoformat())
    | st.integers(min_value=T0 - 10**9, max_value=T0 + 10**9)
    | JSON
)
IDS = st.text(max_size=40) | st.sampled_from(["null", "undefined", "0", "[]"]) | JSON
EVENTS = st.fixed_dictionaries(
    {"event": st.sampled_from(["Page Viewed", "User Logged In", ""]) | st.text() | JSON},
    optional={
        "properties": st.fixed_dictionaries(
            {},
            optional={
                "distinct_id": IDS,
                "time": TIMES,
                "$insert_id": IDS,
                "ip": JSON,
                "Path": JSON,
                "nested": JSON,
            },
        )
        | JSON,
    },
)
NAMES = st.sampled_from(["Page Viewed", "User Logged In"])
RECENT = st.integers(min_value=T0 - 10**8, max_value=T0 + 10**6)
# Rows that are mostly right, so the search also reaches what follows the first checks.
GOOD_ROWS = st.fixed_dictionaries(
    {
        "event": NAMES,
        "properties": st.fixed_dictionaries(
            {"distinct_id": st.text(min_size=1, max_size=20), "time": RECENT},
            optional={"$insert_id": IDS, "ip": JSON, "Path": JSON, "nested": JSON},
        ),
    }
)


def swapped(row: dict[str, t.Any], key: str, value: object) -> dict[str, t.Any]:
    """``row`` with one field (``event`` or a property) set to ``value``."""
    if key == "event":
        return {**row, "event": value}
    return {**row, "properties": {**row["properties"], key: value}}


ONE_BAD_FIELD = st.builds(
    swapped, GOOD_ROWS, st.sampled_from(["event", "distinct_id", "time", "$insert_id"]), TIMES
)
ROWS = GOOD_ROWS | ONE_BAD_FIELD | EVENTS | JSON


def settled(row: Row, prepare: Preparer) -> tuple[bytes | None, str | None]:
    """What the import does with a row: its body, or why it is rejected (as ``_read`` does)."""
    _, _, record, problem = row
    if problem is None:
        try:
            return prepare(record, True), None
        except RowRejectedError as exc:
            return None, str(exc)
    return None, problem


def check_rows(found: list[Row], data: bytes, prepare: Preparer) -> list[bytes]:
    """Every row is a valid body or a rejection with a reason; lines and offsets add up."""
    bodies = []
    last_line, last_offset = 0, 0
    for row in found:
        line, offset, _, _ = row
        assert line > last_line and offset > last_offset
        last_line, last_offset = line, offset
        body, reason = settled(row, prepare)
        if body is None:
            assert isinstance(reason, str) and reason
            json.dumps(row[2])  # the report can hold it
        else:
            assert len(body) < MAX_EVENT_BYTES
            event = json.loads(body)
            assert event_problem(event, NOW_MS) is None, event  # Mixpanel's rules hold
            assert valid_insert_id(event["properties"]["$insert_id"])
            bodies.append(body)
    assert last_offset <= len(data)
    assert last_line <= data.count(b"\n") + 1
    return bodies


def jsonl_of(data: bytes, limit: int = MAX_LINE_BYTES) -> tuple[list[Row], Lines]:
    lines = Lines(io.BytesIO(data), limit)
    return list(jsonl_rows(lines)), lines


@given(st.lists(ROWS, max_size=8), st.sampled_from([None, Catalog()]))
def test_any_json_row_is_a_record_or_a_rejection(rows_: list[t.Any], catalog: Catalog) -> None:
    data = "".join(json.dumps(row) + "\n" for row in rows_).encode()
    found, lines = jsonl_of(data)
    check_rows(found, data, Preparer(catalog, LATEST_MS))
    assert lines.offset == len(data)
    # From Python the same values go through prepare_record, with the same outcome.
    for row in rows_:
        try:
            json.loads(prepare_record(row, catalog))
        except RowRejectedError as exc:
            assert str(exc)


PAST_THE_LIMITS = [  # property values Mixpanel refuses, and why
    ({"a": {"b": {"c": {"d": 1}}}}, "objects nested deeper than 3 levels"),
    ([[[[1]]]], "lists nested deeper than 3 levels"),
    (list(range(255)), "a list of 255 items (fewer than 255 allowed)"),
    ({str(i): i for i in range(255)}, "an object with 255 keys (fewer than 255 allowed)"),
]
# Property values at and past Mixpanel's limits of nesting and size, and strings holding the
# braces and brackets by which the fast path tells a nested value.
AT_THE_LIMITS = st.sampled_from(
    [
        {"a": {"b": {"c": 1}}},
        [[[1]]],
        list(range(254)),
        {str(i): i for i in range(254)},
        *(value for value, _ in PAST_THE_LIMITS),
        "{",
        "[x]",
        "a{b}c",
        7,
    ]
)
# Rows the fast path takes, or nearly (a time of 1971, in seconds or in milliseconds).
FAST_ROWS = st.fixed_dictionaries(
    {
        "event": NAMES,
        "properties": st.fixed_dictionaries(
            {
                "distinct_id": st.text(min_size=1, max_size=20) | st.sampled_from([" NULL "]),
                "time": RECENT | st.sampled_from([31_536_001, 31_536_001_000]),
                "Path": AT_THE_LIMITS,
            },
            optional={"ip": st.just("203.0.113.9"), "nested": JSON},
        ),
    },
    optional={"extra": JSON},
)


@given(FAST_ROWS, st.sampled_from([None, Catalog()]), st.booleans())
def test_the_fast_path_sends_what_the_full_path_would(
    row: t.Any, catalog: Catalog | None, owned: bool
) -> None:
    """A shortcut, never another answer: the body or the reason of the full path (``_checked``).

    And a row the fast path hands on to the full one is as it came (it is changed in place when
    ``owned``), so the report shows it as read.
    """
    prepare = Preparer(catalog, LATEST_MS)
    fast, full = copy.deepcopy(row), copy.deepcopy(row)

    def outcome(call: t.Callable[[object, bool], bytes], record: object) -> object:
        try:
            return call(record, owned)
        except RowRejectedError as exc:
            return str(exc)

    assert outcome(prepare, fast) == outcome(prepare._checked, full)
    assert fast == full


@pytest.mark.parametrize("ip", [None, "203.0.113.9"])
@pytest.mark.parametrize(("value", "reason"), PAST_THE_LIMITS)
def test_a_value_past_the_limits_is_reported_with_the_row_as_read(
    tmp_path: pathlib.Path, api: ScriptedStandIn, value: object, reason: str, ip: str | None
) -> None:
    properties = {"distinct_id": "u", "time": T0, "x": value, **({"ip": ip} if ip else {})}
    row = {"event": "Page Viewed", "properties": properties}
    data = write_jsonl(tmp_path / "events.jsonl", [row, *rows(1)])
    report = import_file(data, settings_for(api), progress=False)
    assert (report.sent, report.rejected_locally) == (1, 1)
    (line,) = report_lines(data)
    assert line["error"] == f"properties.x has {reason}"
    assert line["row"] == row  # as read: no time in milliseconds, no ip added


def test_a_row_of_1971_over_a_megabyte_is_refused_for_its_size(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    # Rows are prepared in place: the fast path puts the time back when it hands a row on, so
    # the full path does not read 1971 in milliseconds as seconds (and call it the future).
    properties = {"distinct_id": "u", "time": 31_536_001, "Blob": "x" * 1_000_000}
    row = {"event": "Page Viewed", "properties": properties}
    data = write_jsonl(tmp_path / "events.jsonl", [row])
    report = import_file(data, settings_for(api), progress=False)
    assert report.rejected_locally == 1
    assert "Mixpanel's limit is 1 MB" in report_lines(data)[0]["error"]


def test_lines_of_whitespace_are_not_rows(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = tmp_path / "events.jsonl"
    data.write_bytes(
        b"\n \n\t\r\n" + jsonl_bytes(rows(1)) + b"\x0b\x0c \n" + jsonl_bytes(rows(1, 1))
    )
    report = import_file(data, settings_for(api), progress=False)
    assert (report.read, report.sent, report.rejected_locally) == (2, 2, 0)
    assert report.ok


@given(st.lists(st.binary(max_size=120) | ROWS.map(lambda row: json.dumps(row).encode())))
def test_any_bytes_are_records_or_rejections(lines_: list[bytes]) -> None:
    data = b"\n".join(lines_)
    found, lines = jsonl_of(data, limit=100)
    check_rows(found, data, Preparer(None, LATEST_MS))
    unterminated = bool(data) and not data.endswith(b"\n")
    assert (lines.offset, lines.line) == (len(data), data.count(b"\n") + unterminated)


def csv_rows_of(data: bytes, limit: int = MAX_LINE_BYTES) -> tuple[list[Row], Lines]:
    lines = Lines(io.BytesIO(data), limit)
    reader = CsvRows(lines, {}, "events.csv")
    return list(reader), lines


@given(st.text())
def test_any_csv_text_is_records_or_rejections(text: str) -> None:
    data = CSV_HEADER + text.encode()
    found, lines = csv_rows_of(data, limit=64)
    check_rows(found, data, Preparer(None, LATEST_MS))
    assert lines.offset == len(data)


@given(st.binary())
def test_any_csv_bytes_are_records_or_rejections(raw: bytes) -> None:
    data = CSV_HEADER + raw
    found, lines = csv_rows_of(data, limit=48)
    check_rows(found, data, Preparer(None, LATEST_MS))
    assert lines.offset == len(data)


# No NUL in any cell (TIMES' text and the distinct id included): Python 3.10's csv.writer cannot
# write one (raw NUL bytes: the any-CSV-bytes test).
NO_NUL = st.characters(blacklist_characters="\x00")
CELLS = (
    st.text(NO_NUL, max_size=30)
    | TIMES.map(lambda value: str(value).replace("\x00", ""))
    | RECENT.map(str)
)


GOOD_CELLS = st.tuples(NAMES, st.text(NO_NUL, min_size=1, max_size=20), CELLS, CELLS).map(list)


@given(st.lists(GOOD_CELLS | st.lists(CELLS, min_size=3, max_size=5), max_size=8))
def test_any_csv_cells_are_records_or_rejections(records: list[list[str]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["event", "distinct_id", "time", "Path"])
    writer.writerows(records)
    data = text.getvalue().encode()
    found, _ = csv_rows_of(data)
    bodies = check_rows(found, data, Preparer(None, LATEST_MS))
    assert len(found) <= len(records)
    assert len(bodies) <= len(found)


def test_any_file_imports_without_an_exception(tmp_path: pathlib.Path) -> None:
    """End to end: whatever the file holds, the import reports every row and raises nothing."""
    with ScriptedStandIn() as server:
        settings = settings_for(server)

        @given(st.binary(max_size=600) | st.lists(ROWS, max_size=6).map(jsonl_bytes))
        def imports(data: bytes) -> None:
            for fmt in ("jsonl", "csv"):
                path = tmp_path / f"events.{fmt}"
                path.write_bytes((CSV_HEADER if fmt == "csv" else b"") + data)
                report = import_file(
                    path,
                    settings,
                    concurrency=1,
                    progress=False,
                    checkpoint=False,
                    policy=FAST,
                    max_retries=0,
                    max_line_bytes=200,
                    allow_undeclared=True,
                )
                assert report.complete and report.refused == report.unsent == 0
                assert report.read == report.sent + report.rejected_locally
                failed = pathlib.Path(f"{path}.failed.jsonl")
                lines = report_lines(path) if failed.exists() else []
                assert len(lines) == report.rejected_locally
                assert all(line["error"] and line["line"] >= 1 for line in lines)

        imports()
        assert server.refused == []  # Mixpanel's rules held for everything sent


CHECKPOINT_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        key: st.integers(min_value=-5, max_value=400) | JSON
        for key in ("line", "offset", "rows", "size", "head_sha256", "complete")
    },
)


@given(
    st.binary(max_size=300)
    | st.text(max_size=300).map(str.encode)
    | JSON.map(lambda value: json.dumps(value).encode())
    | CHECKPOINT_FIELDS.map(lambda fields: json.dumps(fields).encode())
    | st.integers(min_value=-5, max_value=400),
    st.sampled_from(["jsonl", "csv"]),
)
def test_any_checkpoint_is_a_resume_point_or_the_clear_error(
    content: bytes | int, fmt: str
) -> None:
    body = jsonl_bytes(rows(4)) if fmt == "jsonl" else CSV_HEADER + csv_bytes(4)
    with tempfile.TemporaryDirectory() as folder:
        data = pathlib.Path(folder) / f"events.{fmt}"
        data.write_bytes(body)
        path = f"{data}.checkpoint"
        with open(data, "rb") as file:
            size, identity = input_identity(file)
            if isinstance(content, int):  # a valid checkpoint but for its offset
                content = json.dumps({**identity, "line": 1, "offset": content, "rows": 1}).encode()
            pathlib.Path(path).write_bytes(content)
            start = (0, 0) if fmt == "jsonl" else (1, len(CSV_HEADER))
            checkpoint = Checkpoint(path, data.name, identity, io.StringIO(), file)
            try:
                done = checkpoint.load(start)
            except CheckpointError as exc:
                message = str(exc)
                assert message.startswith(f"the checkpoint {path} is damaged (")
                assert message.endswith(FIX)
                assert "\n" not in message and len(message) < 500
                return
        if done is not None:
            line, offset, rows_ = done
            assert 0 <= rows_ <= line - start[0] <= offset - start[1] <= size - start[1]
            assert offset in (start[1], size) or body[offset - 1 : offset] == b"\n"


@given(st.binary(max_size=400))
def test_any_report_of_an_earlier_run_is_kept_or_dropped(raw: bytes) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "events.jsonl.failed.jsonl")
        pathlib.Path(path).write_bytes(raw)
        report = ImportReport(path)
        failed = FailedRows(path, report)
        failed.start(True, 10)
        failed.close()
        if report.earlier_failures:
            with open(path, encoding="utf-8") as kept:
                assert len(kept.readlines()) == report.earlier_failures
        else:
            assert not os.path.exists(path)
