"""``pmixpanel status / replay / dead`` against a real .ini file and a spool on disk."""

from __future__ import annotations

import io
import json
import pathlib
import sqlite3
import subprocess
import sys
import time
import typing as t

import pytest

from pyramid_mixpanel.delivery.store import SqliteSpool
from pyramid_mixpanel.delivery.store.journal import Journal
from pyramid_mixpanel.runtime import RUNTIME_KEY, Runtime
from pyramid_mixpanel.scripts import pmixpanel
from pyramid_mixpanel.scripts.pmixpanel import PMixpanelCommand, _describe, main

from .ini import LOGGING, app  # noqa: F401  # app: the .ini files name it here
from .loopback import MixpanelStandIn

INI = (
    """\
[app:main]
use = call:tests.test_pmixpanel:app
mixpanel.token = {token}
mixpanel.api_host = {api_host}
mixpanel.read_timeout = 0.5
mixpanel.delivery = {delivery}
mixpanel.spool_path = {spool}
mixpanel.flush_interval = 0.05

"""
    + LOGGING
)


@pytest.fixture
def api() -> t.Iterator[MixpanelStandIn]:
    with MixpanelStandIn() as server:
        yield server


def write_ini(
    tmp_path: pathlib.Path,
    api: MixpanelStandIn,
    token: str = "tok",
    delivery: str = "background",
) -> str:
    spool = tmp_path / "spool.db"
    ini = tmp_path / "app.ini"
    text = INI.format(token=token, delivery=delivery, spool=spool, api_host=api.base_url)
    if delivery != "background":
        text = text.replace(f"mixpanel.spool_path = {spool}\n", "")
    ini.write_text(text)
    return str(ini)


def run(argv: list[str]) -> tuple[int, str, Runtime | None]:
    out = io.StringIO()
    command = PMixpanelCommand(["pmixpanel", *argv], out)
    seen: dict[str, Runtime] = {}
    real_bootstrap = PMixpanelCommand.bootstrap

    def bootstrap(uri: str, options: dict[str, str] | None = None) -> t.Any:
        env = real_bootstrap(uri, options=options)
        runtime: Runtime = env["registry"][RUNTIME_KEY]
        seen["runtime"] = runtime
        return env

    command.bootstrap = bootstrap  # the documented seam
    code = command.run()
    return code, out.getvalue(), seen.get("runtime")


def fill_spool(tmp_path: pathlib.Path, count: int) -> SqliteSpool:
    spool = SqliteSpool(str(tmp_path / "spool.db"), 10_000, 10**8)
    now = int(time.time())
    spool.put(
        [
            (
                "events",
                '{"event":"Page Viewed","properties":'
                f'{{"time":{now},"distinct_id":"u","$insert_id":"i{i}"}}}}',
            )
            for i in range(count)
        ]
    )
    return spool


