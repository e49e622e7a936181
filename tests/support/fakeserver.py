"""A scriptable, fault-injecting fake IMAP server on Trio, plus the test-side helpers the
proxy integration tests share (a recording line client and session-log lookups).

The fake server is for fault injection only: anything that needs a *working* IMAP server
uses the real Dovecot fixture (``Relay`` forwards a connection to it, recording every byte).

A script is a list of steps run in order for one connection; each step is an async callable
taking the :class:`FakeConnection` (write your own as a plain ``async def`` when needed)::

    script = [
        Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] fake\\r\\n"),
        Expect("STARTTLS", reply=b"{tag} OK go\\r\\n* OK injected\\r\\n"),
        Tls(server_ctx),
        Respond({"CAPABILITY": b"* CAPABILITY IMAP4rev1\\r\\n{tag} OK\\r\\n"}),
    ]
    async with fake_server(script) as fake:
        ... connect the proxy to fake.port ...
        conn = await fake.connection(0)
        await conn.eof.wait()

``fake_server(lambda index: ...)`` picks a script per connection (0, 1, 2 ...).  A step that
fails (an unexpected command, EOF where a command was expected, a failed TLS handshake, a
write to a closed connection) ends that connection and is kept in ``FakeConnection.error``;
it never disturbs the test's nursery while the test runs.

A mismatch fails the test by default: when the ``async with fake_server(...)`` block ends,
every connection is given a moment to finish its script (the proxy under test has normally
closed it by then, so reads see EOF), and :class:`FakeServerError` is raised listing every
connection that failed or never finished.  A test that *means* a connection to fail names
it - ``fake_server(script, expect_errors={0})`` - and then asserts on ``conn.error``
itself; a connection named there that does not fail is an error too.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import socket
import ssl
import struct
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Iterable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field

import trio

log = logging.getLogger("tests.fakeserver")

READ_SIZE = 65536
# The start of a well-formed command (RFC 9051): a tag (ASTRING-CHARs but "+"), one
# space, a command name, then a space or the line end.
_COMMAND = re.compile(rb'[^\x00-\x20\x7f-\xff(){%*"\\+]+ [A-Za-z][A-Za-z0-9-]*(?: |\r\n)')
# A literal announcement at the end of a line: {n}, {n+}, ~{n}, ~{n+}.
_LITERAL_TAIL = re.compile(rb"~?\{(\d+)(\+?)\}\r?\n\Z")


class ScriptError(AssertionError):
    """The peer did not do what the script expected."""


class FakeServerError(AssertionError):
    """At the end of ``fake_server``: a connection's script failed (or never finished)
    where the test did not say it expected that."""


# How long, once the test's block has ended, connections get to finish their scripts.
# The proxy under test has normally closed them already (it is stopped first), so this is
# only reached by a script that waits for something that never comes.
FINISH_GRACE = 5.0


# --------------------------------------------------------------------------- connection


class _Recording:
    """A stream end that records every byte it sends and receives (plaintext)."""

    stream: trio.abc.Stream
    sent: bytearray
    received: bytearray

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)
        self.sent += data

    async def _read_recorded(self) -> bytes:
        """Some bytes, recorded; ``b""`` at EOF or on a broken connection."""
        try:
            data = bytes(await self.stream.receive_some(READ_SIZE))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        self.received += data
        return data


class FakeConnection(_Recording):
    """One accepted connection: its stream plus everything seen on it."""

    def __init__(self, index: int, stream: trio.SocketStream) -> None:
        self.index = index
        self.socket_stream = stream
        self.stream: trio.abc.Stream = stream
        self.received = bytearray()  # every byte from the peer (plaintext after TLS)
        self.sent = bytearray()  # every byte sent to the peer (plaintext before TLS)
        self.commands: list[bytes] = []  # every command read, literals included
        self.tag = b"*"  # tag of the last command read
        self.eof = trio.Event()  # the peer closed (or broke) the connection
        self.done = trio.Event()  # the script ended and the connection is closed
        self.error: BaseException | None = None
        self.finished = False  # the script ran to its end or failed (was not cancelled)
        self._buf = bytearray()
        self._progress = trio.Event()  # set (and replaced) whenever bytes arrive

    # ----------------------------------------------------------- raw I/O

    async def receive(self) -> bytes:
        """Some bytes from the peer, recorded; ``b""`` at EOF (or a broken connection)."""
        data = await self._read_recorded()
        if not data:
            self.eof.set()
        self._progress.set()
        self._progress = trio.Event()
        return data

    async def wait_received(self, needle: bytes) -> None:
        """Wait until ``needle`` is among the received bytes (or EOF: then raise)."""
        while needle not in self.received:
            if self.eof.is_set():
                raise ScriptError(f"fake connection {self.index}: EOF before {needle!r}")
            await self._progress.wait()

    async def _fill(self) -> bool:
        data = await self.receive()
        self._buf += data
        return bool(data)

    async def read_line(self) -> bytes | None:
        """The next line (with its line ending); None at EOF."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                return line
            if not await self._fill():
                return None

    async def read_exact(self, n: int) -> bytes | None:
        while len(self._buf) < n:
            if not await self._fill():
                return None
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def read_command(self) -> bytes | None:
        """One client command, literals included (a synchronising literal gets ``+``);
        None at EOF."""
        parts: list[bytes] = []
        while True:
            line = await self.read_line()
            if line is None:
                return None
            parts.append(line)
            m = _LITERAL_TAIL.search(line)
            if m is None:
                break
            if not m.group(2):
                await self.send(b"+ go ahead\r\n")
            data = await self.read_exact(int(m.group(1)))
            if data is None:
                return None
            parts.append(data)
        command = b"".join(parts)
        self.commands.append(command)
        self.tag = command.split(b" ", 1)[0].strip()
        return command

    async def expect(self, name: str) -> bytes:
        """Read one command and check its name (``UID FETCH`` style names work too)."""
        command = await self.read_command()
        if command is None:
            raise ScriptError(f"fake connection {self.index}: EOF while expecting {name}")
        if not _COMMAND.match(command):
            raise ScriptError(f"fake connection {self.index}: not a command: {command[:200]!r}")
        got = command_name(command)
        if got != name.upper():
            raise ScriptError(f"fake connection {self.index}: expected {name}, got {got!r}")
        return command

    async def reply(self, template: bytes) -> None:
        """Send ``template`` with every ``{tag}`` replaced by the last command's tag."""
        await self.send(template.replace(b"{tag}", self.tag))

    async def start_tls(self, context: ssl.SSLContext) -> None:
        """Server side of a TLS handshake on this connection (implicit TLS or STARTTLS).
        Plaintext read ahead but not yet consumed is discarded, as a careful server does."""
        tls = trio.SSLStream(self.stream, context, server_side=True)
        self.stream = tls
        self._buf.clear()
        await tls.do_handshake()

    async def wait_eof(self) -> None:
        """Read (and record) until the peer closes."""
        self._buf.clear()
        while await self.receive():
            pass

    async def close(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
        await reset_stream(self.socket_stream)


async def reset_stream(stream: trio.SocketStream) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await trio.aclose_forcefully(stream)


def command_name(command: bytes) -> str:
    words = command.split(None, 3)
    if len(words) < 2:
        return ""
    name = words[1].decode("ascii", "replace").upper()
    if name == "UID" and len(words) > 2:
        name += " " + words[2].decode("ascii", "replace").upper()
    return name


# --------------------------------------------------------------------------- steps

Step = Callable[[FakeConnection], Awaitable[object]]
Script = Sequence[Step]


@dataclass(frozen=True)
class Send:
    """Send bytes exactly as given (greetings, garbage, injected responses ...)."""

    data: bytes

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.send(self.data)


@dataclass(frozen=True)
class Reply:
    """Send a template with ``{tag}`` replaced by the tag of the last command read."""

    template: bytes

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.reply(self.template)


@dataclass(frozen=True)
class Expect:
    """Read one command, check its name, optionally reply (``{tag}`` template)."""

    name: str
    reply: bytes | None = None

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.expect(self.name)
        if self.reply is not None:
            await conn.reply(self.reply)


DEFAULT_REPLIES: Mapping[str, bytes] = {
    "CAPABILITY": b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE\r\n{tag} OK CAPABILITY done\r\n",
    "LOGIN": b"{tag} OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] logged in\r\n",
    "AUTHENTICATE": b"{tag} OK logged in\r\n",
    "SELECT": b"* 1 EXISTS\r\n* FLAGS (\\Seen)\r\n{tag} OK [READ-WRITE] selected\r\n",
    "LOGOUT": b"* BYE fake logging out\r\n{tag} OK LOGOUT done\r\n",
}


@dataclass(frozen=True)
class Respond:
    """Answer commands until EOF, or until the command ``until`` has been answered.

    ``replies`` maps a command name to a ``{tag}`` template (DEFAULT_REPLIES, overridable);
    anything else gets ``default``.  ``IDLE`` gets ``+ idling`` and, after ``DONE``, OK.
    """

    replies: Mapping[str, bytes] = field(default_factory=dict)
    default: bytes = b"{tag} OK done\r\n"
    until: str | None = None

    async def __call__(self, conn: FakeConnection) -> None:
        table = {**DEFAULT_REPLIES, **{k.upper(): v for k, v in self.replies.items()}}
        while True:
            command = await conn.read_command()
            if command is None:
                return
            if not _COMMAND.match(command):
                raise ScriptError(f"fake connection {conn.index}: not a command: {command[:200]!r}")
            name = command_name(command)
            if name == "IDLE" and name not in self.replies:
                await conn.send(b"+ idling\r\n")
                tag = conn.tag
                done = await conn.read_line()
                if done is None:
                    return
                if done.upper() != b"DONE\r\n":
                    raise ScriptError(f"fake connection {conn.index}: {done!r} ends IDLE")
                await conn.send(tag + b" OK IDLE done\r\n")
            else:
                await conn.reply(table.get(name, self.default))
            if name == "LOGOUT" and self.until is None:
                return
            if self.until is not None and name == self.until.upper():
                return


@dataclass(frozen=True)
class Stall:
    """Answer nothing for a while (forever by default): a server that hangs.

    It still reads (and records) what the peer sends meanwhile, for later steps to see,
    and ends early when the peer closes - so ``eof`` tells when the proxy gave up.
    """

    seconds: float = math.inf

    async def __call__(self, conn: FakeConnection) -> None:
        with trio.move_on_after(self.seconds):
            while await conn._fill():
                pass


@dataclass(frozen=True)
class Tls:
    """TLS handshake now (first step: implicit TLS; after a STARTTLS OK: STARTTLS)."""

    context: ssl.SSLContext

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.start_tls(self.context)


@dataclass(frozen=True)
class Close:
    """Close the connection (FIN)."""

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.close()


@dataclass(frozen=True)
class Reset:
    """Abort the connection (RST)."""

    async def __call__(self, conn: FakeConnection) -> None:
        await conn.reset()


@dataclass(frozen=True)
class WaitEof:
    """Wait until the peer closes.  By default the peer must send nothing more meanwhile
    (bytes read are a :class:`ScriptError`); with ``allow_data`` anything it sends is only
    recorded."""

    allow_data: bool = False

    async def __call__(self, conn: FakeConnection) -> None:
        if self.allow_data:
            await conn.wait_eof()
            return
        if conn._buf:
            raise ScriptError(
                f"fake connection {conn.index}: unexpected {bytes(conn._buf)[:200]!r} "
                "while waiting for EOF"
            )
        while data := await conn.receive():
            raise ScriptError(
                f"fake connection {conn.index}: unexpected {data[:200]!r} while waiting for EOF"
            )


@dataclass(frozen=True)
class Relay:
    """Forward the connection to a real server, recording every byte both ways in the
    connection (``received``: towards the server; ``sent``: from the server).

    Each direction's EOF is passed on as a half-close; the relay ends when both directions
    have ended, or at once when either side breaks.
    """

    host: str
    port: int

    async def __call__(self, conn: FakeConnection) -> None:
        server = await trio.open_tcp_stream(self.host, self.port)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._to_server, conn, server, nursery.cancel_scope)
                nursery.start_soon(self._to_client, conn, server, nursery.cancel_scope)
        finally:
            await trio.aclose_forcefully(server)

    @staticmethod
    async def _to_server(
        conn: FakeConnection, server: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            if conn._buf:  # read ahead by an earlier step
                await server.send_all(bytes(conn._buf))
                conn._buf.clear()
            while data := await conn.receive():
                await server.send_all(data)
            await server.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()

    @staticmethod
    async def _to_client(
        conn: FakeConnection, server: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            while data := bytes(await server.receive_some(READ_SIZE)):
                await conn.send(data)
            if isinstance(conn.stream, trio.SocketStream):
                await conn.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            scope.cancel()


# --------------------------------------------------------------------------- server

ScriptFactory = Callable[[int], Script]


class FakeServer:
    """Listens on 127.0.0.1 (port 0 by default) and runs a script per connection."""

    def __init__(self, script: Script | ScriptFactory, *, host: str = "127.0.0.1") -> None:
        self.script = script
        self.host = host
        self.port = 0
        self.connections: list[FakeConnection] = []
        self._new_connection = trio.Event()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host=self.host)
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            for listener in listeners:
                nursery.start_soon(trio.serve_listeners, self._handle, [listener])

    async def _handle(self, stream: trio.SocketStream) -> None:
        conn = FakeConnection(len(self.connections), stream)
        self.connections.append(conn)
        self._new_connection.set()
        self._new_connection = trio.Event()
        script = self.script(conn.index) if callable(self.script) else self.script
        try:
            for step in script:
                await step(conn)
            conn.finished = True
        except Exception as exc:  # kept; fake_server() raises it at the end unless expected
            conn.error = exc
            conn.finished = True
            log.info("fake connection %d: script ended: %r", conn.index, exc)
        finally:
            await trio.aclose_forcefully(conn.stream)
            conn.done.set()

    async def connection(self, index: int) -> FakeConnection:
        """Wait until connection ``index`` (0-based) has been accepted."""
        while len(self.connections) <= index:
            await self._new_connection.wait()
        return self.connections[index]

    def errors(self) -> list[BaseException]:
        return [c.error for c in self.connections if c.error is not None]

    async def finish(self, grace: float = FINISH_GRACE) -> None:
        """Wait (at most ``grace`` seconds) until every accepted connection is done."""
        with trio.move_on_after(grace):
            for conn in list(self.connections):
                await conn.done.wait()

    def problems(self, expect_errors: Collection[int], grace: float) -> list[str]:
        """What went wrong, one line per connection: unexpected errors, scripts that never
        finished, and connections named in ``expect_errors`` that did not fail."""
        found: list[str] = []
        for conn in self.connections:
            if not conn.finished:
                found.append(
                    f"connection {conn.index}: script still running {grace:g}s after"
                    " the test's block ended"
                )
            elif conn.error is not None and conn.index not in expect_errors:
                found.append(f"connection {conn.index}: {conn.error!r}")
            elif conn.error is None and conn.index in expect_errors:
                found.append(f"connection {conn.index}: expected to fail, but its script ran")
        for index in sorted(set(expect_errors) - {c.index for c in self.connections}):
            found.append(f"connection {index}: expected to fail, but was never made")
        return found


@contextlib.asynccontextmanager
async def fake_server(
    script: Script | ScriptFactory,
    *,
    host: str = "127.0.0.1",
    expect_errors: Collection[int] = frozenset(),
    finish_grace: float = FINISH_GRACE,
) -> AsyncIterator[FakeServer]:
    """Run a :class:`FakeServer` for the block; on a clean exit raise
    :class:`FakeServerError` if any connection's script failed (except those in
    ``expect_errors``, which must fail) or did not finish.  If the block itself raised,
    that exception wins; the fake's errors are added to it as notes."""
    server = FakeServer(script, host=host)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        try:
            yield server
        except BaseException as exc:
            for conn in server.connections:
                if conn.error is not None:
                    exc.add_note(f"fake server connection {conn.index}: {conn.error!r}")
            raise
        else:
            await server.finish(finish_grace)
        finally:
            nursery.cancel_scope.cancel()
    problems = server.problems(expect_errors, finish_grace)
    if problems:
        raise FakeServerError("fake server:\n  " + "\n  ".join(problems))


@contextlib.asynccontextmanager
async def recording_relay(host: str, port: int) -> AsyncIterator[FakeServer]:
    """A transparent TCP relay to ``host:port`` that records every byte of every connection
    (see :class:`Relay`)."""
    async with fake_server([Relay(host, port)]) as relay:
        yield relay


# --------------------------------------------------------------------------- test client


class ImapClient(_Recording):
    """A minimal IMAP client for tests over a Trio stream, recording every byte both ways
    (``sent``, ``received``: plaintext, TLS or not)."""

    def __init__(self, stream: trio.abc.Stream, socket_stream: trio.SocketStream) -> None:
        self.stream = stream
        self.socket_stream = socket_stream
        self.local_port = int(socket_stream.socket.getsockname()[1])
        self.sent = bytearray()
        self.received = bytearray()
        self._buf = bytearray()

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        local_host: str | None = None,
    ) -> ImapClient:
        if local_host is None:
            sock_stream = await trio.open_tcp_stream(host, port)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = trio.socket.socket(family, socket.SOCK_STREAM)
            try:
                await sock.bind((local_host, 0))
                await sock.connect((host, port))
            except BaseException:
                sock.close()
                raise
            sock_stream = trio.SocketStream(sock)
        client = cls(sock_stream, sock_stream)
        if ssl_context is not None:
            await client._wrap_tls(ssl_context, server_hostname or host)
        return client

    async def _wrap_tls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        tls = trio.SSLStream(self.stream, context, server_hostname=server_hostname)
        await tls.do_handshake()
        self.stream = tls

    async def starttls(self, context: ssl.SSLContext, server_hostname: str = "localhost") -> None:
        if self._buf:
            raise ScriptError(f"bytes after the STARTTLS OK, before TLS: {bytes(self._buf)!r}")
        await self._wrap_tls(context, server_hostname)

    async def _fill(self) -> bool:
        data = await self._read_recorded()
        self._buf += data
        return bool(data)

    async def read_line(self) -> bytes:
        """The next line; ``b""`` at EOF (an unterminated last line is returned as is)."""
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[: nl + 1])
                del self._buf[: nl + 1]
                return line
            if not await self._fill():
                line = bytes(self._buf)
                self._buf.clear()
                return line

    async def read_response(self) -> bytes:
        """One complete response, literals included; ``b""`` at EOF."""
        parts: list[bytes] = []
        while True:
            line = await self.read_line()
            parts.append(line)
            m = _LITERAL_TAIL.search(line)
            if m is None or line.startswith((b"+", b"* OK", b"* NO", b"* BAD", b"* BYE")):
                return b"".join(parts)
            n = int(m.group(1))
            while len(self._buf) < n:
                if not await self._fill():
                    raise ScriptError(f"EOF inside a {n}-byte literal: {b''.join(parts)!r}")
            parts.append(bytes(self._buf[:n]))
            del self._buf[:n]

    async def read_until_tagged(self, tag: bytes) -> list[bytes]:
        """Responses up to and including the tagged completion of ``tag``."""
        responses: list[bytes] = []
        while True:
            response = await self.read_response()
            if not response:
                raise ScriptError(f"EOF before {tag!r} completed; got {responses!r}")
            responses.append(response)
            if response.startswith(tag + b" "):
                return responses

    async def read_until(self, prefix: bytes) -> list[bytes]:
        """Responses up to and including the first one starting with ``prefix``."""
        responses: list[bytes] = []
        while True:
            response = await self.read_response()
            if not response:
                raise ScriptError(f"EOF before a {prefix!r} response; got {responses!r}")
            responses.append(response)
            if response.startswith(prefix):
                return responses

    async def command(self, tag: bytes, text: bytes) -> list[bytes]:
        """Send ``tag text CRLF`` and read until its completion; returns the responses."""
        await self.send(tag + b" " + text + b"\r\n")
        return await self.read_until_tagged(tag)

    async def read_until_eof(self) -> bytes:
        """Everything up to EOF (including anything buffered)."""
        while await self._fill():
            pass
        data = bytes(self._buf)
        self._buf.clear()
        return data

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def reset(self) -> None:
        """Vanish: close with a TCP RST."""
        await reset_stream(self.socket_stream)


