"""A fast loopback HTTP sink for the benchmarks, in a process of its own (and on its own CPU).

Why it exists: ``benchmarks/standin.py`` runs the validating Mixpanel stand-in, which checks
every record the way Mixpanel does and so takes about 20,000 events/s itself; set against it, a
benchmark of delivery measures the stand-in, not the client. This sink only counts: it decodes
each body (gzip, form, base64, JSON), counts the records and answers what each client expects,
so that the clients are what is measured. Nothing here checks a record: the strict rules live in
``tests/loopback.py``.

The server is asyncio with a minimal HTTP/1.1 parser (request line, headers, ``Content-Length``
or ``Transfer-Encoding: chunked`` body, ``Expect: 100-continue``, keep-alive), in a child
process pinned to CPU 0 where the machine has two CPUs or more (``standin.PIN``). Any path and
method is answered:

- ``/track``, ``/engage``, ``/groups``: ``{"status": 1, "error": null}`` when ``verbose=1`` is in
  the query or the form, else ``1`` (Mixpanel's answers);
- ``/import``: ``{"code": 200, "num_records_imported": N, "status": "OK"}``;
- anything else (PostHog ``/batch/``, Segment ``/v1/batch``): ``{"status": "Ok"}``.

Gzip is decoded on any path here, because PostHog and Segment post to their own paths; what
Mixpanel accepts (gzip on ``/track`` and ``/import`` only, reference/track-event and
../shared/mixpanel-rules.md) is enforced by the stand-in of the tests, not by this counter.

Records counted per body: a JSON list, its length; an object with a ``batch`` list (PostHog,
Segment), the batch's length; any other object, one. A body that cannot be decoded is answered
400 and counted in ``errors``. ``bytes`` counts request bodies as sent (compressed when they were;
chunk framing and headers not included).

The parent speaks to the child through its standard input, one command a line, each answered
with one number: ``events``, ``requests``, ``bytes``, ``errors``, ``reset`` (zeroes all, answers
0) and ``wait N SECONDS`` (answers the events held once there are N, or when SECONDS pass: the
benchmarks learn the moment the last event arrived without polling).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import gzip
import sys
import typing as t
import urllib.parse
import zlib

import orjson

from benchmarks.standin import Child

__all__ = ["Server", "server"]

CODE = "from benchmarks.sink import child; child()"
COUNTERS = ("events", "requests", "bytes", "errors")
MIXPANEL = ("/track", "/engage", "/groups")
REASONS = {200: b"OK", 400: b"Bad Request"}
CONNECTION = {True: b"keep-alive", False: b"close"}
# Everything a broken body can raise on its way through gzip, the form, base64 and orjson
# (UnicodeDecodeError, binascii.Error and orjson.JSONDecodeError are ValueErrors,
# gzip.BadGzipFile an OSError).
BROKEN = (ValueError, KeyError, OSError, EOFError, zlib.error)


class Server(Child):
    """The sink in a child process; each method asks it through its standard input."""

    def __init__(self, port: int = 0) -> None:
        super().__init__(CODE, str(port))

    def events(self) -> int:
        """Records received since the start (or the last reset)."""
        return self._ask("events")

    def requests(self) -> int:
        """HTTP requests answered."""
        return self._ask("requests")

    def wire_bytes(self) -> int:
        """Request body bytes as sent (compressed when they were)."""
        return self._ask("bytes")

    def errors(self) -> int:
        """Requests answered 400 because their body could not be decoded."""
        return self._ask("errors")

    def reset(self) -> None:
        self._ask("reset")

    def wait_for(self, count: int, timeout: float) -> int:
        """Block until the sink holds ``count`` events or ``timeout`` seconds pass: how many."""
        return self._ask(f"wait {count} {timeout}")


@contextlib.contextmanager
def server(port: int = 0) -> t.Iterator[Server]:
    """A sink on ``port`` (any free one by default), stopped at the end of the block."""
    running = Server(port)
    try:
        yield running
    finally:
        running.close()


# -- the child process -----------------------------------------------------------------------


class Sink:
    """Counters, and the waiters of ``wait`` commands; one event loop, so no locks."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.waiters: list[tuple[int, asyncio.Future[None]]] = []
        # Open connections, closed before the loop ends: asyncio.run would cancel their tasks,
        # and a cancelled connection task makes asyncio log a spurious traceback.
        self.connections: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    def received(self, records: int) -> None:
        self.counts["events"] += records
        if self.waiters:
            held = self.counts["events"]
            for count, future in self.waiters:
                if held >= count and not future.done():
                    future.set_result(None)

    def answer(self, method: str, target: str, headers: dict[str, str], body: bytes) -> bytes:
        """Count one request; its status line's code and JSON answer, as ``b"200 ...json"``."""
        self.counts["requests"] += 1
        self.counts["bytes"] += len(body)
        path, _, query = target.partition("?")
        if method != "POST":
            return b"200 {}"
        try:
            records, form = decode(headers, body)
        except BROKEN:
            self.counts["errors"] += 1
            return b'400 {"status":0,"error":"malformed body"}'
        self.received(records)
        if path.startswith("/import"):
            return b"200 " + orjson.dumps(
                {"code": 200, "num_records_imported": records, "status": "OK"}
            )
        if path.startswith(MIXPANEL):
            verbose = urllib.parse.parse_qs(query).get("verbose", []) + form.get("verbose", [])
            return b'200 {"status":1,"error":null}' if "1" in verbose else b"200 1"
        return b'200 {"status":"Ok"}'


