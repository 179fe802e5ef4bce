"""The spool's journal (``mixpanel.spool_commit = request``): on file before release returns.

What it promises, each shown here: a ``kill -9`` after a hand-over loses nothing (a real child
process is killed and the next one adopts its journal), nothing is moved twice (not even when
a process dies between the move's commit and the file's deletion), a record cut short or with a
hole is skipped, the cap is kept, and a journal that cannot be written costs the request
nothing (the engine keeps the messages in memory).
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import typing as t

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyramid_mixpanel.delivery.engine import BackgroundEngine
from pyramid_mixpanel.delivery.store import SpoolError, SqliteSpool
from pyramid_mixpanel.delivery.store import journal as journal_module
from pyramid_mixpanel.delivery.store.journal import Journal, adopt, parse
from pyramid_mixpanel.log import Log
from tests.test_delivery_engine import ScriptedTransport, make_engine, wait_for

EVENT = '{"event":"A","properties":{"n":1}}'
PERSON = '{"$distinct_id":"u","$set":{"a":1}}'


def spool_at(folder: pathlib.Path, **caps: int) -> SqliteSpool:
    return SqliteSpool(str(folder / "s.db"), caps.get("messages", 1000), caps.get("bytes", 10**6))


def journal_files(spool: SqliteSpool) -> list[str]:
    return sorted(glob.glob(glob.escape(spool.path) + ".journal.*"))


def bodies(spool: SqliteSpool) -> list[tuple[str, str]]:
    batch = [spool.claim(e, spool.clock(), 100, 10**6) for e in spool.endpoints]
    return [(b.endpoint, body) for b in batch if b is not None for body in b.bodies]


# -- the journal itself ----------------------------------------------------------------------


def test_appended_messages_are_on_file_and_moved_into_the_spool_once(
    tmp_path: pathlib.Path,
) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    assert journal.append([("events", EVENT), ("people", PERSON)]) == 0
    (name,) = journal_files(spool)
    assert journal.messages == 2
    with open(name, "rb") as file:  # on file, before any move
        assert parse(file.read()) == [("events", EVENT), ("people", PERSON)]
    assert spool.pending() == 0
    assert journal.move() == (2, 0)
    assert journal_files(spool) == []  # moved: deleted
    assert journal.messages == 0
    assert sorted(bodies(spool)) == [("events", EVENT), ("people", PERSON)]
    assert journal.move() == (0, 0)  # nothing new: nothing done


def test_moved_files_are_forgotten_by_the_next_move(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    notes = "SELECT name FROM journals"
    journal.append([("events", EVENT)])
    journal.move()
    assert len(spool._db.execute(notes).fetchall()) == 1  # kept until the file is surely gone
    journal.append([("events", EVENT)])
    journal.move()
    assert len(spool._db.execute(notes).fetchall()) == 1  # the first note went with this move


def test_a_file_is_never_moved_twice(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", EVENT)])
    (name,) = journal_files(spool)
    # A process that died after the move's commit and before it deleted the file: the note
    # is in the spool, the file is still there.
    assert spool.put_journal(os.path.basename(name), [("events", EVENT)], ())[:2] == (1, 0)
    assert spool.put_journal(os.path.basename(name), [("events", EVENT)], ())[:2] == (0, 0)
    journal.after_fork()  # its owner is gone (its lock with it: see the killed child below)
    assert adopt(spool) == (0, 0)
    assert journal_files(spool) == []
    assert spool.pending() == 1


def test_a_killed_process_loses_nothing_and_the_next_one_adopts_its_journal(
    tmp_path: pathlib.Path,
) -> None:
    spool = spool_at(tmp_path)
    child = textwrap.dedent(
        f"""
        import signal
        from pyramid_mixpanel.delivery.store import SqliteSpool
        from pyramid_mixpanel.delivery.store.journal import Journal
        journal = Journal(SqliteSpool({spool.path!r}, 1000, 10**6))
        for n in range(50):
            journal.append([("events", '{{"n":%d}}' % n)])
        print("ready", flush=True)
        signal.pause()  # alive, holding its journal, until the test kills it
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, cwd=os.getcwd(), text=True
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline() == "ready\n"
        (name,) = journal_files(spool)
        assert adopt(spool) == (0, 0)  # its process lives and holds the file
        assert journal_files(spool) == [name]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert adopt(spool) == (50, 0)
    assert journal_files(spool) == []
    assert sorted(json.loads(body)["n"] for _, body in bodies(spool)) == list(range(50))


