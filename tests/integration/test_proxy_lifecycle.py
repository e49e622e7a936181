"""Session lifecycle: idle timeouts, admission limits, graceful shutdown, IPv6, logging."""

from __future__ import annotations

import base64
import io
import logging
import re
import signal
import socket
import ssl
import time
from pathlib import Path

import pytest
import trio

from imapproxy.config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    SessionLimits,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from imapproxy.relay.server import Proxy
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    Expect,
    FakeConnection,
    ImapClient,
    Reply,
    Respond,
    Script,
    Send,
    Stall,
    end_line,
    fake_server,
    recording_relay,
    session_id_for,
    session_lines,
    status_of,
    wait_session_end,
)
from tests.support.proxy import ProxyProcess, free_port, running_proxy, transcript_chain

DOVECOT = pytest.mark.dovecot
LIMIT = 10.0

IDLE_UNAUTH = 0.5
IDLE_AUTH = 1.0
SHORT = Timeouts(
    tls_handshake=2.0,
    upstream_connect=1.0,
    upstream_greeting=1.0,
    idle_unauthenticated=IDLE_UNAUTH,
    idle_authenticated=IDLE_AUTH,
    shutdown_drain=0.2,
    farewell=0.5,
)
RELAXED = Timeouts(shutdown_drain=0.2)
# Upper bounds on timings leave room for a loaded 2-core machine: a timer may fire late,
# never early.  Each test's bound stays below what a wrong timer would give.
SLACK = 4.0


def make_config(
    port: int,
    *,
    timeouts: Timeouts = RELAXED,
    session_limits: SessionLimits | None = None,
    listeners: tuple[ListenerConfig, ...] | None = None,
    certs: TlsCerts | None = None,
) -> ProxyConfig:
    return ProxyConfig(
        listeners=listeners or (ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port), tls=UpstreamTls.NONE),
        cert_file=str(certs.cert_path) if certs else None,
        key_file=str(certs.key_path) if certs else None,
        timeouts=timeouts,
        session_limits=session_limits or SessionLimits(),
    )


@pytest.fixture(autouse=True)
def _capture_proxy_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="imapproxy")


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


async def login(client: ImapClient, user: str = "alice", password: str = "alicepw") -> None:
    responses = await client.command(b"L1", f"LOGIN {user} {password}".encode())
    assert status_of(responses[-1]) == b"OK", responses


async def logout(client: ImapClient) -> None:
    responses = await client.command(b"LO", b"LOGOUT")
    assert responses[0].startswith(b"* BYE") and status_of(responses[-1]) == b"OK", responses
    assert await client.read_until_eof() == b""


async def greeted(
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    local_host: str | None = None,
) -> ImapClient:
    client = await ImapClient.connect(
        host,
        port,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        local_host=local_host,
    )
    greeting = await client.read_response()
    assert greeting.startswith(b"* OK "), greeting
    return client


# --------------------------------------------------------------------------- idle timeout


