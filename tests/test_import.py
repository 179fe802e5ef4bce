"""``pmixpanel import``: real files, a real .ini, the loopback Mixpanel, no mocks of our code."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import math
import pathlib
import re
import sys
import threading
import typing as t

import pytest

from pyramid_mixpanel.catalog import Catalog
from pyramid_mixpanel.delivery.policy import RetryPolicy
from pyramid_mixpanel.delivery.transport import MixpanelTransport
from pyramid_mixpanel.exceptions import MixpanelConfigurationError
from pyramid_mixpanel.importer import (
    ImportReport,
    ImportSetupError,
    RowRejectedError,
    derive_insert_id,
    event_time_ms,
    import_file,
    parse_mapping,
    prepare_record,
    valid_insert_id,
)
from pyramid_mixpanel.scripts.pmixpanel import PMixpanelCommand
from pyramid_mixpanel.settings import MixpanelSettings, parse_settings

from .ini import LOGGING, app  # noqa: F401  # app: the .ini files name it here
from .loopback import MixpanelStandIn, Seen, _basic_auth, _MixpanelHandler

T0 = 1_700_000_000  # 2023-11-14T22:13:20Z
FAST = RetryPolicy(base=0.01, cap=0.05, jitter=(0.0, 0.01))
SECRET = "sec-9f8e7d6c5b4a"

INI = (
    """\
[app:main]
use = call:tests.test_import:app
mixpanel.api_host = {api_host}
mixpanel.delivery = sync
mixpanel.read_timeout = 10
{extra}

"""
    + LOGGING
)


# -- a stand-in that can be scripted and counts requests in flight -----------------------------

Answer = tuple[int, dict[str, t.Any], dict[str, str]]
Script = t.Callable[[int, list[dict[str, t.Any]], "ScriptedStandIn"], Answer | None]


class ScriptedHandler(_MixpanelHandler):
    """The stand-in's handler; a script may answer a request instead (refusals, 429, 503)."""

    def do_POST(self) -> None:
        owner = t.cast(ScriptedStandIn, self.server.owner)
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with owner.lock:
            owner.posts += 1
            number = owner.posts
            owner.in_flight += 1
            owner.peak = max(owner.peak, owner.in_flight)
            owner.last_auth = _basic_auth(self.headers.get("Authorization"))
        try:
            body = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
            answer = owner.script(number, json.loads(body), owner) if owner.script else None
            if answer is None:
                real, self.rfile = self.rfile, io.BytesIO(raw)
                try:
                    super().do_POST()
                finally:
                    self.rfile = real
                return
            status, payload, headers = answer
            seen = Seen(self.path, {}, _basic_auth(self.headers.get("Authorization")), {})
            with owner.lock:
                owner.requests.append(seen)
            self._answer(seen, status, payload, headers)
        finally:
            with owner.lock:
                owner.in_flight -= 1


class ScriptedStandIn(MixpanelStandIn):
    def __init__(self) -> None:
        self.script: Script | None = None
        self.posts = 0
        self.in_flight = 0
        self.peak = 0
        self.last_auth: tuple[str, str] | None = None
        super().__init__()
        self.stop()  # listen again on the same port, with the scripted handler
        self.handler = ScriptedHandler
        self.start()


@pytest.fixture
def api() -> t.Iterator[ScriptedStandIn]:
    with ScriptedStandIn() as server:
        yield server


# -- helpers ----------------------------------------------------------------------------------


def rows(count: int, start: int = 0, event: str = "Page Viewed") -> list[dict[str, t.Any]]:
    return [
        {
            "event": event,
            "properties": {"distinct_id": f"user-{i % 13}", "time": T0 + i, "Path": f"/p/{i}"},
        }
        for i in range(start, start + count)
    ]


def write_jsonl(path: pathlib.Path, records: list[t.Any]) -> pathlib.Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def write_ini(
    tmp_path: pathlib.Path, api: MixpanelStandIn, extra: str = "", name: str = "app.ini"
) -> str:
    ini = tmp_path / name
    extra = extra or "mixpanel.token = tok"
    ini.write_text(INI.format(api_host=api.base_url, extra=extra))
    return str(ini)


def run(argv: list[str], policy: RetryPolicy = FAST) -> tuple[int, str]:
    out = io.StringIO()
    command = PMixpanelCommand(["pmixpanel", "import", *argv], out)
    command.retry_policy = policy  # the documented seam
    code = command.run()
    return code, out.getvalue()


def settings_for(api: MixpanelStandIn, **extra: str) -> MixpanelSettings:
    return parse_settings({"mixpanel.token": "tok", "mixpanel.api_host": api.base_url, **extra})


