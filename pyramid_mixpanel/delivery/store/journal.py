"""The spool's journal: a request's messages are on file before its release returns.

With ``mixpanel.spool_commit = request`` a request hands its messages over by appending them to
a file of this process beside the spool — a copy of a few hundred bytes into the file's memory
mapping: no SQLite transaction, no system call, no lock shared with another process — and the
engine's spooler thread moves what was appended into the spool every few milliseconds, in one
transaction for all the requests of that moment (:meth:`Journal.move`).

What survives what:

* once :meth:`Journal.append` returns, the messages are in the operating system's hands (the
  mapping is the kernel's page cache of the file): a ``kill -9``, an out-of-memory kill or a
  crash of the process at any later moment loses none of them. The next process that uses the
  spool (:func:`adopt`) moves a dead process's journal into it;
* a power loss or a kernel crash can lose what was written in the last seconds (neither the
  journal nor the spool's WAL is fsynced per request: the trade SQLite's ``synchronous=NORMAL``
  makes too). A record it cut short or left a hole in is recognised and skipped, never
  half-delivered.

Nothing is moved twice: the move of a journal file and the note that it was moved are one
spool transaction, and a file noted as moved is only deleted, never read again.

Files: ``<spool>.journal.<lane>.<process token>.<number>``, allocated (1 MiB, or a request's
size) and mapped when made, so a full disk is an error then, never a ``SIGBUS`` later; the next
file is started when one is full or moved. While a process owns a file it holds an exclusive
``flock`` on it; the kernel releases it when the process dies, however it dies: that is how
another process knows the file is an orphan. A hand-over is a record, each message one line
(the endpoint, a tab, the JSON body) and the record closed by an empty line. JSON never needs a
raw line feed (inside strings it is escaped; between tokens it is whitespace, replaced by a
space) nor a raw NUL (written as its escape), so a record without its closing empty line was
cut short, and one with a NUL has a hole (the unused end of a file is zeros): both are skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import mmap
import os
import threading
import typing as t
import uuid

from . import SpoolError

if t.TYPE_CHECKING:
    from .spool import SqliteSpool

__all__ = ["Journal", "adopt", "parse"]

#: The size of a journal file (a request's messages that need more get a file of their own size).
#: Its blocks are allocated when it is made; it is deleted once its messages are in the spool.
FILE_SIZE = 1 << 20
#: Ends a file being created: such a file holds nothing yet, and :func:`adopt` removes it
#: when its process is gone.
NEW = ".new"


@dataclasses.dataclass
class _File:
    """A journal file of this process: locked, mapped, written up to ``end``."""

    name: str
    fd: int
    map: mmap.mmap
    end: int = 0

    def release(self) -> None:
        """Delete the file and give up its lock."""
        with contextlib.suppress(OSError):
            os.unlink(self.name)
        self.map.close()
        os.close(self.fd)


class Journal:
    """The journal of one spool lane in this process (see the module's docstring).

    :param spool: the spool the journal's messages are moved into.
    """

    def __init__(self, spool: SqliteSpool) -> None:
        self.spool = spool
        self.prefix = journal_prefix(spool)
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._lock = threading.Lock()
        # A token per process: file names never repeat, even when a pid does.
        self._token = uuid.uuid4().hex
        self._number = 0
        self._file: _File | None = None
        #: Messages and bytes appended and not yet moved into the spool.
        self.messages = 0
        self.bytes = 0
        # Files taken out of use and not moved yet (a move that failed puts its files back,
        # first in line); still locked by this process.
        self._unmoved: list[_File] = []
        # Moved and deleted: their notes in the spool are dropped with the next move.
        self._forget: list[str] = []
        # The spool's size after the last move, for the cap check of :meth:`append`.
        self._spooled = (0, 0)

    # -- the request side -------------------------------------------------------------------

    def append(self, messages: t.Sequence[tuple[str, str]]) -> int:
        """Write a request's messages to the journal; return how many the cap refused.

        The cap (``max_messages``/``max_bytes`` of the spool) is checked against the spool's
        size at the last move plus what this process appended since; the spool enforces it
        exactly when the messages are moved.

        :raises SpoolError: the journal cannot be written (full disk, no permission): the
            caller keeps the messages elsewhere.
        """
        spool = self.spool
        # Built before the lock is taken: other threads wait only for the copy.
        lines = [f"{endpoint}\t{body}" for endpoint, body in messages]
        text = "\n".join(lines)
        if text.count("\n") != len(lines) - 1 or "\0" in text:
            # A raw line feed in JSON is whitespace between tokens: a space does; a raw NUL is
            # never valid JSON, its escape is what was meant (see the module's docstring).
            lines = [line.replace("\n", " ").replace("\0", "\\u0000") for line in lines]
            text = "\n".join(lines)
        data = (text + "\n\n").encode()
        with self._lock:
            room = spool.max_messages - self._spooled[0] - self.messages
            room_bytes = spool.max_bytes - self._spooled[1] - self.bytes
            if len(lines) > room or len(text) > room_bytes:
                # Near the cap: message by message, by the bodies' sizes as the spool counts.
                kept: list[str] = []
                for line, (_, body) in zip(lines, messages, strict=True):
                    if len(kept) < room and len(body) <= room_bytes:
                        kept.append(line)
                        room_bytes -= len(body)
                if not kept:
                    return len(messages)
                lines, text = kept, "\n".join(kept)
                data = (text + "\n\n").encode()
            file = self._file
            if file is None or file.end + len(data) > len(file.map) or self._pid != os.getpid():
                file = self._next(len(data))
            # A copy into memory the kernel shares with the file: no system call, and the GIL
            # is kept (a write() would hand it to the sender or spooler at every request).
            file.map[file.end : file.end + len(data)] = data
            file.end += len(data)
            self.messages += len(lines)
            # The record's length: a little more than the bodies', so the check errs on the
            # safe side.
            self.bytes += len(text)
        return len(messages) - len(lines)

    def _next(self, size: int) -> _File:
        """Retire the current file and start the next one (big enough for ``size`` bytes).

        Locked before it gets its name (see :func:`adopt`); its blocks are allocated up front,
        so a full disk is an error here, never a ``SIGBUS`` when the mapping is written.

        :raises SpoolError: the file cannot be made (full disk, no permission).
        """
        if self._pid != os.getpid():
            self.after_fork()  # forked without the engine's at-fork hook
        self._retire()
        self._number += 1
        name = f"{self.prefix}{self._token}.{self._number}"
        size = max(FILE_SIZE, size)
        try:
            fd = os.open(name + NEW, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise SpoolError(self.prefix, f"journal cannot be written: {exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, size)
            mapped = mmap.mmap(fd, size)
            os.rename(name + NEW, name)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name + NEW)
            raise SpoolError(self.prefix, f"journal cannot be written: {exc}") from None
        self._file = _File(name, fd, mapped)
        return self._file

    def _retire(self) -> None:
        """Take the current file out of use; it is moved with the next :meth:`move`."""
        if self._file is not None:
            self._unmoved.append(self._file)
            self._file = None

    # -- the spooler's side -----------------------------------------------------------------

    def move(self) -> tuple[int, int]:
        """Move what was appended into the spool, in one transaction per file.

        Returns ``(moved, refused)``: messages now in the spool, and those the spool's cap
        refused (counted and logged as dropped by the engine).

        :raises SpoolError: the spool could not take them (locked, full disk): they stay in
            the journal, moved by the next call.
        """
        if self._pid != os.getpid():
            self.after_fork()  # a forked child: the parent moves its own journal
        with self._lock:
            if self.messages:
                self._retire()
            # Every message counted so far is in these files; what requests append from now
            # on is moved next time.
            files, self._unmoved = self._unmoved, []
            pending, self.messages = self.messages, 0
            pending_bytes, self.bytes = self.bytes, 0
        moved = refused = 0
        try:
            while files:
                file = files[0]
                base = os.path.basename(file.name)
                moved_here, refused_here, self._spooled = self.spool.put_journal(
                    base, parse(file.map[: file.end]), self._forget
                )
                self._forget = [base]
                moved += moved_here
                refused += refused_here
                files.pop(0)
                file.release()
        except BaseException:
            with self._lock:  # still waiting, first in line: counted again for the cap and close()
                self._unmoved[:0] = files
                self.messages += pending - moved - refused
                self.bytes += pending_bytes
            raise
        return moved, refused

    def close(self) -> None:
        """Release this process's current file when it holds nothing (it is deleted)."""
        with self._lock:
            if self._file is not None and not self._file.end and self._pid == os.getpid():
                self._file.release()
                self._file = None

    def after_fork(self) -> None:
        """In a forked child: files of its own (the parent keeps, and moves, its files)."""
        inherited = self._unmoved + ([self._file] if self._file is not None else [])
        for file in inherited:
            # Closing the child's copy keeps the parent's lock: a flock belongs to the open
            # file, which the parent still has open. Never unlock or delete it here.
            file.map.close()
            os.close(file.fd)
        self._reset()


def journal_prefix(spool: SqliteSpool) -> str:
    """The start of the journal file names of a spool's lane."""
    # Not SQLite's own "<file>-journal" of rollback mode: a distinct name an operator can tell.
    return f"{spool.path}.journal.{spool.lane}."


def parse(data: bytes) -> list[tuple[str, str]]:
    """The messages of every whole record of a journal file (see the module's docstring)."""
    messages = []
    # The last piece is what follows the last whole record: the file's unused (zeroed) end, or
    # a record cut short.
    for record in data.decode("utf-8", "replace").split("\n\n")[:-1]:
        if "\0" in record:
            continue  # a hole a power loss left: the record is not whole
        for line in record.split("\n"):
            endpoint, tab, body = line.partition("\t")
            if tab:
                messages.append((endpoint, body))
    return messages


def adopt(spool: SqliteSpool) -> tuple[int, int]:
    """Move the journals of processes that are gone into the spool.

    Returns ``(moved, refused)``: messages now in the spool, and those its cap refused.

    A file whose lock can be taken has no living owner. Its records go into the spool in one
    transaction that also notes the file as moved, so two processes adopting the same file
    at once move it once.

    :raises SpoolError: the spool could not take them: the files stay for a later call.
    """
    moved = refused = 0
    for name in sorted(glob.glob(glob.escape(journal_prefix(spool)) + "*")):
        try:
            fd = os.open(name, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # moved meanwhile by its owner or another adopter
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process lives and owns it
            if not name.endswith(NEW):
                with open(fd, "rb", closefd=False) as file:
                    records = parse(file.read())
                taken, left, _ = spool.put_journal(os.path.basename(name), records, ())
                moved, refused = moved + taken, refused + left
            with contextlib.suppress(OSError):
                os.unlink(name)
        finally:
            os.close(fd)
    return moved, refused