@DOVECOT
async def test_idle_timeout_before_login(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    # the authenticated timeout far away, so that the upper bound tells the two apart
    timeouts = Timeouts(
        idle_unauthenticated=IDLE_UNAUTH, idle_authenticated=60.0, shutdown_drain=0.2
    )
    with trio.fail_after(LIMIT):
        async with running_proxy(make_config(dovecot.port, timeouts=timeouts)) as (_, addrs):
            client = await greeted(*addrs[0])
            start = trio.current_time()
            rest = await client.read_until_eof()
            elapsed = trio.current_time() - start
            _, end = await wait_session_end(lambda: log_messages(caplog), client.local_port)
    assert re.fullmatch(rb"\* BYE [^\r\n]*\r\n", rest), rest
    assert IDLE_UNAUTH - 0.05 <= elapsed < IDLE_UNAUTH + SLACK, elapsed
    assert "reason=idle_timeout" in end


@DOVECOT
async def test_idle_timeout_after_login(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    with trio.fail_after(LIMIT):
        async with running_proxy(make_config(dovecot.port, timeouts=SHORT)) as (_, addrs):
            client = await greeted(*addrs[0])
            await login(client)
            for _ in range(4):  # activity keeps it alive past the timeout ...
                await trio.sleep(IDLE_AUTH * 0.3)
                assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            start = trio.current_time()  # ... silence does not
            rest = await client.read_until_eof()
            elapsed = trio.current_time() - start
            _, end = await wait_session_end(lambda: log_messages(caplog), client.local_port)
    assert re.fullmatch(rb"\* BYE [^\r\n]*\r\n", rest), rest
    # the authenticated timeout applies, not the (shorter) one before login
    assert IDLE_AUTH - 0.05 <= elapsed < IDLE_AUTH + SLACK, elapsed
    assert "reason=idle_timeout" in end


@DOVECOT
async def test_reissued_idle_survives_the_idle_timeout(dovecot: DovecotServer) -> None:
    with trio.fail_after(LIMIT):
        async with running_proxy(make_config(dovecot.port, timeouts=SHORT)) as (_, addrs):
            client = await greeted(*addrs[0])
            await login(client)
            assert status_of((await client.command(b"s", b"EXAMINE INBOX"))[-1]) == b"OK"
            start = trio.current_time()
            rounds = 0
            while trio.current_time() - start < 2.5 * IDLE_AUTH:
                rounds += 1
                tag = b"i%d" % rounds
                await client.send(tag + b" IDLE\r\n")
                await client.read_until(b"+")
                await trio.sleep(0.4 * IDLE_AUTH)
                await client.send(b"DONE\r\n")
                responses = await client.read_until_tagged(tag)
                assert status_of(responses[-1]) == b"OK", responses
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await logout(client)
    assert b"BYE Autologout" not in client.received
    assert b"[UNAVAILABLE]" not in client.received


SLOW_SEARCH: Script = [
    Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake ready\r\n"),
    Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
    Expect("SEARCH"),
    Stall(1.6 * IDLE_AUTH),  # the upstream works on the command for a while
    Reply(b"* SEARCH 1 2 3\r\n{tag} OK SEARCH done\r\n"),
    Respond(),
]


async def trickle(conn: FakeConnection) -> None:
    """A FETCH answer that streams steadily for 1.6 idle timeouts (a slow download)."""
    chunks = 16
    await conn.send(b"* 1 FETCH (BODY[] {%d}\r\n" % (chunks * 1000))
    for _ in range(chunks):
        await trio.sleep(1.6 * IDLE_AUTH / chunks)
        await conn.send(b"d" * 1000)
    await conn.reply(b")\r\n{tag} OK FETCH done\r\n")


SLOW_FETCH: Script = [
    Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+] fake ready\r\n"),
    Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
    Expect("FETCH"),
    trickle,
    Respond(),
]


@pytest.mark.parametrize(
    ("script", "command"),
    [(SLOW_SEARCH, b"SEARCH ALL"), (SLOW_FETCH, b"FETCH 1 BODY[]")],
    ids=["slow_answer", "slow_download"],
)
async def test_command_in_progress_is_not_idle(script: Script, command: bytes) -> None:
    """A client waiting for the answer to its command is not idle (RFC 9051 §5.4 is about
    a client that sends nothing): an upstream that takes longer than the idle timeout to
    answer, or a long download, must not end in ``* BYE Autologout``."""
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, timeouts=SHORT)) as (_, addrs),
        ):
            client = await greeted(*addrs[0])
            await login(client)
            responses = await client.command(b"c1", command)
            assert status_of(responses[-1]) == b"OK", responses
    assert b"BYE" not in client.received, bytes(client.received[-200:])


LOST_COMMAND: Script = [
    Send(b"* OK [CAPABILITY IMAP4rev1] fake ready\r\n"),
    Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
    Expect("XLOST", reply=b"* BAD no idea which command that was\r\n"),  # never tagged
    Stall(),
]