def test_status(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    fill_spool(tmp_path, 3)
    code, out, _ = run(["status", ini])
    assert code == 0
    assert "spool.db" in out
    assert "pending: 3" in out
    assert "dead letters: 0" in out


def test_replay_sends_everything_with_progress(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 2500)
    api.set_mode("up")
    code, out, _ = run(["replay", ini, "--timeout", "20"])
    assert code == 0, out
    assert "left 0" in out
    assert "2500/2500" in out  # the progress bar
    assert spool.pending() == 0
    assert len(api.events()) == 2500  # through /import, as every event


def test_replay_sends_what_a_killed_process_left_in_its_journal(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 2)
    orphan = Journal(spool)
    now = int(time.time())
    body = f'{{"event":"A","properties":{{"time":{now},"distinct_id":"u","$insert_id":"j1"}}}}'
    orphan.append([("events", body)])
    orphan.after_fork()  # its process is gone, its journal on disk
    code, out, _ = run(["replay", ini, "--timeout", "20"])
    assert code == 0, out
    assert "sent 3" in out and "left 0" in out


def test_replay_without_tqdm_prints_the_summary_alone(
    tmp_path: pathlib.Path, api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    ini = write_ini(tmp_path, api)
    fill_spool(tmp_path, 3)
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as without the import/metrics extras
    code, out, _ = run(["replay", ini, "--timeout", "20"])
    assert code == 0, out
    assert out.splitlines() == ["mixpanel: sent 3, retried 0, dead 0, left 0"]


def test_replay_gives_up_at_the_timeout(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    fill_spool(tmp_path, 1)
    code, out, _ = run(["replay", ini, "--timeout", "0.3"])
    assert code == 1
    assert "left 1" in out


def test_dead_lists_and_requeues(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 2)
    batch = spool.claim("events", 10**10, 10, 10**6)
    assert batch is not None
    spool.bury(batch, "HTTP 400: 'time' is missing")
    code, out, _ = run(["dead", ini])
    assert code == 0
    assert "event 'Page Viewed'" in out
    assert "HTTP 400: 'time' is missing" in out
    first = int(out.split("\t", 1)[0])
    code, out, _ = run(["dead", ini, "--requeue", str(first)])
    assert "requeued 1 dead letter(s)" in out
    code, out, _ = run(["dead", ini, "--requeue"])
    assert "requeued 1 dead letter(s)" in out
    code, out, _ = run(["dead", ini])
    assert "no dead letters" in out
    assert spool.pending() == 2


def test_testing_mode_and_sync_delivery_are_refused(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    code, out, _ = run(["status", write_ini(tmp_path, api, token="false")])
    assert code == 1
    assert "testing mode" in out
    code, out, _ = run(["status", write_ini(tmp_path, api, delivery="sync")])
    assert code == 1
    assert "mixpanel.delivery is 'sync'" in out


def test_status_as_json_for_scripts(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 3)
    now = time.time()
    with sqlite3.connect(spool.path) as db:
        db.execute("INSERT INTO senders VALUES (?, ?, ?, ?, ?)", ("web-1", 4242, now - 30, "", now))
    code, out, _ = run(["status", ini, "--json"])
    assert code == 0
    status = json.loads(out)
    assert status["setup"] == {
        "mode": "live",
        "delivery": "background",
        "queue": f"spool {spool.path} (commit: request)",
        "api_host": api.base_url,
        "region": "us",
        "release_policy": "commit",
        "customerio": "off",
    }
    lane = status["lanes"]["mixpanel"]
    assert lane["store"] == spool.path and lane["pending"] == 3 and lane["dead_letters"] == 0
    # 0, or a retry's delay when this command's own sender already tried the stand-in (down).
    assert lane["next_attempt_in"] >= 0
    assert [s["host"] for s in lane["senders"]] == ["web-1"]
    assert lane["senders"][0]["progress_seconds_ago"] == pytest.approx(30, abs=5)


def test_status_as_json_of_a_retry_an_empty_spool_and_sync_delivery(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 1)
    batch = spool.claim("events", spool.clock(), 10, 10**6)
    assert batch is not None
    spool.retry(batch, spool.clock() + 60)
    code, out, _ = run(["status", ini, "--json"])
    assert json.loads(out)["lanes"]["mixpanel"]["next_attempt_in"] == pytest.approx(60, abs=5)
    spool.ack(batch)
    code, out, _ = run(["status", ini, "--json"])
    assert json.loads(out)["lanes"]["mixpanel"]["next_attempt_in"] == 0
    code, out, _ = run(["status", write_ini(tmp_path, api, delivery="sync"), "--json"])
    assert code == 1
    assert json.loads(out)["lanes"] == {}


def test_the_token_from_the_environment_in_the_ini(
    tmp_path: pathlib.Path, api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # docs/settings.md, "Secrets from the environment".
    ini = write_ini(tmp_path, api, token="env:PMIXPANEL_TEST_TOKEN")
    monkeypatch.setenv("PMIXPANEL_TEST_TOKEN", "tok-from-the-environment")
    code, out, runtime = run(["status", ini, "--json"])
    assert code == 0 and json.loads(out)["setup"]["mode"] == "live"
    assert runtime is not None and runtime.settings.token == "tok-from-the-environment"
    assert "tok-from-the-environment" not in out
    monkeypatch.setenv("PMIXPANEL_TEST_TOKEN", "false")
    code, out, _ = run(["status", ini, "--json"])
    assert json.loads(out)["setup"]["reason"] == "mixpanel.token = false"


def test_status_as_json_in_testing_mode_says_why(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    code, out, _ = run(["status", write_ini(tmp_path, api, token="false"), "--json"])
    assert code == 1
    assert json.loads(out) == {
        "setup": {
            "mode": "testing",
            "reason": "mixpanel.token = false",
            "release_policy": "commit",
        },
        "lanes": {},
    }


def test_status_shows_a_pending_retry(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 1)
    batch = spool.claim("events", 0, 10, 10**6)
    assert batch is not None
    spool.retry(batch, time.time() + 120)  # within any backoff: a retry, not a clock step
    code, out, _ = run(["status", ini, "unused=var"])
    assert code == 0
    assert "next attempt in:" in out


def test_describe_never_shows_properties() -> None:
    assert _describe('{"event":"X","properties":{"$email":"a@b"}}') == "event 'X'"
    assert _describe('{"$distinct_id":"42","$set":{"$email":"a@b"}}') == "$distinct_id '42'"
    assert _describe('{"customer_id":"42","data":{}}') == "customer_id '42'"
    assert _describe('{"other":1}') == "(message)"
    assert _describe("not json") == "(unreadable)"


def test_main_and_the_console_script(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, api: MixpanelStandIn
) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    fill_spool(tmp_path, 1)
    out = io.StringIO()
    assert main(["pmixpanel", "status", ini], out) == 0
    assert "pending: 1" in out.getvalue()
    monkeypatch.setattr(sys, "argv", ["pmixpanel", "status", ini])
    monkeypatch.setattr(sys, "stdout", out)
    assert pmixpanel.main() == 0
    done = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "pmixpanel"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "status" in done.stdout and "replay" in done.stdout


def test_status_of_messages_due_now(tmp_path: pathlib.Path, api: MixpanelStandIn) -> None:
    api.set_mode("down")
    ini = write_ini(tmp_path, api)
    code, out, _ = run(["status", ini])
    assert code == 0
    assert "pending: 0" in out
    assert "next attempt" not in out


def test_dead_letters_of_a_lane_the_app_does_not_have(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    code, out, _ = run(["dead", write_ini(tmp_path, api), "--lane", "customerio"])
    assert (code, out) == (1, "customerio is not configured in this app.\n")


def test_status_shows_when_each_sender_last_made_progress(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    ini = write_ini(tmp_path, api)
    spool = fill_spool(tmp_path, 0)
    now = time.time()
    with sqlite3.connect(spool.path) as db:  # what the app's own senders recorded
        db.execute(
            "INSERT INTO senders VALUES (?, ?, ?, ?, ?)",
            ("web-1", 4242, now - 300, "OperationalError: database is locked", now),
        )
    code, out, _ = run(["status", ini])
    assert code == 0
    assert "sender web-1:4242: progress 300s ago (last error: OperationalError" in out


# -- the operator's mistakes: one line, exit 2 ---------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ("mixpanel.read_timeout = inf", "mixpanel.read_timeout must be a finite number"),
        ("mixpanel.delivery = carrier-pigeon", "mixpanel.delivery"),
        ("mixpanel.spool_path = /nonexistent-dir/spool.db", "mixpanel.spool_path"),
    ],
)
def test_a_configuration_error_is_one_line_and_exit_2(
    tmp_path: pathlib.Path, api: MixpanelStandIn, setting: str, expected: str
) -> None:
    ini = pathlib.Path(write_ini(tmp_path, api))
    key = setting.split(" =", 1)[0]
    lines = [line for line in ini.read_text().splitlines() if not line.startswith(key + " ")]
    lines.insert(lines.index("[loggers]"), setting)
    ini.write_text("\n".join(lines) + "\n")
    code, out, _ = run(["status", str(ini)])
    assert code == 2
    assert out.startswith("pmixpanel: ") and expected in out
    assert out.count("\n") == 1 and "Traceback" not in out


def test_a_missing_or_broken_config_file_is_one_line_and_exit_2(tmp_path: pathlib.Path) -> None:
    code, out, _ = run(["status", str(tmp_path / "nope.ini")])
    assert (code, out) == (
        2,
        f"pmixpanel: cannot read {tmp_path / 'nope.ini'}: No such file or directory\n",
    )
    broken = tmp_path / "broken.ini"
    broken.write_text("[app:main]\nuse = call:tests.no_such_module:app\n")
    code, out, _ = run(["status", str(broken)])
    assert code == 2
    assert out.startswith(f"pmixpanel: cannot load the app from {broken}: ModuleNotFoundError")


def test_a_bug_while_loading_keeps_its_traceback(
    tmp_path: pathlib.Path, api: MixpanelStandIn
) -> None:
    command = PMixpanelCommand(["pmixpanel", "status", write_ini(tmp_path, api)], io.StringIO())

    def bootstrap(uri: str, options: dict[str, str] | None = None) -> t.Any:
        raise ZeroDivisionError("a bug, not a mistake in the .ini file")

    command.bootstrap = bootstrap  # the documented seam
    with pytest.raises(ZeroDivisionError):
        command.run()


def test_an_input_error_in_a_sub_command_is_one_line_and_exit_2(
    tmp_path: pathlib.Path, api: MixpanelStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pyramid_mixpanel.exceptions import MixpanelError

    def refuse(*args: object) -> int:
        raise MixpanelError("the spool at /x is locked (token Zq8secret must never show)")

    monkeypatch.setattr(PMixpanelCommand, "dispatch", refuse)
    code, out, _ = run(["status", write_ini(tmp_path, api, token="Zq8secret")])
    assert (code, out) == (
        2,
        "pmixpanel status: the spool at /x is locked (token *** must never show)\n",
    )


def test_lexicon_is_a_sub_command_with_diff_and_push() -> None:
    parser = PMixpanelCommand.parser()
    args = parser.parse_args(["lexicon", "push", "app.ini", "--dry-run", "--prune"])
    assert (args.command, args.lexicon_command, args.dry_run, args.prune) == (
        "lexicon",
        "push",
        True,
        True,
    )
    args = parser.parse_args(["lexicon", "diff", "app.ini", "--format", "json"])
    assert (args.lexicon_command, args.format, args.config_uri) == ("diff", "json", "app.ini")
    with pytest.raises(SystemExit):
        parser.parse_args(["lexicon", "app.ini"])