def test_records_cut_short_or_with_a_hole_are_skipped() -> None:
    whole = b"events\t{}\npeople\t{}\n\n"
    assert parse(whole) == [("events", "{}"), ("people", "{}")]
    assert parse(whole + b'events\t{"cut') == [("events", "{}"), ("people", "{}")]
    assert parse(whole + b"\0" * 100) == [("events", "{}"), ("people", "{}")]
    assert parse(b"events\t{\0\0}\n\n" + whole) == [("events", "{}"), ("people", "{}")]
    assert parse(b"no tab here\n\n") == []
    assert parse(b"") == []


def test_raw_line_feeds_and_nuls_cannot_break_a_record(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", '{\n"a":\n1}'), ("events", '{"b":"\0"}')])
    journal.move()
    assert sorted(body for _, body in bodies(spool)) == ['{ "a": 1}', '{"b":"\\u0000"}']


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["events", "people", "groups", "imports"]),
            st.text(max_size=60),
        ),
        min_size=1,
        max_size=5,
    ),
    st.binary(max_size=40),
)
def test_any_hand_over_reads_back_as_written_whatever_follows(
    messages: list[tuple[str, str]], tail: bytes
) -> None:
    """What a hand-over wrote reads back, followed by any torn or zeroed bytes."""
    written = "".join(f"{e}\t{body}\n" for e, body in messages) + "\n"
    expected = [(e, body) for e, body in messages]
    if any(ch in body for _, body in messages for ch in "\n\0"):
        return  # append rewrites these first (tested above)
    assert parse(written.encode() + tail.replace(b"\n", b"x")) == expected
    parse(tail)  # any bytes at all: parsed, never an exception


def test_the_cap_refuses_what_would_not_fit(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path, messages=3, bytes=10**6)
    journal = Journal(spool)
    assert journal.append([("events", EVENT)] * 2) == 0
    assert journal.append([("events", EVENT)] * 2) == 1  # one more fits
    assert journal.append([("events", EVENT)]) == 1  # none
    assert journal.move() == (3, 0)
    assert journal.append([("events", EVENT)]) == 1  # the spool holds 3: still full
    small = Journal(spool_at(tmp_path / "..", messages=100, bytes=len(EVENT) + 5))
    assert small.append([("events", EVENT), ("events", "{}")]) == 0  # by bodies' sizes
    assert small.append([("events", EVENT)]) == 1


def test_the_spools_own_cap_is_kept_when_several_processes_filled_it(
    tmp_path: pathlib.Path,
) -> None:
    spool = spool_at(tmp_path, messages=2)
    journal = Journal(spool)
    journal.append([("events", EVENT)] * 2)
    spool.put([("events", EVENT)])  # another process was quicker
    assert journal.move() == (1, 1)


