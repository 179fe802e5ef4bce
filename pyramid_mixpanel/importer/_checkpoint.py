"""The resumable checkpoint (``<input>.checkpoint``): where every row before is done."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import typing as t
from dataclasses import dataclass, field

from ._errors import CheckpointError, clipped, shown

__all__ = ["CHECKPOINT_EVERY", "Checkpoint", "Done", "State", "input_identity"]

#: How much of the input identifies it in the checkpoint, with its size.
HEAD_BYTES = 1 << 20
#: Seconds between checkpoint writes while batches complete.
CHECKPOINT_EVERY = 0.5
#: A checkpoint is a few hundred bytes: a file larger than this is not one (and is not read).
MAX_CHECKPOINT_BYTES = 1 << 16
# What to do about a damaged checkpoint.
FIX = "delete it, or run with --restart (restart=True), to start over from the first line"

Done = tuple[int, int, int]  # (line, offset, rows) of the input done up to


@dataclass
class State:
    """Checkpoint bookkeeping: the contiguous prefix of finished batches."""

    done: Done
    ends: dict[int, Done] = field(default_factory=dict)
    finished: dict[int, bool] = field(default_factory=dict)
    next_seq: int = 0

    def settle(self, seq: int, finished: bool) -> bool:
        """Mark batch ``seq`` settled (``finished``: not to be sent again); True if done moved."""
        self.finished[seq] = finished
        moved = False
        while self.finished.get(self.next_seq):
            del self.finished[self.next_seq]
            self.done = self.ends.pop(self.next_seq)
            self.next_seq += 1
            moved = True
        return moved


def input_identity(file: t.BinaryIO) -> tuple[int, dict[str, object]]:
    """The input's size, and what identifies it in the checkpoint: its size and head's hash."""
    size = os.fstat(file.fileno()).st_size
    head = hashlib.sha256(file.read(HEAD_BYTES)).hexdigest()
    file.seek(0)
    return size, {"size": size, "head_sha256": head}


class Checkpoint:
    """Load and save the checkpoint of the input ``name`` (notices go to ``out``).

    A checkpoint that cannot be read, or does not hold a place in ``file`` (the input, open),
    raises :class:`CheckpointError`: resuming from a guess could skip rows, and starting over
    unasked could re-send a whole file, so the person running the import decides.
    """

    def __init__(
        self,
        path: str,
        name: str,
        identity: dict[str, object],
        out: t.TextIO,
        file: t.BinaryIO,
    ) -> None:
        self.path = path
        self.name = name
        self.identity = identity
        self.out = out
        self.file = file

    def load(self, start: tuple[int, int]) -> Done | None:
        """Where an earlier run of the unchanged input got to, or ``None`` to start over.

        ``start``: the line and offset of the input's first row (after a CSV header).
        """
        path = self.path
        try:
            with open(path, "rb") as file:
                raw = file.read(MAX_CHECKPOINT_BYTES + 1)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            raise CheckpointError(
                f"the checkpoint {path} is a directory, not a file: move it out of the way (the"
                " import writes its checkpoint there)"
            ) from None
        except OSError as exc:
            raise CheckpointError(
                f"cannot read the checkpoint {path} ({exc.strerror or exc}): make it readable,"
                f" or {FIX}"
            ) from None
        data = self._parse(raw)
        identity = {"size": data["size"], "head_sha256": data["head_sha256"]}
        if identity != self.identity:
            self._say(
                f"{self.name} changed since {os.path.basename(path)} was written: starting"
                " from the first line"
            )
            return None
        done = (data["line"], data["offset"], data["rows"])
        self._check(done, start)
        self._say(
            f"resuming {self.name} after line {done[0]:,}: {done[2]:,} row(s) were done by an"
            " earlier run (--restart starts over)"
        )
        return done

    def _parse(self, raw: bytes) -> dict[str, t.Any]:
        """The checkpoint's fields, each of the right type, or raise :class:`CheckpointError`."""
        if len(raw) > MAX_CHECKPOINT_BYTES:
            raise self._damaged(f"over {MAX_CHECKPOINT_BYTES:,} bytes: not a checkpoint")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise self._damaged(f"not JSON: {clipped(str(exc), 120)}") from None
        if not isinstance(data, dict):
            raise self._damaged(f"{shown(data)} is not a JSON object")
        for key in ("line", "offset", "rows", "size"):
            if key not in data:
                raise self._damaged(f"it has no {key}")
            value = data[key]
            # JSON gives floats (1e400 is infinity, NaN), strings and booleans too.
            if type(value) is not int or value < 0:
                raise self._damaged(f"its {key} is {shown(value)}, not a whole number >= 0")
        if not isinstance(data.get("head_sha256"), str):
            raise self._damaged("it has no head_sha256 text")
        return data

    def _check(self, done: Done, start: tuple[int, int]) -> None:
        """Raise :class:`CheckpointError` unless ``done`` is a place in the input."""
        line, offset, rows = done
        size = t.cast(int, self.identity["size"])
        if offset > size:
            raise self._damaged(
                f"offset {offset:,} is past the end of {self.name} ({size:,} bytes)"
            )
        # Every line is at least one byte, and every row at least one line.
        if not 0 <= rows <= line - start[0] <= offset - start[1]:
            raise self._damaged(
                f"line {line:,}, offset {offset:,} and rows {rows:,} are no place in {self.name}"
            )
        if start[1] < offset < size:
            self.file.seek(offset - 1)
            if self.file.read(1) != b"\n":
                raise self._damaged(f"offset {offset:,} is not at the start of a line")

    def _damaged(self, what: str) -> CheckpointError:
        return CheckpointError(f"the checkpoint {self.path} is damaged ({what}): {FIX}")

    def save(self, done: Done, complete: bool) -> None:
        """Write the checkpoint (through a temporary file, so it is never half written)."""
        line, offset, rows = done
        data = {
            "input": self.name,
            **self.identity,
            "line": line,
            "offset": offset,
            "rows": rows,
            "complete": complete,
            "updated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        temporary = self.path + ".tmp"
        try:
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1)
            os.replace(temporary, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise CheckpointError(
                f"cannot write the checkpoint {self.path} ({exc.strerror or exc}): it must be a"
                " file in a folder this user can write to"
            ) from None

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