def decode(headers: dict[str, str], body: bytes) -> tuple[int, dict[str, list[str]]]:
    """How many records a body holds, and its form fields (empty for a JSON body)."""
    if headers.get("content-encoding", "").lower() == "gzip":
        body = gzip.decompress(body)
    form: dict[str, list[str]] = {}
    if "x-www-form-urlencoded" in headers.get("content-type", "") or body[:1] not in (b"[", b"{"):
        # The official client posts data=<json>&verbose=1&ip=0; older ones base64 the data.
        form = urllib.parse.parse_qs(body.decode(), strict_parsing=True)
        data = form["data"][0]
        body = data.encode() if data[:1] in ("[", "{") else base64.b64decode(data, validate=True)
    value = orjson.loads(body)
    if isinstance(value, list):
        return len(value), form
    if isinstance(value, dict):
        batch = value.get("batch")  # PostHog /batch/, Segment /v1/batch
        return (len(batch) if isinstance(batch, list) else 1), form
    raise ValueError("a body that is neither a list nor an object")


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";", 1)[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass  # trailers, read past
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)  # the CRLF after each chunk


async def serve(sink: Sink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One connection: requests one after the other while the client keeps it alive."""
    task = asyncio.current_task()
    assert task is not None
    sink.connections[task] = writer
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return  # the client closed (or sent garbage): nothing to answer
            lines = head.decode("latin-1").split("\r\n")
            method, target, version = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            if headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if "chunked" in headers.get("transfer-encoding", "").lower():
                body = await read_chunked(reader)
            else:
                body = await reader.readexactly(int(headers.get("content-length") or 0))
            status, _, payload = sink.answer(method, target, headers, body).partition(b" ")
            connection = headers.get("connection", "").lower()
            keep = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
            writer.write(
                b"HTTP/1.1 %s %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                b"Connection: %s\r\n\r\n%s"
                % (status, REASONS[int(status)], len(payload), CONNECTION[keep], payload)
            )
            await writer.drain()
            if not keep:
                return
    except (ValueError, asyncio.IncompleteReadError, ConnectionError):
        return  # a broken request line or framing, or a client gone mid-request: drop it
    finally:
        del sink.connections[task]
        writer.close()


async def main(port: int) -> None:
    sink = Sink()
    listener = await asyncio.start_server(
        functools.partial(serve, sink), "127.0.0.1", port, backlog=256
    )
    print(f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := await commands.readline():  # b"" at the end of input: the parent closed
        command, *args = line.decode().split() or [""]
        if command == "reset":
            sink.counts.update(dict.fromkeys(COUNTERS, 0))
        elif command == "wait":
            future = loop.create_future()
            waiter = (int(args[0]), future)
            sink.waiters.append(waiter)
            sink.received(0)  # already there?
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(future, float(args[1]))
            sink.waiters.remove(waiter)
        print(sink.counts.get(command, sink.counts["events"]), flush=True)
    listener.close()
    tasks = list(sink.connections)
    for writer in sink.connections.values():
        writer.close()  # the connection's reader sees the end, and its task returns
    await asyncio.gather(*tasks, return_exceptions=True)


def child() -> None:
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 0))
