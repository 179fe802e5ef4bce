"""The loopback Mixpanel of the benchmarks, in a process of its own (and on its own CPU).

The real Mixpanel does not run on the sending machine, so the stand-in's work (parsing and
validating every record) must not take the CPU of what is measured — for the bare client and
for us alike.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import subprocess
import sys
import typing as t

__all__ = ["PIN", "Child", "Server", "server"]

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVER = """
import sys
from tests.loopback import MixpanelStandIn, _Server

_Server.request_queue_size = 64  # socketserver's backlog of 5 resets 20 concurrent connects
api = MixpanelStandIn()
print(api.base_url, flush=True)
for line in sys.stdin:  # each line asks how many unique events (or requests) arrived
    print(len(api.requests) if line.strip() == "requests" else len(api.events()), flush=True)
api.stop()
"""
# The stand-in gets CPU 0 and this process the others: the real Mixpanel does not run on the
# importing machine, so its work must not take our CPU (for the bare client and us alike).
PIN = hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2


class Child:
    """A loopback server in a child process of its own (pinned to CPU 0 where there are two or
    more), spoken to one command a line on its standard input, one number a line back.

    :param code: what ``python -c`` runs; it prints its base URL first.
    """

    def __init__(self, code: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, *args],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if PIN:
            os.sched_setaffinity(self.process.pid, {0})
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.base_url = self.stdout.readline().strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            self.process.kill()
            raise RuntimeError(f"the loopback server did not start: {self.base_url!r}")

    def _ask(self, command: str) -> int:
        self.stdin.write(command + "\n")
        self.stdin.flush()
        return int(self.stdout.readline())

    def close(self) -> None:
        self.stdin.close()  # the child stops at the end of its input
        self.process.wait(10)


class Server(Child):
    """A MixpanelStandIn in a child process."""

    def __init__(self) -> None:
        super().__init__(SERVER)

    def events(self) -> int:
        """How many unique events the stand-in holds."""
        return self._ask("count")

    def requests(self) -> int:
        """How many HTTP requests the stand-in answered."""
        return self._ask("requests")


@contextlib.contextmanager
def server() -> t.Iterator[Server]:
    running = Server()
    try:
        yield running
    finally:
        running.close()