def test_a_hand_over_bigger_than_a_file_gets_a_file_of_its_own(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FILE_SIZE", 64)
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    big = '{"a":"' + "x" * 200 + '"}'
    journal.append([("events", EVENT)])
    journal.append([("events", big)])  # the first file is full: a second, of its size
    journal.append([("events", EVENT)])  # and a third
    assert len(journal_files(spool)) == 3
    assert journal.move() == (3, 0)
    assert [body for _, body in bodies(spool)] == [EVENT, big, EVENT]


def test_a_journal_that_cannot_be_made_is_an_error_the_caller_handles(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)

    def full(fd: int, offset: int, size: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(SpoolError, match="journal cannot be written: .*No space left"):
        journal.append([("events", EVENT)])
    assert journal_files(spool) == []  # nothing half-made left behind
    assert journal.messages == 0
    monkeypatch.undo()
    journal.prefix = str(tmp_path / "missing" / "j.")
    with pytest.raises(SpoolError, match="No such file or directory"):
        journal.append([("events", EVENT)])


def test_a_move_the_spool_refuses_is_kept_for_the_next(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", EVENT)])
    real = spool.put_journal
    calls = [SpoolError(spool.path, "is locked by another process")]

    def put_journal(*args: t.Any) -> t.Any:
        if calls:
            raise calls.pop()
        return real(*args)

    monkeypatch.setattr(spool, "put_journal", put_journal)
    with pytest.raises(SpoolError, match="locked"):
        journal.move()
    assert journal.messages == 1  # still waiting, still counted
    journal.append([("people", PERSON)])
    assert len(journal_files(spool)) == 2
    assert journal.move() == (2, 0)  # the older file first, then the new one
    assert journal_files(spool) == []


def test_what_requests_append_during_a_move_waits_for_the_next(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(journal_module, "FILE_SIZE", 64)  # a file per hand-over
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", EVENT)])
    real = spool.put_journal

    def put_journal(*args: t.Any) -> t.Any:
        # Requests hand over while the spooler moves: the second fills a file and retires it.
        journal.append([("events", EVENT)])
        journal.append([("events", EVENT)])
        monkeypatch.setattr(spool, "put_journal", real)
        return real(*args)

    monkeypatch.setattr(spool, "put_journal", put_journal)
    assert journal.move() == (1, 0)
    assert journal.messages == 2  # counted, waiting
    assert journal.move() == (2, 0)
    assert journal.messages == 0 and journal_files(spool) == []


def test_close_deletes_an_empty_file_and_keeps_one_that_holds_messages(
    tmp_path: pathlib.Path,
) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.close()  # no file yet
    journal.append([("events", EVENT)])
    journal.close()  # holds a message: kept, for the next process
    assert len(journal_files(spool)) == 1
    journal.move()
    journal.append([("events", EVENT)])
    assert journal._file is not None
    journal._file.end = 0  # as if its last record were moved
    journal.close()
    assert journal_files(spool) == []


def test_a_forked_child_writes_files_of_its_own(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", '{"who":"parent"}')])
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover  # the child's coverage is not collected
        spool.after_fork()
        journal.after_fork()
        journal.append([("events", '{"who":"child"}')])
        ok = journal.move() == (1, 0)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert journal.move() == (1, 0)
    assert sorted(body for _, body in bodies(spool)) == ['{"who":"child"}', '{"who":"parent"}']


def test_after_fork_leaves_the_parents_files_to_the_parent(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal.append([("events", EVENT)])
    journal._retire()  # one waiting to be moved, one current
    journal.append([("events", EVENT)])
    # What a child runs; here in this process, so it is measured. The files stay on disk.
    journal.after_fork()
    assert len(journal_files(spool)) == 2
    assert journal.messages == 0
    assert adopt(spool) == (2, 0)  # their owner's copies closed: orphans now


def test_a_pid_change_without_the_fork_hook_starts_afresh(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    journal = Journal(spool)
    journal._pid = -1  # what a forked child sees
    assert journal.move() == (0, 0)
    journal._pid = -1
    journal.append([("events", EVENT)])
    assert journal._pid == os.getpid()
    journal._pid = -1
    journal.close()  # not this process's file to delete
    assert len(journal_files(spool)) == 1


def test_adopt_skips_vanished_files_and_removes_half_made_ones(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = spool_at(tmp_path)
    half_made = journal_module.journal_prefix(spool) + "dead.1" + journal_module.NEW
    pathlib.Path(half_made).touch()
    vanished = journal_module.journal_prefix(spool) + "gone.1"
    real_glob = glob.glob
    monkeypatch.setattr(glob, "glob", lambda pattern: [vanished, *real_glob(pattern)])
    assert adopt(spool) == (0, 0)
    assert not os.path.exists(half_made)


# -- the engine with a journal ----------------------------------------------------------------


def journal_engine(tmp_path: pathlib.Path, transport: ScriptedTransport) -> BackgroundEngine:
    spool = spool_at(tmp_path)
    return make_engine(transport, store=spool, spooled=True, journal=Journal(spool))


def test_hand_overs_go_to_the_journal_and_the_spooler_moves_them(
    tmp_path: pathlib.Path,
) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()  # nothing is sent until the test says so
    engine = journal_engine(tmp_path, transport)
    spool = t.cast(SqliteSpool, engine.store)
    for n in range(20):
        engine.submit([("events", f'{{"n":{n}}}'), ("people", PERSON)])
    assert engine.stats["spooled"] == 40  # durable at once: on file
    wait_for(lambda: spool.pending() == 40)  # and in the spool soon after
    assert engine.health()["pending"] == 40
    transport.gate.set()
    wait_for(lambda: engine.stats["sent"] == 40)
    assert engine.close(1) == 0
    assert journal_files(spool) == []


def test_a_journal_that_fails_keeps_the_messages_in_memory(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    engine = journal_engine(tmp_path, ScriptedTransport())
    monkeypatch.setattr(
        os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full"))
    )
    with caplog.at_level(logging.ERROR, "pyramid_mixpanel"):
        assert engine.submit([("events", EVENT)]) == 0
    assert engine.stats["overflowed"] == 1
    assert "mixpanel.spool_unavailable" in caplog.text
    monkeypatch.undo()
    wait_for(lambda: engine.stats["sent"] == 1)  # from memory, through the spool
    engine.close(1)


def test_close_moves_the_journal_or_leaves_it_for_the_next_process(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    transport = ScriptedTransport()
    transport.gate = threading.Event()
    engine = journal_engine(tmp_path, transport)
    spool = t.cast(SqliteSpool, engine.store)
    journal = t.cast(Journal, engine.journal)
    monkeypatch.setattr(engine, "_spooler_wait", lambda: 3600.0)  # the spooler never moves
    engine.submit([("events", EVENT)])
    monkeypatch.setattr(
        journal, "move", lambda: (_ for _ in ()).throw(SpoolError(spool.path, "is locked"))
    )
    transport.gate.set()
    with caplog.at_level(logging.INFO, "pyramid_mixpanel"):
        assert engine.close(0.2) == 1
    assert "mixpanel.spool_unavailable" in caplog.text and "is locked" in caplog.text
    assert "kept_in_spool=1 lost=0" in caplog.text
    assert len(journal_files(spool)) == 1  # still on file, locked until this process ends
    monkeypatch.undo()
    journal.after_fork()  # its owner "ends"
    later = journal_engine(tmp_path, ScriptedTransport())
    with caplog.at_level(logging.WARNING, "pyramid_mixpanel"):
        later.open()  # the next process: adopts it and sends it
        wait_for(lambda: later.stats["sent"] == 1)
    assert "mixpanel.journal_adopted moved=1" in caplog.text
    later.close(1)


@pytest.mark.parametrize("owner", ["gone", "this process"])
def test_messages_the_cap_refuses_when_moved_in_are_counted_as_dropped(
    owner: str, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = spool_at(tmp_path, messages=1)
    journal = Journal(spool)
    mine = owner == "this process"
    engine = make_engine(
        ScriptedTransport(), store=spool, spooled=True, journal=journal if mine else Journal(spool)
    )
    journal.append([("events", EVENT)])
    if not mine:
        journal.after_fork()  # its owner is gone: adopted, not moved
    spool.put([("events", EVENT)])  # meanwhile another process filled the spool
    with caplog.at_level(logging.WARNING, "pyramid_mixpanel"):
        if mine:
            assert engine._move_journal(journal) == 0
        else:
            engine.adopt_journals()
    assert engine.stats["dropped"] == 1
    assert "mixpanel.queue_full_dropped messages=1" in caplog.text
    engine.close(0.1)


def test_from_settings_gives_request_commits_a_journal(tmp_path: pathlib.Path) -> None:
    from pyramid_mixpanel.delivery import MixpanelTransport
    from pyramid_mixpanel.settings import parse_settings

    for commit, has_journal in (("request", True), ("group", False)):
        settings = parse_settings(
            {
                "mixpanel.token": "t",
                "mixpanel.spool_path": str(tmp_path / f"{commit}.db"),
                "mixpanel.spool_commit": commit,
            }
        )
        engine = BackgroundEngine.from_settings(
            MixpanelTransport.from_settings(settings), settings, Log()
        )
        assert (engine.journal is not None) is has_journal
        engine.adopt_journals()  # nothing to adopt, or no journal at all: nothing done
        assert engine._spooler_wait() == engine.flush_interval  # nothing to commit
        engine.close(0.1)


def test_a_spool_that_cannot_take_a_move_says_why(tmp_path: pathlib.Path) -> None:
    spool = spool_at(tmp_path)
    spool.close()
    with pytest.raises(SpoolError, match="cannot be written: Cannot operate on a closed"):
        spool.put_journal("j.1", [("events", EVENT)], ())


def test_the_engines_fork_hook_gives_the_child_a_journal_of_its_own(
    tmp_path: pathlib.Path,
) -> None:
    engine = journal_engine(tmp_path, ScriptedTransport())
    journal = t.cast(Journal, engine.journal)
    engine.submit([("events", EVENT)])
    wait_for(lambda: engine.stats["sent"] == 1)
    parent_token = journal._token
    parents = (engine._thread, engine._spooler)
    engine._after_fork_in_child()  # what the at-fork hook runs in a child, measured here
    assert journal._token != parent_token and journal._file is None
    engine.close(0.1)
    # The "parent's" threads, which this process still runs: stopped, not leaked (they read
    # the engine's events, the new ones now).
    *_, sender, spooler = parents
    for event in (engine._stop, engine._wake, engine._spool_wake, engine._full):
        event.set()
    for thread in (sender, spooler):
        assert thread is not None
        thread.join(5)
        assert not thread.is_alive()