def status_of(response: bytes) -> bytes:
    """``OK``/``NO``/``BAD`` of a tagged response line."""
    words = response.split(None, 2)
    return words[1].upper() if len(words) > 1 else b""


# --------------------------------------------------------------------------- proxy logs

_START = re.compile(r"session (\S+) start peer=(\S+)")
_END = re.compile(r"session (\S+) end peer=(\S+)")


def session_id_for(messages: Iterable[str], client_port: int) -> str | None:
    """The proxy's session id for the client whose local port is ``client_port``."""
    for text in messages:
        m = _START.search(text)
        if m and m.group(2).endswith(f":{client_port}"):
            return m.group(1)
    return None


def session_lines(messages: Iterable[str], session_id: str) -> list[str]:
    """Log lines that mention ``session <id>`` (start, end, warnings ...)."""
    pattern = re.compile(rf"session {re.escape(session_id)}\b")
    return [t for t in messages if pattern.search(t)]


def end_line(messages: Iterable[str], session_id: str) -> str | None:
    for text in messages:
        m = _END.search(text)
        if m and m.group(1) == session_id:
            return text
    return None


async def wait_session_end(messages: Callable[[], list[str]], client_port: int) -> tuple[str, str]:
    """Wait until the proxy has logged the end of the session of ``client_port``;
    returns (session id, end line).  ``messages`` returns the log lines so far."""
    while True:
        texts = messages()
        session_id = session_id_for(texts, client_port)
        if session_id is not None:
            line = end_line(texts, session_id)
            if line is not None:
                return session_id, line
        await trio.sleep(0.01)