def report_lines(path: pathlib.Path) -> list[dict[str, t.Any]]:
    text = pathlib.Path(f"{path}.failed.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def checkpoint_of(path: pathlib.Path) -> dict[str, t.Any]:
    data: dict[str, t.Any] = json.loads(pathlib.Path(f"{path}.checkpoint").read_text())
    return data


def import_records(api: MixpanelStandIn) -> list[dict[str, t.Any]]:
    with api.lock:
        return list(api.received["imports"])


# -- the happy paths --------------------------------------------------------------------------


def test_jsonl_arrives_in_gzip_batches_of_2000(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(5000))
    code, out = run([write_ini(tmp_path, api), str(data)])
    assert code == 0, out
    assert sorted(len(seen.records) for seen in api.requests) == [1000, 2000, 2000]
    for seen in api.requests:
        assert seen.path == "/import"
        assert seen.headers["content-encoding"] == "gzip"
        assert seen.query["strict"] == "1"
        assert seen.auth == ("tok", "")
    events = api.events()
    assert len(events) == 5000
    by_path = {event["properties"]["Path"]: event for event in events}
    first = by_path["/p/0"]["properties"]
    assert first["time"] == T0 * 1000  # normalised to milliseconds
    assert first["distinct_id"] == "user-0"
    assert valid_insert_id(first["$insert_id"])
    assert len({event["properties"]["$insert_id"] for event in events}) == 5000
    assert "sent=5000" in out  # the progress bar
    assert "imported 5,000 of 5,000 rows" in out.splitlines()[-1]
    assert checkpoint_of(data)["complete"] is True
    assert checkpoint_of(data)["rows"] == 5000
    assert not pathlib.Path(f"{data}.failed.jsonl").exists()


def test_csv_with_a_column_mapping(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = tmp_path / "events.csv"
    text = (
        "\ufeffEvent,user,timestamp,Path,Note\n"  # line 1, with a byte-order mark
        "Page Viewed,u1,2023-11-14T22:13:20Z,/a,\n"  # 2
        'Page Viewed,u2,1700000001,/b,"multi\nline"\n'  # 3-4
        "User Logged In,u3,1700000002000,,x\n"  # 5
        "Page Viewed,,1700000003,/c,\n"  # 6: no distinct_id
        "Page Viewed,u4,yesterday,/d,\n"  # 7: bad time
        "Page Viewed,u5,1700000004,/e\n"  # 8: a cell short
        'Page Viewed,u6,1700000005,"/f"x,\n'  # 9: broken quoting
    )
    data.write_bytes(
        text.encode()
        + b"Page Viewed,u7,1700000006,/\xff,\n"  # 10: not UTF-8
        + b"\n"  # 11: blank
        + b"Page Viewed,u8,1700000007,/g,\n"  # 12
    )
    code, out = run(
        [
            write_ini(tmp_path, api),
            str(data),
            "--map",
            "event=Event, distinct_id=user,time=timestamp",
            "--no-progress",
        ]
    )
    assert code == 1, out
    got = {event["properties"]["distinct_id"]: event for event in api.events()}
    assert sorted(got) == ["u1", "u2", "u3", "u8"]
    assert got["u1"]["properties"]["time"] == T0 * 1000
    assert "Note" not in got["u1"]["properties"]  # empty cells are left out
    assert got["u2"]["properties"]["Note"] == "multi\nline"
    assert got["u3"]["event"] == "User Logged In"
    assert got["u3"]["properties"]["time"] == 1_700_000_002_000
    assert "Path" not in got["u3"]["properties"]
    assert got["u3"]["properties"]["Note"] == "x"  # CSV cells are strings
    reasons = {line["line"]: (line["status"], line["error"]) for line in report_lines(data)}
    assert sorted(reasons) == [6, 7, 8, 9, 10]
    assert reasons[6] == ("rejected", "properties.distinct_id is missing")
    assert "'yesterday' is not epoch seconds" in reasons[7][1]
    assert reasons[8][1] == "4 cells, the header has 5"
    assert reasons[9][1].startswith("not valid CSV")
    assert reasons[10][1] == "not valid UTF-8"
    assert "rejected before sending 5" in out


def test_csv_columns_named_like_the_fields_need_no_mapping(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = tmp_path / "export.txt"
    data.write_text("time,event,distinct_id,Title\n1700000000,Page Viewed,u1,Hello\n")
    code, out = run([write_ini(tmp_path, api), str(data), "--format", "csv", "--no-progress"])
    assert code == 0, out
    (event,) = api.events()
    assert event["properties"]["Title"] == "Hello"


# -- $insert_id -------------------------------------------------------------------------------


def test_insert_id_is_deterministic_and_within_mixpanels_rule() -> None:
    properties: dict[str, object] = {"distinct_id": "u", "time": T0, "Path": "/x"}
    row = {"event": "Page Viewed", "properties": properties}
    body = json.loads(prepare_record(row))
    insert_id = body["properties"]["$insert_id"]
    assert len(insert_id) == 32 and valid_insert_id(insert_id)
    assert insert_id == derive_insert_id("Page Viewed", body["properties"])
    same = [
        {"properties": {"Path": "/x", "time": T0, "distinct_id": "u"}, "event": "Page Viewed"},
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": T0 * 1000, "Path": "/x"},
        },
        {"event": "Page Viewed", "properties": {"distinct_id": "u", "time": str(T0), "Path": "/x"}},
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": "2023-11-14T22:13:20Z", "Path": "/x"},
        },
    ]
    for variant in same:
        assert json.loads(prepare_record(variant))["properties"]["$insert_id"] == insert_id
    for key, value in (("Path", "/y"), ("distinct_id", "v"), ("time", T0 + 1)):
        other = {"event": "Page Viewed", "properties": {**properties, key: value}}
        assert json.loads(prepare_record(other))["properties"]["$insert_id"] != insert_id
    renamed = {**row, "event": "User Logged In"}
    assert json.loads(prepare_record(renamed))["properties"]["$insert_id"] != insert_id


def test_a_valid_insert_id_is_kept_an_invalid_one_rejected() -> None:
    def with_id(value: object) -> dict[str, t.Any]:
        return {"event": "E", "properties": {"distinct_id": "u", "time": T0, "$insert_id": value}}

    kept = json.loads(prepare_record(with_id("order-42")))["properties"]["$insert_id"]
    assert kept == "order-42"
    for bad in ("a" * 37, "has space", "", "ü", 42):
        with pytest.raises(RowRejectedError, match="insert_id .* is invalid"):
            prepare_record(with_id(bad))
    assert valid_insert_id("a" * 36)
    assert not valid_insert_id(None)


# Rows and the $insert_id every version so far derived for them: a later version must derive the
# same, or importing the same file again duplicates every row in Mixpanel (which deduplicates on
# it). The rows take each path of the preparation: the fast one, and the full one (times to
# convert, a number as distinct_id, nested values, the row's own ip or $insert_id).
KNOWN_IDS: list[tuple[dict[str, t.Any], str]] = [
    (
        {"event": "Page Viewed", "properties": {"distinct_id": "user-1", "time": T0, "Path": "/x"}},
        "49567394a691de81d2bbccae1ec40c08",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"time": T0 * 1000, "Path": "/x", "distinct_id": "user-1"},
        },
        "49567394a691de81d2bbccae1ec40c08",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "user-1", "time": str(T0), "Path": "/x"},
        },
        "49567394a691de81d2bbccae1ec40c08",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "user-1", "time": "2023-11-14T22:13:20Z", "Path": "/x"},
        },
        "49567394a691de81d2bbccae1ec40c08",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "user-1", "time": T0 + 0.5, "Path": "/x"},
        },
        "ebea10e3f67f28dd65cd2c40585087e9",
    ),
    (
        {"event": "Page Viewed", "properties": {"distinct_id": 42, "time": T0}},
        "e5c627d0b28c78c2f27ec35024b6cfb2",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": T0, "ip": "203.0.113.9"},
        },
        "a8e38acdee5ca366417a95ec7d5b8d91",
    ),
    (
        {
            "event": "User Charged",
            "properties": {
                "distinct_id": "u",
                "time": T0,
                "tags": ["a", "b"],
                "cart": {"n": 2, "items": [1, 2]},
            },
        },
        "40f3e9d403a2945ad38c0f1190c8edfe",
    ),
    (
        {
            "event": "Ünïcode ✓",
            "properties": {
                "distinct_id": "ü",
                "time": T0,
                "Title": '日本語 "quoted" \\ {brace} [bracket]',
                "z": None,
                "b": True,
                "f": 1.25,
                "n": -3,
            },
        },
        "5c5ceed3c5016943643df499f4f3874a",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {
                "distinct_id": "u",
                "time": T0,
                "$referrer": "https://example.com/",
                "Zed": 1,
                "alpha": 2,
                "$os": "Linux",
            },
        },
        "b03e1b9c39d9a5e85dac343545801b29",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": T0},
            "extra": "dropped",
        },
        "776fe2e2fa73570ce38e16950de30cc5",
    ),
    (
        {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": T0, "$insert_id": "order-42"},
        },
        "order-42",
    ),
    (
        {"event": "{", "properties": {"distinct_id": "u", "time": T0, "[": "}"}},
        "6dd93118c0b0c46dac4b9571a39b47ee",
    ),
]


