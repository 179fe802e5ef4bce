"""The resumable checkpoint (``<input>.checkpoint``): where every row before is done."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import typing as t
from dataclasses import dataclass, field

__all__ = ["CHECKPOINT_EVERY", "Checkpoint", "Done", "State", "input_identity"]

#: How much of the input identifies it in the checkpoint, with its size.
HEAD_BYTES = 1 << 20
#: Seconds between checkpoint writes while batches complete.
CHECKPOINT_EVERY = 0.5

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
    """Load and save the checkpoint of the input ``name`` (notices go to ``out``)."""

    def __init__(self, path: str, name: str, identity: dict[str, object], out: t.TextIO) -> None:
        self.path = path
        self.name = name
        self.identity = identity
        self.out = out

    def load(self) -> Done | None:
        """Where an earlier run of the unchanged input got to, or ``None`` to start over."""
        path = self.path
        try:
            with open(path, encoding="utf-8") as file:
                data = json.load(file)
            done = (int(data["line"]), int(data["offset"]), int(data["rows"]))
            identity = {"size": data["size"], "head_sha256": data["head_sha256"]}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            self._say(f"{os.path.basename(path)} is unreadable: starting from the first line")
            return None
        if identity != self.identity:
            self._say(
                f"{self.name} changed since {os.path.basename(path)} was written: starting"
                " from the first line"
            )
            return None
        self._say(
            f"resuming {self.name} after line {done[0]:,}: {done[2]:,} row(s) were done by an"
            " earlier run (--restart starts over)"
        )
        return done

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
        with open(temporary, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=1)
        os.replace(temporary, self.path)

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