async def test_a_command_the_server_never_answers_ends_after_the_answer_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While a command is in progress the idle timer does not run; a server that loses the
    command (answers only untagged) and falls silent ends the session after
    ``answer_timeout`` with BYE [UNAVAILABLE], not never."""
    answer = 2 * IDLE_AUTH
    timeouts = Timeouts(
        idle_unauthenticated=IDLE_UNAUTH,
        idle_authenticated=IDLE_AUTH,
        answer_timeout=answer,
        shutdown_drain=0.2,
    )
    with trio.fail_after(LIMIT):
        async with (
            fake_server(LOST_COMMAND) as fake,
            running_proxy(make_config(fake.port, timeouts=timeouts)) as (_, addrs),
        ):
            client = await greeted(*addrs[0])
            await login(client)
            await client.send(b"x1 XLOST\r\n")
            start = trio.current_time()
            rest = await client.read_until_eof()
            elapsed = trio.current_time() - start
            _, end = await wait_session_end(lambda: log_messages(caplog), client.local_port)
    assert rest == b"* BAD no idea which command that was\r\n" + (
        b"* BYE [UNAVAILABLE] upstream stopped answering\r\n"
    ), rest
    # neither the idle timeout (1 s) nor never: the answer timeout
    assert answer - 0.05 <= elapsed < answer + SLACK, elapsed
    assert "reason=upstream_stalled" in end


# --------------------------------------------------------------------------- session limits


async def _wait_sessions(proxy: Proxy, count: int) -> None:
    while len(proxy.sessions) != count:  # noqa: ASYNC110 - the proxy has no event for this
        await trio.sleep(0.01)


@DOVECOT
@pytest.mark.parametrize("implicit_tls", [False, True], ids=["plain", "tls"])
async def test_max_sessions(
    caplog: pytest.LogCaptureFixture,
    dovecot: DovecotServer,
    tls_certs: TlsCerts,
    implicit_tls: bool,
) -> None:
    listener = ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=implicit_tls)
    config = make_config(
        dovecot.port,
        session_limits=SessionLimits(max_sessions=2, max_sessions_per_address=100),
        listeners=(listener,),
        certs=tls_certs,
    )
    ctx = tls_certs.client_context() if implicit_tls else None
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (proxy, addrs):
            first = await greeted(*addrs[0], ssl_context=ctx)
            second = await greeted(*addrs[0], ssl_context=ctx)
            await login(first)
            extra = await ImapClient.connect(*addrs[0], ssl_context=ctx)
            assert await extra.read_until_eof() == b"* BYE [UNAVAILABLE] too many sessions\r\n"
            for client in (first, second):
                assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await logout(second)
            await _wait_sessions(proxy, 1)
            third = await greeted(*addrs[0], ssl_context=ctx)
            await login(third, "bob", "bobpw")
            for client in (first, third):
                await logout(client)
    assert any("refused" in m and "too many sessions" in m for m in log_messages(caplog))


@DOVECOT
async def test_max_sessions_per_address(dovecot: DovecotServer) -> None:
    config = make_config(
        dovecot.port, session_limits=SessionLimits(max_sessions=100, max_sessions_per_address=2)
    )
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (proxy, addrs):
            host, port = addrs[0]
            first = await greeted(host, port)
            second = await greeted(host, port)
            extra = await ImapClient.connect(host, port)
            assert (
                await extra.read_until_eof()
                == b"* BYE [UNAVAILABLE] too many sessions from your address\r\n"
            )
            # another address (127.0.0.2 is loopback too) is not affected
            other = await greeted(host, port, local_host="127.0.0.2")
            await login(other, "bob", "bobpw")
            for client in (first, second):
                await login(client)
                assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await logout(first)
            await _wait_sessions(proxy, 2)
            again = await greeted(host, port)
            await login(again)
            for client in (second, other, again):
                await logout(client)


# --------------------------------------------------------------------------- shutdown


async def _start_process(args: list[str], workdir: Path, port: int) -> ProxyProcess:
    proc = ProxyProcess(args, workdir=workdir, wait_ports=[("127.0.0.1", port)])
    await trio.to_thread.run_sync(proc.__enter__)
    return proc


async def _exit_code(proc: ProxyProcess, seconds: float) -> int:
    assert proc.proc is not None
    return await trio.to_thread.run_sync(proc.proc.wait, seconds)


async def _refused(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


@DOVECOT
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_graceful_shutdown(
    dovecot: DovecotServer, tmp_path: Path, sig: signal.Signals
) -> None:
    drain = 3.0  # long enough to tell "at once" (the listener) from "at the deadline"
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    args += ["--shutdown-drain", str(drain)]
    with trio.fail_after(LIMIT + drain):
        proc = await _start_process(args, tmp_path, port)
        try:
            idle = await greeted("127.0.0.1", port)
            await login(idle)
            assert status_of((await idle.command(b"s", b"SELECT INBOX"))[-1]) == b"OK"
            leaving = await greeted("127.0.0.1", port)
            await login(leaving, "bob", "bobpw")

            assert proc.proc is not None
            proc.proc.send_signal(sig)
            signalled = trio.current_time()
            while not await _refused(port):  # noqa: ASYNC110 - another process's listener
                await trio.sleep(0.05)
            closed = trio.current_time() - signalled
            # at once, not at the drain deadline (a 2-core machine may take a while)
            assert closed < drain / 2, f"the listener still accepted {closed:.2f}s after the signal"
            # a session may finish normally during the drain
            await logout(leaving)
            assert b"UNAVAILABLE" not in leaving.received
            # the idle one is told at the drain deadline, not before
            rest = await idle.read_until_eof()
            told = trio.current_time() - signalled
            assert rest == b"* BYE [UNAVAILABLE] shutting down\r\n"
            assert drain - 0.1 <= told < drain + SLACK, told
            assert await _exit_code(proc, 5) == 0
        finally:
            await trio.to_thread.run_sync(proc.stop)
    log = proc.log()
    assert f"got {sig.name}: shutting down" in log
    assert "reason=shutdown" in log and "reason=logout" in log
    assert "Traceback" not in log


@DOVECOT
async def test_shutdown_ends_early_when_sessions_finish(
    dovecot: DovecotServer, tmp_path: Path
) -> None:
    drain = 30.0
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    args += ["--shutdown-drain", str(drain)]
    with trio.fail_after(LIMIT):
        proc = await _start_process(args, tmp_path, port)
        try:
            client = await greeted("127.0.0.1", port)
            await login(client)
            assert proc.proc is not None
            proc.proc.send_signal(signal.SIGTERM)
            while not await _refused(port):  # noqa: ASYNC110 - another process's listener
                await trio.sleep(0.05)
            # the proxy is draining now; the last session leaves ...
            await logout(client)
            left = time.monotonic()
            # ... and it exits then, not at the 30 s drain deadline (nor the test's limit)
            assert await _exit_code(proc, LIMIT / 2) == 0
            assert time.monotonic() - left < LIMIT / 2
        finally:
            await trio.to_thread.run_sync(proc.stop)
    log = proc.log()
    assert "got SIGTERM: shutting down" in log and "reason=logout" in log, log
    assert "reason=shutdown" not in log, log


async def test_shutdown_reaches_sessions_still_setting_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A session still waiting for its upstream's greeting at the drain deadline must be
    ended then too, not keep the proxy alive until its upstream timeouts run out
    (upstream_connect + upstream_greeting: 20 s by default)."""
    timeouts = Timeouts(upstream_connect=8.0, upstream_greeting=8.0, shutdown_drain=0.3)
    bound = 5.0  # well after the 0.3 s drain, well before the 8 s greeting timeout
    with trio.fail_after(LIMIT):
        async with (
            fake_server([Stall(30)]) as fake,
            running_proxy(make_config(fake.port, timeouts=timeouts)) as (proxy, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await fake.connection(0)
            proxy.shutdown()
            start = trio.current_time()
            with trio.move_on_after(bound):
                await client.read_until_eof()
            waited = trio.current_time() - start
            # let the stalled upstream go so that the proxy can finish either way
            await fake.connections[0].close()
    assert waited < bound, (
        f"no BYE {waited:.1f}s after shutdown (drain {timeouts.shutdown_drain}s): "
        "Session.shutdown() cannot interrupt a session that is still connecting upstream"
    )
    assert client.received == b"* BYE [UNAVAILABLE] shutting down\r\n"


# --------------------------------------------------------------------------- IPv6


def _ipv6_loopback_error() -> str | None:
    if not socket.has_ipv6:
        return "Python was built without IPv6 support"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind [::1]: {exc}"
    return None


@DOVECOT
async def test_ipv6_listener(caplog: pytest.LogCaptureFixture, dovecot: DovecotServer) -> None:
    problem = _ipv6_loopback_error()
    if problem is not None:
        pytest.fail(f"IPv6 loopback ::1 is not usable on this machine ({problem})")
    listener = ListenerConfig(Endpoint.parse("[::1]:0"), implicit_tls=False)
    with trio.fail_after(LIMIT):
        async with running_proxy(make_config(dovecot.port, listeners=(listener,))) as (_, addrs):
            host, port = addrs[0]
            assert host == "::1"
            client = await greeted("::1", port)
            await login(client)
            await logout(client)
            _, end = await wait_session_end(lambda: log_messages(caplog), client.local_port)
    assert f"peer=[::1]:{client.local_port}" in end
    assert "listener=imap@[::1]:0" in end


@DOVECOT
async def test_ipv6_listener_from_the_command_line(dovecot: DovecotServer, tmp_path: Path) -> None:
    problem = _ipv6_loopback_error()
    if problem is not None:
        pytest.fail(f"IPv6 loopback ::1 is not usable on this machine ({problem})")
    port = free_port("::1")
    args = ["--listen", f"[::1]:{port}", "--upstream", f"127.0.0.1:{dovecot.port}"]
    with trio.fail_after(LIMIT):
        proc = ProxyProcess(args, workdir=tmp_path, wait_ports=[("::1", port)])
        await trio.to_thread.run_sync(proc.__enter__)
        try:
            client = await greeted("::1", port)
            await login(client)
            await logout(client)
        finally:
            await trio.to_thread.run_sync(proc.stop)
    assert f"listening on [::1]:{port}" in proc.log()


# --------------------------------------------------------------------------- logging


@DOVECOT
async def test_session_log_lines(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    """One start and one end line per session, with id, client address, TLS version, user,
    bytes each way, duration and reason - and never a password, however it was sent."""
    wrong = "wrong-Secret-9"
    sasl = base64.b64encode(b"\x00alice\x00alicepw")
    plain = ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False)
    implicit = ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=True)
    transcript = io.StringIO()
    ctx = tls_certs.client_context()

    async def literal_login(client: ImapClient) -> None:
        await client.send(b"L1 LOGIN alice {7}\r\n")
        await client.read_until(b"+")
        await client.send(b"alicepw\r\n")
        assert status_of((await client.read_until_tagged(b"L1"))[-1]) == b"OK"

    async def nonsync_login(client: ImapClient) -> None:
        """LOGIN with a {n+} literal (the password): the proxy sends it upstream as {n} and
        absorbs Dovecot's "+", so the client sees only the tagged OK."""
        responses = await client.command(b"L0", b"LOGIN alice {7+}\r\nalicepw")
        assert len(responses) == 1 and status_of(responses[0]) == b"OK", responses

    async def sasl_login(client: ImapClient, initial_response: bool) -> None:
        if initial_response:
            responses = await client.command(b"A1", b"AUTHENTICATE PLAIN " + sasl)
        else:
            await client.send(b"A1 AUTHENTICATE PLAIN\r\n")
            await client.read_until(b"+")
            await client.send(sasl + b"\r\n")
            responses = await client.read_until_tagged(b"A1")
        assert status_of(responses[-1]) == b"OK", responses

    with trio.fail_after(LIMIT):
        async with (
            recording_relay(dovecot.host, dovecot.port) as relay,
            running_proxy(
                make_config(relay.port, listeners=(plain, implicit), certs=tls_certs),
                filters=transcript_chain(transcript),
            ) as (_, addrs),
        ):
            (phost, pport), (thost, tport) = addrs
            sessions: list[tuple[ImapClient, str, str]] = []  # client, tls, user

            c = await greeted(thost, tport, ssl_context=ctx, server_hostname="localhost")
            await literal_login(c)
            sessions.append((c, "TLSv1.", "alice"))

            c = await greeted(phost, pport)
            assert (await c.command(b"S", b"STARTTLS"))[-1].startswith(b"S OK")
            await c.starttls(ctx, "localhost")
            await sasl_login(c, initial_response=False)
            sessions.append((c, "TLSv1.", "alice"))

            c = await greeted(phost, pport)
            await nonsync_login(c)
            sessions.append((c, "none", "alice"))

            c = await greeted(phost, pport)
            await sasl_login(c, initial_response=True)
            sessions.append((c, "none", "alice"))

            c = await greeted(phost, pport)
            failed = await c.command(b"L1", f'LOGIN "alice" "{wrong}"'.encode())
            assert status_of(failed[-1]) == b"NO"
            sessions.append((c, "none", "-"))

            for client, _, _ in sessions:
                await logout(client)
            for index in range(len(sessions)):
                await (await relay.connection(index)).done.wait()
            for client, _, _ in sessions:
                await wait_session_end(lambda: log_messages(caplog), client.local_port)

    messages = log_messages(caplog)
    for index, (client, tls, user) in enumerate(sessions):
        sid = session_id_for(messages, client.local_port)
        assert sid is not None
        lines = session_lines(messages, sid)
        starts = [m for m in lines if f"session {sid} start " in m]
        ends = [m for m in lines if f"session {sid} end " in m]
        assert len(starts) == 1 and len(ends) == 1, lines
        peer = f"peer=127.0.0.1:{client.local_port}"
        assert peer in starts[0]
        end = end_line(messages, sid)
        assert end is not None and peer in end
        upstream = relay.connections[index]
        fields = dict(re.findall(r"(\w+)=(\S+)", end))
        assert fields["tls"].startswith(tls), end
        assert fields["user"] == user, end
        assert int(fields["in"]) == len(client.sent), end
        assert int(fields["out"]) == len(upstream.sent), end
        assert re.fullmatch(r"\d+\.\d{3}s", fields["duration"]), end
        assert fields["reason"] == "logout", end

    # session 3's {n+} reached Dovecot as {n}
    assert b"L0 LOGIN alice {7}\r\nalicepw\r\n" in relay.connections[2].received
    secrets = ["alicepw", wrong, sasl.decode(), base64.b64encode(b"alicepw").decode()]
    for text, where in ((caplog.text, "log"), (transcript.getvalue(), "transcript")):
        for secret in secrets:
            assert secret not in text, f"{secret!r} appears in the {where}"