def test_insert_ids_stay_those_of_earlier_versions(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    for row, insert_id in KNOWN_IDS:
        event = json.loads(prepare_record(row))
        assert event["properties"]["$insert_id"] == insert_id, row
        if insert_id != "order-42":
            # As documented: the SHA-256 of the event as sent without its $insert_id, as
            # compact JSON with sorted keys (which the standard library writes the same way).
            del event["properties"]["$insert_id"]
            canonical = json.dumps(
                event, sort_keys=True, separators=(",", ":"), ensure_ascii=False
            ).encode()
            assert hashlib.sha256(canonical).hexdigest()[:32] == insert_id
    # The import sends the very same events (its rows are prepared in place, as they are read).
    data = write_jsonl(tmp_path / "events.jsonl", [row for row, _ in KNOWN_IDS])
    report = import_file(data, settings_for(api), progress=False, allow_undeclared=True)
    assert report.ok, report.summary()
    assert import_records(api) == [json.loads(prepare_record(row)) for row, _ in KNOWN_IDS]


def test_importing_twice_creates_no_duplicates(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(3000))
    ini = write_ini(tmp_path, api)
    assert run([ini, str(data), "--no-progress"])[0] == 0
    # The checkpoint is complete: a rerun sends nothing...
    code, out = run([ini, str(data), "--no-progress"])
    assert code == 0
    assert "skipped 3,000 done by an earlier run" in out
    assert len(import_records(api)) == 3000
    # ...and --restart sends everything again, which Mixpanel deduplicates on $insert_id.
    code, out = run([ini, str(data), "--no-progress", "--restart"])
    assert code == 0
    assert len(import_records(api)) == 6000
    assert len(api.events()) == 3000


# -- Mixpanel refuses, limits, fails ----------------------------------------------------------


def refuse_path(path: str) -> Script:
    def script(
        number: int, records: list[dict[str, t.Any]], owner: ScriptedStandIn
    ) -> Answer | None:
        refused = [i for i, r in enumerate(records) if r["properties"].get("Path") == path]
        owner.accept("imports", [r for i, r in enumerate(records) if i not in refused])
        if not refused:
            return 200, {"code": 200, "num_records_imported": len(records), "status": "OK"}, {}
        failed = [
            {"index": i, "field": "properties.Path", "message": f"Path {path} is refused"}
            for i in refused
        ]
        return (
            400,
            {
                "code": 400,
                "error": "some data points in the request failed validation",
                "failed_records": failed,
                "num_records_imported": len(records) - len(refused),
                "status": "Bad Request",
            },
            {},
        )

    return script


def test_failed_records_are_reported_and_the_rest_imported(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    api.script = refuse_path("/p/2500")
    data = write_jsonl(tmp_path / "events.jsonl", rows(5000))
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 1
    assert len(api.events()) == 4999
    (line,) = report_lines(data)
    assert line["line"] == 2501
    assert line["status"] == "refused"
    assert line["error"] == "Path /p/2500 is refused"
    assert line["row"]["properties"]["Path"] == "/p/2500"
    assert line["row"]["properties"]["time"] == (T0 + 2500) * 1000
    assert "refused by Mixpanel 1" in out
    assert f"failures: {data}.failed.jsonl" in out
    assert len(api.requests) == 3  # a refusal is never retried
    assert checkpoint_of(data)["complete"] is True  # refused is final: nothing to resume


def test_a_batch_refused_as_a_whole_is_reported_row_by_row(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    api.set_mode("bad_request")
    data = write_jsonl(tmp_path / "events.jsonl", rows(3))
    code, _ = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 1
    lines = report_lines(data)
    assert [line["line"] for line in lines] == [1, 2, 3]
    assert {line["error"] for line in lines} == {"HTTP 400: bad request: invalid data"}
    assert len(api.requests) == 1


def test_all_records_refused_keep_their_own_reasons(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    api.script = refuse_path("/same")
    data = write_jsonl(
        tmp_path / "events.jsonl",
        [{"event": "Page Viewed", "properties": {"distinct_id": "u", "time": T0, "Path": "/same"}}],
    )
    report = import_file(data, settings_for(api), progress=False, policy=FAST)
    assert (report.refused, report.sent, report.ok) == (1, 0, False)
    assert report_lines(data)[0]["error"] == "Path /same is refused"


def test_rate_limited_then_recovers(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    def script(number: int, records: list[t.Any], owner: ScriptedStandIn) -> Answer | None:
        if number <= 2:
            return 429, {"error": "rate limited"}, {"Retry-After": "0"}
        return None

    api.script = script
    data = write_jsonl(tmp_path / "events.jsonl", rows(5000))
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 0, out
    assert [seen.status for seen in api.requests].count(429) == 2
    assert len(api.requests) == 5
    assert len(api.events()) == 5000


def test_down_gives_up_reports_and_holds_the_checkpoint(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    api.set_mode("down")
    data = write_jsonl(tmp_path / "events.jsonl", rows(10))
    ini = write_ini(tmp_path, api)
    code, out = run([ini, str(data), "--no-progress", "--max-retries", "2"])
    assert code == 1
    assert "not sent 10" in out
    assert "run the same command again to retry" in out
    lines = report_lines(data)
    assert len(lines) == 10
    assert {line["status"] for line in lines} == {"unsent"}
    assert lines[0]["error"].startswith("not sent after 3 attempt(s): ConnectionError")
    point = checkpoint_of(data)
    assert (point["line"], point["complete"]) == (0, False)
    # Mixpanel is back: the rerun sends what was not sent and the report goes away.
    api.set_mode("up")
    code, out = run([ini, str(data), "--no-progress"])
    assert code == 0, out
    assert "resuming events.jsonl after line 0" in out
    assert len(api.events()) == 10
    assert not pathlib.Path(f"{data}.failed.jsonl").exists()
    assert checkpoint_of(data)["complete"] is True


def test_no_retries_gives_up_after_one_attempt(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    api.set_mode("error500")
    data = write_jsonl(tmp_path / "events.jsonl", rows(2))
    report = import_file(data, settings_for(api), progress=False, policy=FAST, max_retries=0)
    assert report.unsent == 2
    assert report_lines(data)[0]["error"] == (
        "not sent after 1 attempt(s): HTTP 500: Internal Server Error"
    )


# -- checkpoint and resume --------------------------------------------------------------------


def test_resume_after_an_interruption_sends_only_the_rest(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(9000))
    settings = settings_for(api)

    def interrupt(report: ImportReport) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first batch

    first = import_file(
        data, settings, concurrency=1, progress=False, policy=FAST, on_batch=interrupt
    )
    assert first.interrupted and not first.complete and not first.ok
    assert "interrupted: run the same command again to resume" in first.summary()
    point = checkpoint_of(data)
    assert point["complete"] is False
    assert point["rows"] >= 2000
    assert point["rows"] == point["line"] == first.sent
    assert len(import_records(api)) == first.sent

    out = io.StringIO()
    second = import_file(data, settings, progress=False, policy=FAST, out=out)
    assert f"resuming events.jsonl after line {point['line']:,}" in out.getvalue()
    assert second.skipped_by_checkpoint == point["rows"]
    assert second.sent == 9000 - point["rows"]
    assert second.ok
    received = import_records(api)
    assert len(received) == 9000  # nothing sent twice
    assert len({event["properties"]["Path"] for event in received}) == 9000


def test_ctrl_c_while_a_batch_waits_to_be_retried(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    def script(number: int, records: list[t.Any], owner: ScriptedStandIn) -> Answer | None:
        if records[0]["properties"]["Path"] == "/p/0":
            return 503, {"error": "busy"}, {"Retry-After": "30"}
        return None

    api.script = script
    data = write_jsonl(tmp_path / "events.jsonl", rows(4000))

    def interrupt(report: ImportReport) -> None:
        raise KeyboardInterrupt

    report = import_file(data, settings_for(api), concurrency=2, progress=False, on_batch=interrupt)
    assert report.interrupted
    assert (report.sent, report.unsent) == (2000, 2000)
    lines = report_lines(data)
    assert lines[0]["error"] == "not sent after 1 attempt(s): HTTP 503: busy"
    # The second batch is in Mixpanel but the first is not: the checkpoint stays before it.
    assert checkpoint_of(data)["line"] == 0


def test_resume_from_the_checkpoint_of_a_partial_run(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    records = rows(5000)
    data = write_jsonl(tmp_path / "events.jsonl", records)
    settings = settings_for(api)
    assert import_file(data, settings, progress=False).ok
    # Make it look like the first run stopped after line 3000, with failures then and after.
    point = checkpoint_of(data)
    offset = sum(len(json.dumps(record)) + 1 for record in records[:3000])
    point.update(line=3000, offset=offset, rows=3000, complete=False)
    pathlib.Path(f"{data}.checkpoint").write_text(json.dumps(point))
    old = [{"line": 10, "status": "refused", "error": "x", "row": {}}, {"line": 4000}]
    pathlib.Path(f"{data}.failed.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in old) + "{truncated\n"
    )
    before = len(import_records(api))
    report = import_file(data, settings, progress=False)
    sent = import_records(api)[before:]
    assert sorted(int(e["properties"]["Path"][3:]) for e in sent) == list(range(3000, 5000))
    assert (report.skipped_by_checkpoint, report.sent, report.earlier_failures) == (3000, 2000, 1)
    assert not report.ok  # line 10 failed in the earlier run
    assert "(1 of which failed then)" in report.summary()
    assert [line["line"] for line in report_lines(data)] == [10]


def test_resume_without_a_report_and_dropping_stale_report_lines(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(4))
    settings = settings_for(api)
    api.set_mode("down")
    assert import_file(data, settings, progress=False, policy=FAST, max_retries=0).unsent == 4
    api.set_mode("up")
    pathlib.Path(f"{data}.failed.jsonl").unlink()
    assert import_file(data, settings, progress=False).ok  # resumes; no report to keep
    point = checkpoint_of(data)
    point.update(complete=False)
    pathlib.Path(f"{data}.checkpoint").write_text(json.dumps(point))
    pathlib.Path(f"{data}.failed.jsonl").write_text('{"line": 99}\n')
    assert import_file(data, settings, progress=False).ok
    assert not pathlib.Path(f"{data}.failed.jsonl").exists()


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        ("{not json", "is damaged (not JSON: Expecting property name"),
        ('{"line": 1}', "is damaged (it has no offset)"),
        ("[]", "is damaged ([] is not a JSON object)"),
    ],
)
def test_an_unreadable_checkpoint_is_a_clear_error(
    tmp_path: pathlib.Path, api: ScriptedStandIn, checkpoint: str, message: str
) -> None:
    # Issue 13: starting over unasked could send a whole file again; the person decides (more
    # cases in test_import_hostile.py).
    data = write_jsonl(tmp_path / "events.jsonl", rows(3))
    pathlib.Path(f"{data}.checkpoint").write_text(checkpoint)
    with pytest.raises(ImportSetupError, match=re.escape(message)) as raised:
        import_file(data, settings_for(api), progress=False)
    assert str(raised.value).startswith(f"the checkpoint {data}.checkpoint ")
    assert str(raised.value).endswith(
        "delete it, or run with --restart (restart=True), to start over from the first line"
    )
    assert api.requests == []
    assert import_file(data, settings_for(api), progress=False, restart=True).sent == 3


def test_a_changed_input_starts_over(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(3))
    settings = settings_for(api)
    assert import_file(data, settings, progress=False).ok
    write_jsonl(data, rows(4))
    out = io.StringIO()
    report = import_file(data, settings, progress=False, out=out)
    assert "events.jsonl changed since events.jsonl.checkpoint was written" in out.getvalue()
    assert (report.sent, report.skipped_by_checkpoint) == (4, 0)
    assert len(api.events()) == 4  # the three already there were deduplicated


def test_without_a_checkpoint(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(3))
    pathlib.Path(f"{data}.failed.jsonl").write_text('{"line": 1}\n')  # from an older run
    report = import_file(data, settings_for(api), checkpoint=False, progress=False)
    assert report.ok and report.checkpoint is None
    assert not pathlib.Path(f"{data}.checkpoint").exists()
    assert not pathlib.Path(f"{data}.failed.jsonl").exists()


# -- rows rejected before sending -------------------------------------------------------------


def test_rows_rejected_before_sending(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    def event(**properties: t.Any) -> dict[str, t.Any]:
        return {
            "event": "Page Viewed",
            "properties": {"distinct_id": "u", "time": T0, **properties},
        }

    lines: list[t.Any] = [
        event(Path="/ok"),  # 1
        {"event": "Page Veiwed", "properties": {"distinct_id": "u", "time": T0}},  # 2
        event(time="last tuesday"),  # 3
        {"event": "Page Viewed", "properties": {"distinct_id": "u"}},  # 4
        {"event": "Page Viewed", "properties": {"time": T0}},  # 5
        {"properties": {"distinct_id": "u", "time": T0}},  # 6
        event(time=1_000),  # 7: 1970
        event(time=T0 * 10),  # 8: far in the future
        event(**{"$insert_id": "not valid!"}),  # 9
        event(**{"$insert_id": "kept-1"}),  # 10
        ["not", "an", "object"],  # 11
        {"event": "Page Viewed", "properties": "nope"},  # 12
        event(distinct_id=True),  # 13
        event(Blob="x" * 1_000_000),  # 14
        {"event": 7, "properties": {}},  # 15
        {"event": "Page Veiwed", "properties": {"distinct_id": "u", "time": T0}},  # 16
        event(distinct_id=42, Path="/number"),  # 17
    ]
    data = tmp_path / "events.jsonl"
    text = "".join(json.dumps(line) + "\n" for line in lines)
    data.write_bytes(
        text.encode()
        + b"{broken json\n"  # 18
        + b"\n"  # 19: blank, skipped
        + b'{"event": "\xff"}\n'  # 20
        + b'{"event": "Page Viewed", "properties": {"distinct_id": "u", "time": NaN, "x": 1}}\n'
        + b'{"event": "Page Viewed", "properties": {"distinct_id": "u", "time": 1, "x": NaN}}\n'
    )
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 1
    got = {line["line"]: line["error"] for line in report_lines(data)}
    assert "Did you mean Events.page_viewed ('Page Viewed')?" in got[2]
    assert got[2] == got[16]
    assert "'last tuesday' is not epoch seconds" in got[3]
    assert got[4] == "properties.time is missing"
    assert got[5] == "properties.distinct_id is missing"
    assert got[6] == "event is missing"
    assert "before 1971-01-01" in got[7]
    assert "more than an hour in the future" in got[8]
    assert "'not valid!' is invalid" in got[9]
    assert got[11] == "a row must be a JSON object, got list"
    assert got[12] == "properties is missing or not an object"
    assert got[13] == "distinct_id True is not a string"
    assert "Mixpanel's limit is 1 MB" in got[14]
    assert got[15] == "event is not a string"
    assert got[18].startswith("not valid JSON")
    assert "utf-8" in got[20].lower()
    assert got[21].startswith("not valid JSON")  # NaN is not JSON
    assert got[22].startswith("not valid JSON")
    assert sorted(got) == [2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 18, 20, 21, 22]
    assert report_lines(data)[0]["row"] == lines[1]  # the row as it was read
    events = {e["properties"].get("Path"): e["properties"] for e in api.events()}
    assert events["/number"]["distinct_id"] == "42"
    assert {e["properties"]["$insert_id"] for e in api.events()} >= {"kept-1"}
    assert len(api.events()) == 3
    assert "rejected before sending 18" in out


def test_nan_in_a_property_is_rejected() -> None:
    row = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": float("nan")}}
    with pytest.raises(RowRejectedError, match="NaN and Infinity"):
        prepare_record(row)


def test_allow_undeclared_imports_any_event(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(2, event="Legacy Thing"))
    code, _ = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 1
    code, out = run(
        [write_ini(tmp_path, api), str(data), "--no-progress", "--allow-undeclared", "--restart"]
    )
    assert code == 0, out
    assert {event["event"] for event in api.events()} == {"Legacy Thing"}


def test_the_catalogue_check_of_prepare_record() -> None:
    row = {"event": "Signed Up", "properties": {"distinct_id": "u", "time": T0}}
    with pytest.raises(RowRejectedError, match=r"Did you mean Events.user_signed_up"):
        prepare_record(row, Catalog())
    assert prepare_record(row)  # no catalogue, no check


def test_an_input_of_rejected_rows_only(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", [{"event": "Page Viewed"}] * 3)
    report = import_file(data, settings_for(api), progress=False)
    assert (report.read, report.rejected_locally, report.batches) == (3, 3, 0)
    assert report.complete and not report.ok
    assert api.requests == []


def test_an_empty_file(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = tmp_path / "events.jsonl"
    data.write_text("")
    report = import_file(data, settings_for(api), progress=False)
    assert report.ok and report.read == 0


# -- batching, concurrency, credentials -------------------------------------------------------


def test_batches_stay_under_the_byte_budget(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    big = {"event": "Page Viewed", "properties": {"distinct_id": "u", "time": T0, "x": "y" * 3000}}
    data = write_jsonl(tmp_path / "events.jsonl", [*rows(50), big, *rows(50, start=50)])
    ini = write_ini(tmp_path, api, "mixpanel.token = tok\nmixpanel.batch_max_bytes = 2000")
    code, out = run([ini, str(data), "--no-progress"])
    assert code == 0, out
    sizes = [len(json.dumps(seen.records, separators=(",", ":"))) for seen in api.requests]
    assert len(sizes) > 5
    assert [size for size in sizes if size > 2000] == [max(sizes)]  # the big one, alone
    assert [len(seen.records) for seen in api.requests if len(seen.records) == 1]
    assert len(api.events()) == 101


def test_senders_really_work_concurrently(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    api.set_mode("slow", delay=0.2)
    data = write_jsonl(tmp_path / "events.jsonl", rows(8000))
    ini = write_ini(tmp_path, api)
    code, out = run([ini, str(data), "--no-progress", "--concurrency", "4"])
    assert code == 0, out
    assert 1 < api.peak <= 4
    api.peak = 0
    code, out = run([ini, str(data), "--no-progress", "--concurrency", "1", "--restart"])
    assert code == 0, out
    assert api.peak == 1
    assert len(api.events()) == 8000


def test_service_account_credentials_without_a_token(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    extra = (
        "mixpanel.service_account.username = importer.sa\n"
        f"mixpanel.service_account.secret = {SECRET}\n"
        "mixpanel.service_account.project_id = 1234"
    )
    data = write_jsonl(tmp_path / "events.jsonl", rows(2))
    code, out = run([write_ini(tmp_path, api, extra), str(data), "--no-progress"])
    assert code == 0, out
    assert api.requests[0].auth == ("importer.sa", SECRET)
    assert api.requests[0].query["project_id"] == "1234"
    assert SECRET not in out


def test_no_secret_in_the_output_or_the_report(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    def echo_credentials(
        number: int, records: list[t.Any], owner: ScriptedStandIn
    ) -> Answer | None:
        return 401, {"error": f"invalid credentials {owner.last_auth}"}, {}

    api.script = echo_credentials
    data = write_jsonl(tmp_path / "events.jsonl", rows(2))
    ini = write_ini(tmp_path, api, f"mixpanel.token = tok-1a2b3c\nmixpanel.api_secret = {SECRET}")
    code, out = run([ini, str(data)])
    assert code == 1
    report = pathlib.Path(f"{data}.failed.jsonl").read_text()
    assert "HTTP 401: invalid credentials" in report
    assert SECRET not in out + report
    assert "tok-1a2b3c" not in out + report


def test_an_unexpected_error_costs_the_batch_not_the_import(
    tmp_path: pathlib.Path, api: ScriptedStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(self: MixpanelTransport, endpoint: str, bodies: t.Sequence[str]) -> t.NoReturn:
        raise RuntimeError(f"boom {SECRET}")

    monkeypatch.setattr(MixpanelTransport, "post", explode)
    data = write_jsonl(tmp_path / "events.jsonl", rows(3))
    settings = settings_for(api, **{"mixpanel.api_secret": SECRET})
    report = import_file(data, settings, progress=False)
    assert report.unsent == 3
    assert report_lines(data)[0]["error"] == "not sent after 1 attempt(s): RuntimeError: boom ***"


def test_an_error_in_the_callback_stops_the_import_cleanly(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(5000))

    def broken(report: ImportReport) -> None:
        raise ValueError("callback bug")

    with pytest.raises(ValueError, match="callback bug"):
        import_file(data, settings_for(api), progress=False, on_batch=broken)
    assert checkpoint_of(data)["complete"] is False
    assert not [thread for thread in threading.enumerate() if "(_sender)" in thread.name]


# -- setup errors ------------------------------------------------------------------------------


def test_setup_errors_of_the_command(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    ini = write_ini(tmp_path, api)
    data = write_jsonl(tmp_path / "events.jsonl", rows(1))
    csv_file = tmp_path / "events.csv"
    csv_file.write_text("Event,user,when\n")
    empty_csv = tmp_path / "empty.csv"
    empty_csv.write_text("")
    cases = [
        ([ini, str(data), "--map", "event=Event"], "only for CSV input"),
        ([ini, str(tmp_path / "missing.jsonl")], "cannot read"),
        ([ini, str(csv_file), "--map", "event=Event,distinct_id=user"], "no column 'time'"),
        ([ini, str(csv_file), "--map", "event"], "--map wants field=column items"),
        ([ini, str(csv_file), "--map", "user=x"], "'user' is not one of event"),
        ([ini, str(csv_file), "--map", "time=a,time=b"], "--map names 'time' twice"),
        ([ini, str(empty_csv)], "has no readable CSV header line"),
        (
            [write_ini(tmp_path, api, "mixpanel.token = false", "none.ini"), str(data)],
            "needs credentials",
        ),
    ]
    for argv, message in cases:
        code, out = run([*argv, "--no-progress"])
        assert code == 2, (argv, out)
        assert message in out, out
    assert api.requests == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--concurrency", "21"],
        ["--concurrency", "0"],
        ["--concurrency", "x"],
        ["--max-retries", "-1"],
    ],
)
def test_bad_options_are_refused_by_the_parser(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        PMixpanelCommand(["pmixpanel", "import", "app.ini", "events.jsonl", *argv])
    assert exited.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_setup_errors_of_the_python_api(tmp_path: pathlib.Path, api: ScriptedStandIn) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(1))
    settings = settings_for(api)
    with pytest.raises(ImportSetupError, match="concurrency must be between 1 and 20"):
        import_file(data, settings, concurrency=0)
    with pytest.raises(ImportSetupError, match="max_retries must be 0 or more"):
        import_file(data, settings, max_retries=-1)
    with pytest.raises(ImportSetupError, match="format must be one of jsonl, csv"):
        import_file(data, settings, fmt="xml")
    with pytest.raises(ImportSetupError, match="needs credentials"):
        import_file(data, parse_settings({}))
    bad_header = tmp_path / "bad.csv"
    bad_header.write_text('"event,time\n')
    with pytest.raises(ImportSetupError, match="no readable CSV header"):
        import_file(bad_header, settings)
    assert parse_mapping("event=E , time = T") == {"event": "E", "time": "T"}


# -- time -------------------------------------------------------------------------------------

LATEST = (T0 + 3600) * 1000


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (T0, T0 * 1000),
        (T0 + 0.25, T0 * 1000 + 250),
        (T0 * 1000, T0 * 1000),
        (T0 * 1000 + 0.4, T0 * 1000),
        (f" {T0} ", T0 * 1000),
        (f"{T0}.5", T0 * 1000 + 500),
        ("1.7e9", T0 * 1000),
        ("2023-11-14T22:13:20Z", T0 * 1000),
        ("2023-11-14T22:13:20.123z", T0 * 1000 + 123),
        ("2023-11-14T23:13:20+01:00", T0 * 1000),
        ("2023-11-14T22:13:20", T0 * 1000),  # naive is UTC
        ("2023-11-14", (T0 - 80000) * 1000),
    ],
)
def test_event_time_ms(value: object, expected: int) -> None:
    assert event_time_ms(value, LATEST) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (True, "is not epoch seconds"),
        (None, "is not epoch seconds"),
        ([T0], "is not epoch seconds"),
        ("", "is not epoch seconds"),
        ("tomorrow", "is not epoch seconds"),
        ("nan", "not a finite number"),
        (float("inf"), "not a finite number"),
        (0, "before 1971-01-01"),
        ("1970-12-31T23:59:59Z", "before 1971-01-01"),
        (T0 + 3601, "more than an hour in the future"),
    ],
)
def test_event_time_ms_refuses(value: object, reason: str) -> None:
    with pytest.raises(RowRejectedError, match=reason):
        event_time_ms(value, LATEST)


def test_event_time_ms_defaults_to_an_hour_from_now() -> None:
    assert event_time_ms(T0) == T0 * 1000
    with pytest.raises(RowRejectedError, match="future"):
        event_time_ms(10**10)


def test_values_python_callers_pass_must_be_json() -> None:
    nested = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": [1.0, math.inf]}}
    with pytest.raises(RowRejectedError, match="NaN and Infinity"):
        prepare_record(nested)
    odd = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": object()}}
    with pytest.raises(RowRejectedError, match="a property is not JSON"):
        prepare_record(odd)
    fine = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": (1, "a", 2.5)}}
    assert json.loads(prepare_record(fine))["properties"]["x"] == [1, "a", 2.5]


def test_rows_mixpanel_would_refuse_are_rejected_with_the_rule() -> None:
    def row(**properties: object) -> dict[str, t.Any]:
        return {"event": "E", "properties": {"distinct_id": "u", "time": T0, **properties}}

    for bad, match in (
        (row(distinct_id="null"), "distinct_id 'null' is a value Mixpanel refuses"),
        (row(distinct_id=0), "distinct_id 0 is a value Mixpanel refuses"),
        (row(**{"$insert_id": "undefined"}), "insert_id 'undefined' is a value Mixpanel refuses"),
        (row(**{f"p{i}": i for i in range(251)}), "255 properties: Mixpanel takes fewer than 255"),
        (row(deep={"a": {"b": {"c": {"d": 1}}}}), "properties.deep has objects nested deeper"),
        (row(many=list(range(255))), "properties.many has a list of 255 items"),
    ):
        with pytest.raises(RowRejectedError, match=match):
            prepare_record(bad)
    # One property fewer (with the $insert_id and ip added) is fine, and takes no shortcut.
    assert prepare_record(row(**{f"p{i}": i for i in range(250)}))
    assert prepare_record(row(ok={"a": {"b": {"c": 1}}}, also=[1, 2]))


def test_rows_are_not_geolocated_to_the_importing_machine() -> None:
    plain = {"event": "E", "properties": {"distinct_id": "u", "time": T0}}
    assert json.loads(prepare_record(plain))["properties"]["ip"] == "0"
    nested = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "x": [1]}}
    assert json.loads(prepare_record(nested))["properties"]["ip"] == "0"  # the full path too
    located = {"event": "E", "properties": {"distinct_id": "u", "time": T0, "ip": "203.0.113.9"}}
    assert json.loads(prepare_record(located))["properties"]["ip"] == "203.0.113.9"


def test_a_batch_mixpanel_finds_too_large_is_split_not_lost(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(40))
    one = len(prepare_record(rows(1)[0]).encode())
    api.max_request_bytes = 12 * one  # batches of 40 are split down to parts that fit
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 0, out
    assert len(api.events()) == 40
    statuses = [r.status for r in api.requests]
    assert 413 in statuses and statuses[-1] == 200
    assert not (tmp_path / "events.jsonl.failed.jsonl").exists()


def test_only_the_records_still_due_are_retried(
    tmp_path: pathlib.Path, api: ScriptedStandIn
) -> None:
    data = write_jsonl(tmp_path / "events.jsonl", rows(4))
    answers: list[Answer] = [
        (413, {"error": "too large"}, {}),  # the batch of 4: split
        (200, {"code": 200, "status": "OK"}, {}),  # the first half arrives
        (429, {"error": "slow down"}, {}),  # the second half must wait
    ]

    def script(
        number: int, records: list[dict[str, t.Any]], owner: ScriptedStandIn
    ) -> Answer | None:
        if answers:
            status, payload, headers = answers.pop(0)
            if status == 200:
                owner.accept("imports", records)
            return status, payload, headers
        return None

    api.script = script
    code, out = run([write_ini(tmp_path, api), str(data), "--no-progress"])
    assert code == 0, out
    sizes = [len(r.records) for r in api.requests if r.records]
    assert sizes == [2]  # only the two that had not arrived were posted again
    assert len(api.events()) == 4


def test_the_import_without_tqdm_names_the_extra(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("")
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as without the extra
    with pytest.raises(MixpanelConfigurationError, match=r"pyramid_mixpanel\[import\]"):
        import_file(str(path), parse_settings({"mixpanel.token": "tok"}))
    assert not (tmp_path / "events.jsonl.failed.jsonl").exists()
