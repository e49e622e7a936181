"""Fault injection: broken, hostile or vanishing upstreams and clients.

Every failure must end in a clean ``* BYE`` (the proxy's ``[UNAVAILABLE]`` one, or the
upstream's own), a closed connection and a log line naming the session - never a Python
traceback on the wire, never harm to another session or to the listener.  Faults come from
the fake server (tests/support/fakeserver.py); healthy sessions use the real Dovecot.
"""

from __future__ import annotations

import base64
import datetime
import logging
import re
import ssl
from pathlib import Path

import pytest
import trio
import trustme

from imapproxy.config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from imapproxy.wire.limits import DEFAULT_LIMITS, Limits
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    Close,
    Expect,
    FakeConnection,
    ImapClient,
    Relay,
    Reset,
    Respond,
    Script,
    Send,
    Stall,
    Tls,
    WaitEof,
    fake_server,
    recording_relay,
    session_lines,
    status_of,
    wait_session_end,
)
from tests.support.proxy import free_port, running_proxy

DOVECOT = pytest.mark.dovecot
LIMIT = 10.0  # absolute ceiling for every test (trio.fail_after)
# For what should happen at once (the proxy closing its upstream connection when a session
# ends): generous for a loaded 2-core machine, still well below what a proxy that did not
# act would take (FAST's 10 s idle timeouts, a server stalling for 30 s or for ever).
PROMPTLY = 5.0

FAST = Timeouts(
    tls_handshake=2.0,
    upstream_connect=0.5,
    upstream_greeting=0.5,
    idle_unauthenticated=10.0,
    idle_authenticated=10.0,
    shutdown_drain=0.2,
    farewell=0.5,
)

GREETING = b"* OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE AUTH=PLAIN] fake ready\r\n"
# Greeting, LOGIN accepted: the session is authenticated from then on.
LOGGED_IN: Script = [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK logged in\r\n")]
UNAVAILABLE_BYE = re.compile(rb"\* BYE \[UNAVAILABLE\] [^\r\n]*\r\n")


def make_config(
    port: int,
    *,
    host: str = "127.0.0.1",
    upstream_tls: UpstreamTls = UpstreamTls.NONE,
    ca_file: Path | str | None = None,
    server_hostname: str | None = None,
    certs: TlsCerts | None = None,
    require_tls_for_login: bool = False,
    limits: Limits = DEFAULT_LIMITS,
    timeouts: Timeouts = FAST,
) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(
            Endpoint(host, port),
            tls=upstream_tls,
            ca_file=str(ca_file) if ca_file is not None else None,
            server_hostname=server_hostname,
        ),
        cert_file=str(certs.cert_path) if certs else None,
        key_file=str(certs.key_path) if certs else None,
        require_tls_for_login=require_tls_for_login,
        limits=limits,
        timeouts=timeouts,
    )


def log_messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


@pytest.fixture(autouse=True)
def _capture_proxy_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")


def assert_no_traceback(*streams: bytes | bytearray) -> None:
    for data in streams:
        assert b"Traceback" not in data, bytes(data)
        assert b'File "' not in data, bytes(data)


async def expect_unavailable_and_close(client: ImapClient) -> bytes:
    """The rest of the stream must be exactly one ``* BYE [UNAVAILABLE] ...`` then EOF."""
    rest = await client.read_until_eof()
    assert UNAVAILABLE_BYE.fullmatch(rest), rest
    assert_no_traceback(client.received)
    return rest


async def session_end(caplog: pytest.LogCaptureFixture, client: ImapClient) -> tuple[str, str]:
    return await wait_session_end(lambda: log_messages(caplog), client.local_port)


async def login_via_proxy(client: ImapClient, user: str = "alice", pw: str = "alicepw") -> None:
    responses = await client.command(b"L1", f"LOGIN {user} {pw}".encode())
    assert status_of(responses[-1]) == b"OK", responses


async def logged_in_client(host: str, port: int) -> ImapClient:
    """A client through the proxy: greeted, then logged in as alice."""
    client = await ImapClient.connect(host, port)
    await client.read_response()
    await login_via_proxy(client)
    return client


async def refused_before_greeting(
    caplog: pytest.LogCaptureFixture, config: ProxyConfig
) -> tuple[bytes, str, str]:
    """Connect through a proxy whose upstream fails before greeting; return the client's
    bytes, the session id and the session's end line (the BYE is checked here)."""
    async with running_proxy(config) as (_, addrs):
        client = await ImapClient.connect(*addrs[0])
        rest = await expect_unavailable_and_close(client)
        sid, end = await session_end(caplog, client)
    return rest, sid, end


# --------------------------------------------------------------------------- before greeting


async def test_upstream_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(LIMIT):
        rest, sid, end = await refused_before_greeting(caplog, make_config(free_port()))
    assert b"cannot connect to upstream" in rest
    assert "reason=upstream_unavailable" in end
    assert sid in end


async def test_upstream_unreachable_by_name(caplog: pytest.LogCaptureFixture) -> None:
    # "localhost" may resolve to ::1 and 127.0.0.1: every attempt fails.
    with trio.fail_after(LIMIT):
        rest, _, end = await refused_before_greeting(
            caplog, make_config(free_port(), host="localhost")
        )
    assert b"cannot connect to upstream" in rest
    assert "reason=upstream_unavailable" in end


async def test_upstream_refuses_with_bye(caplog: pytest.LogCaptureFixture) -> None:
    bye = b"* BYE [UNAVAILABLE] maintenance, come back later\r\n"
    with trio.fail_after(LIMIT):
        async with (
            fake_server([Send(bye), WaitEof()]) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            rest = await client.read_until_eof()
            sid, end = await session_end(caplog, client)
            conn = await fake.connection(0)
            await conn.done.wait()
    assert rest == bye  # the upstream's own BYE, relayed as it was
    assert "reason=upstream_refused" in end and sid in end
    assert conn.received == b""  # the proxy sent the refusing upstream nothing


def _untrusted_cert() -> trustme.LeafCert:
    return trustme.CA().issue_cert("127.0.0.1", "localhost")


def _server_context(leaf: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("problem", ["untrusted_ca", "wrong_name", "expired"])
async def test_upstream_tls_invalid(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, problem: str
) -> None:
    ca = trustme.CA()
    ca_file = tmp_path / "upstream-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))  # the proxy trusts this CA ...
    if problem == "untrusted_ca":
        leaf = _untrusted_cert()  # ... but the upstream's certificate is from another
        expected = "unable to get local issuer certificate"
    elif problem == "wrong_name":
        leaf = ca.issue_cert("imap.example.org")  # trusted, but not for 127.0.0.1
        expected = "IP address mismatch"
    else:
        now = datetime.datetime.now(datetime.UTC)
        leaf = ca.issue_cert(
            "127.0.0.1",
            not_before=now - datetime.timedelta(days=10),
            not_after=now - datetime.timedelta(days=1),
        )
        expected = "expired"
    script: Script = [Tls(_server_context(leaf)), Send(GREETING), Respond()]
    with trio.fail_after(LIMIT):
        async with fake_server(script, expect_errors={0}) as fake:
            config = make_config(fake.port, upstream_tls=UpstreamTls.IMPLICIT, ca_file=ca_file)
            rest, sid, end = await refused_before_greeting(caplog, config)
            conn = await fake.connection(0)
            await conn.done.wait()
    assert rest.startswith(b"* BYE [UNAVAILABLE] upstream TLS failed")
    assert expected in rest.decode(), rest
    assert "reason=upstream_tls_failed" in end and sid in end
    # the handshake failed (the proxy refused the certificate): the fake never got to greet
    assert isinstance(conn.error, trio.BrokenResourceError), repr(conn.error)
    assert isinstance(conn.error.__cause__, ssl.SSLError), repr(conn.error.__cause__)
    assert conn.sent == b""
    assert conn.received == b""


@DOVECOT
async def test_upstream_tls_name_mismatch_dovecot(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    # Dovecot's certificate is valid for localhost/127.0.0.1/::1, not for this name.
    config = make_config(
        dovecot.tls_port,
        upstream_tls=UpstreamTls.IMPLICIT,
        ca_file=dovecot.ca_path,
        server_hostname="imap.example.org",
    )
    with trio.fail_after(LIMIT):
        rest, _, end = await refused_before_greeting(caplog, config)
    assert b"upstream TLS failed" in rest and b"Hostname mismatch" in rest
    assert "reason=upstream_tls_failed" in end


@DOVECOT
async def test_upstream_implicit_tls_dovecot_works(dovecot: DovecotServer) -> None:
    """The control for the TLS failures above: a valid certificate is accepted."""
    config = make_config(
        dovecot.tls_port, upstream_tls=UpstreamTls.IMPLICIT, ca_file=dovecot.ca_path
    )
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            greeting = await client.read_response()
            assert greeting.startswith(b"* OK ")
            await login_via_proxy(client)
            responses = await client.command(b"x", b"LOGOUT")
            assert status_of(responses[-1]) == b"OK"
            await client.read_until_eof()


async def test_upstream_slow_to_greet(caplog: pytest.LogCaptureFixture) -> None:
    with trio.fail_after(LIMIT):
        # never greets in time: 30 s, against a greeting timeout of 0.5 s
        async with fake_server([Stall(30)]) as fake:
            start = trio.current_time()
            rest, sid, end = await refused_before_greeting(caplog, make_config(fake.port))
            elapsed = trio.current_time() - start
            conn = await fake.connection(0)
            with trio.fail_after(PROMPTLY):
                await conn.done.wait()  # the proxy closed its upstream connection
    assert b"upstream sent no greeting in 0.5 s" in rest
    # the configured greeting timeout (0.5 s), not the 30 s stall nor the 10 s default
    assert FAST.upstream_greeting <= elapsed < FAST.upstream_greeting + PROMPTLY
    assert "reason=upstream_unavailable" in end and sid in end


async def test_upstream_tls_never_handshakes(
    caplog: pytest.LogCaptureFixture, tls_certs: TlsCerts
) -> None:
    with trio.fail_after(LIMIT):
        async with fake_server([Stall(30)]) as fake:
            config = make_config(
                fake.port, upstream_tls=UpstreamTls.IMPLICIT, ca_file=tls_certs.ca_path
            )
            rest, _, end = await refused_before_greeting(caplog, config)
    assert b"upstream TLS handshake timed out" in rest
    assert "reason=upstream_tls_failed" in end


GARBAGE = {
    "http": [Send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n"), WaitEof()],
    "binary": [Send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\xff\xfe\n"), WaitEof()],
    "tagged": [Send(b"a1 OK hello\r\n"), WaitEof()],
    "continuation": [Send(b"+ go ahead\r\n"), WaitEof()],
    "data": [Send(b"* 3 EXISTS\r\n"), WaitEof()],
    "nul_in_line": [Send(b"\x00\x00\x00\x00\r\n"), WaitEof()],
    "unterminated_then_close": [Send(b"* OK no line end"), Close()],
    "closes_at_once": [Close()],
    "resets_at_once": [Reset()],
    "overlong_line": [Send(b"* OK " + b"x" * 5000), WaitEof()],
    "garbage_no_newline": [Send(b"\xff" * 300), Stall(30)],
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_upstream_garbage_instead_of_greeting(
    caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    with trio.fail_after(LIMIT):
        async with fake_server(GARBAGE[kind]) as fake:
            config = make_config(fake.port, limits=Limits(max_line_bytes=1024))
            rest, sid, end = await refused_before_greeting(caplog, config)
            conn = await fake.connection(0)
            with trio.fail_after(PROMPTLY):
                await conn.done.wait()
    assert re.search(r"reason=upstream_(protocol|unavailable)", end), end
    assert sid in end
    assert b"\xff" not in rest and b"HTTP" not in rest  # nothing of the garbage is relayed


# --------------------------------------------------------------------------- mid-session


async def test_upstream_continuation_nothing_asked_for_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A "+" that no literal, AUTHENTICATE or IDLE asked for means the server reads the
    client's bytes differently from the proxy (e.g. it took a command for a literal's
    announcement): relaying on could let the client's next bytes run unseen.  The proxy
    does not pass it on; it ends the session."""
    script: Script = [*LOGGED_IN, Expect("NOOP", reply=b"+ send me more\r\n"), Stall()]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await client.send(b"n1 NOOP\r\n")
            rest = await expect_unavailable_and_close(client)
            sid, end = await session_end(caplog, client)
    assert rest == b"* BYE [UNAVAILABLE] proxy and server out of step\r\n"
    assert "reason=upstream_desync" in end and sid in end


async def done_then_ok(conn: FakeConnection) -> None:
    assert await conn.read_line() == b"DONE\r\n"
    await conn.send(b"i1 OK IDLE done\r\n")


async def test_upstream_continuations_during_idle_are_relayed() -> None:
    """Inside IDLE a server may send more "+" lines (keep-alives): relayed, not a desync."""
    script: Script = [
        *LOGGED_IN,
        Expect("IDLE", reply=b"+ idling\r\n+ still here\r\n"),
        done_then_ok,
        Respond(),
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await client.send(b"i1 IDLE\r\n")
            assert await client.read_response() == b"+ idling\r\n"
            assert await client.read_response() == b"+ still here\r\n"
            await client.send(b"DONE\r\n")
            assert status_of((await client.read_until_tagged(b"i1"))[-1]) == b"OK"
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
    assert not fake.errors()


@pytest.mark.parametrize("how", [Close(), Reset()], ids=["fin", "rst"])
async def test_upstream_dies_after_login(
    caplog: pytest.LogCaptureFixture, how: Close | Reset
) -> None:
    with trio.fail_after(LIMIT):
        async with (
            fake_server([*LOGGED_IN, how]) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await expect_unavailable_and_close(client)
            sid, end = await session_end(caplog, client)
    assert "reason=upstream_closed" in end and sid in end


async def test_upstream_dies_with_command_pending(caplog: pytest.LogCaptureFixture) -> None:
    script: Script = [*LOGGED_IN, Expect("NOOP"), Stall(0.2), Close()]
    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake, running_proxy(make_config(fake.port)) as (_, addrs):
            client = await logged_in_client(*addrs[0])
            await client.send(b"n1 NOOP\r\n")
            rest = await expect_unavailable_and_close(client)
            _, end = await session_end(caplog, client)
    assert b"upstream closed" in rest
    assert "reason=upstream_closed" in end


async def test_upstream_bye_mid_session_is_relayed(caplog: pytest.LogCaptureFixture) -> None:
    bye = b"* BYE [UNAVAILABLE] server shutting down\r\n"
    script: Script = [*LOGGED_IN, Expect("NOOP"), Send(bye), Close()]
    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake, running_proxy(make_config(fake.port)) as (_, addrs):
            client = await logged_in_client(*addrs[0])
            await client.send(b"n1 NOOP\r\n")
            rest = await client.read_until_eof()
            _, end = await session_end(caplog, client)
    assert rest == bye  # the upstream's BYE, and no second one from the proxy
    assert_no_traceback(client.received)
    assert "reason=" in end


async def test_upstream_dies_inside_a_literal(caplog: pytest.LogCaptureFixture) -> None:
    """The upstream dies half-way through a (streamed) FETCH literal.  The client has
    already been sent part of the literal: whatever the proxy does, it must not write its
    own text into the message body - the bytes the client gets are exactly the bytes the
    upstream sent, then the connection closes."""
    head = b"* 1 FETCH (BODY[] {200000}\r\n"
    partial = b"y" * 100_000
    script: Script = [*LOGGED_IN, Expect("FETCH"), Send(head + partial), Stall(0.2), Close()]
    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake, running_proxy(make_config(fake.port)) as (_, addrs):
            client = await logged_in_client(*addrs[0])
            await client.send(b"f1 FETCH 1 BODY[]\r\n")
            rest = await client.read_until_eof()
            _, end = await session_end(caplog, client)
    assert "reason=upstream_closed" in end
    assert rest.startswith(head + partial)
    assert rest == head + partial, (
        f"the proxy appended {rest[len(head + partial) :]!r} inside the literal's 100000 "
        "missing bytes: it becomes part of the message body the client reads"
    )


@pytest.mark.parametrize("how", ["fin", "rst"])
async def test_client_vanishes_mid_session(caplog: pytest.LogCaptureFixture, how: str) -> None:
    with trio.fail_after(LIMIT):
        async with (
            fake_server([*LOGGED_IN, WaitEof()]) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            conn = await fake.connection(0)
            await (client.aclose() if how == "fin" else client.reset())
            with trio.fail_after(PROMPTLY):
                await conn.eof.wait()  # the proxy closed the upstream connection
            _, end = await session_end(caplog, client)
    assert "reason=client_closed" in end
    assert conn.error is None


async def test_client_vanishes_with_command_pending(caplog: pytest.LogCaptureFixture) -> None:
    """The client sends a command and vanishes while the upstream is still working on it."""
    with trio.fail_after(LIMIT):
        async with (
            fake_server([*LOGGED_IN, Expect("SEARCH"), WaitEof()]) as fake,
            running_proxy(make_config(fake.port)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await client.send(b"s1 SEARCH ALL\r\n")
            conn = await fake.connection(0)
            await conn.wait_received(b"s1 SEARCH ALL\r\n")
            await client.aclose()
            with trio.fail_after(PROMPTLY):
                await conn.eof.wait()
            _, end = await session_end(caplog, client)
    assert "reason=client_closed" in end


async def test_client_vanishes_while_waiting_for_continuation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client announces a synchronising literal and vanishes while the (slow) upstream
    has not yet sent ``+``.  The proxy must still notice the client is gone and close the
    upstream connection promptly, not hold it until the upstream answers (or for the
    31-minute idle timeout if it never does)."""

    # "a1 APPEND INBOX {5}" gets no "+" (Stall records it); the proxy must close.
    script: Script = [*LOGGED_IN, Stall()]
    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake, running_proxy(make_config(fake.port)) as (_, addrs):
            client = await logged_in_client(*addrs[0])
            await client.send(b"a1 APPEND INBOX {5}\r\n")
            conn = await fake.connection(0)
            await conn.wait_received(b"APPEND INBOX {5}\r\n")
            await client.aclose()
            with trio.move_on_after(PROMPTLY):
                await conn.eof.wait()
    assert conn.eof.is_set(), (
        f"the proxy kept the upstream connection open {PROMPTLY:g}s after the client had "
        "gone (it does not read from a client that waits for a continuation request)"
    )


async def test_upstream_protocol_violation_mid_session(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(max_line_bytes=1024)
    overflow = b"* 1 FETCH (BODY[] {" + b"9" * 25 + b"}\r\n" + b"z" * 100  # no such length
    script: Script = [*LOGGED_IN, Expect("NOOP"), Send(overflow), WaitEof()]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, limits=limits)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await client.send(b"n1 NOOP\r\n")
            rest = await expect_unavailable_and_close(client)
            sid, end = await session_end(caplog, client)
            conn = await fake.connection(0)
            with trio.fail_after(PROMPTLY):
                await conn.eof.wait()
    assert b"z" not in rest  # not a byte of the bad response reached the client
    assert "reason=upstream_protocol_error" in end
    warnings = session_lines(log_messages(caplog), sid)
    assert any("upstream protocol error: literal length overflow" in w for w in warnings)


async def test_client_protocol_violation_mid_session(caplog: pytest.LogCaptureFixture) -> None:
    limits = Limits(max_line_bytes=1024)
    with trio.fail_after(LIMIT):
        async with (
            fake_server([*LOGGED_IN, WaitEof()]) as fake,
            running_proxy(make_config(fake.port, limits=limits)) as (_, addrs),
        ):
            client = await logged_in_client(*addrs[0])
            await client.send(b"x1 NOOP " + b"q" * 5000 + b"\r\n")
            rest = await client.read_until_eof()
            _, end = await session_end(caplog, client)
            conn = await fake.connection(0)
            with trio.fail_after(PROMPTLY):
                await conn.eof.wait()
    assert re.fullmatch(rb"\* BYE [^\r\n]*line too long[^\r\n]*\r\n", rest), rest
    assert_no_traceback(client.received)
    assert b"q" * 100 not in conn.received  # the over-long line never went upstream
    assert "reason=client_protocol_error" in end


@DOVECOT
async def test_failing_sessions_do_not_affect_others(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    """Healthy sessions (relayed to Dovecot) go on while others fail in every way."""
    relay: Script = [Relay(dovecot.host, dovecot.port)]
    faults: dict[int, Script] = {
        1: [*LOGGED_IN, Expect("NOOP"), Send(b"* 1 FETCH {" + b"9" * 25 + b"}\r\n"), WaitEof()],
        2: [*LOGGED_IN, Reset()],
        3: [Stall(30)],
        4: [Send(b"garbage\r\n"), WaitEof()],
    }

    def script(index: int) -> Script:
        return faults.get(index, relay)

    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake, running_proxy(make_config(fake.port)) as (_, addrs):
            healthy = await ImapClient.connect(*addrs[0])
            assert (await healthy.read_response()).startswith(b"* OK")
            await login_via_proxy(healthy)
            assert status_of((await healthy.command(b"s", b"SELECT INBOX"))[-1]) == b"OK"
            # A command in flight at Dovecot while the others fail.
            await healthy.send(b"h1 NOOP\r\n")

            async def failing(index: int) -> None:
                client = await ImapClient.connect(*addrs[0])
                await fake.connection(index)
                if index in (1, 2):
                    await client.read_response()
                    await login_via_proxy(client)
                    if index == 1:
                        await client.send(b"n NOOP\r\n")
                await expect_unavailable_and_close(client)

            for index in sorted(faults):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(failing, index)
                # connect the next one only after this one got its upstream connection

            # A client-side failure too (over-long line), relayed to Dovecot.
            bad = await ImapClient.connect(*addrs[0])
            await bad.read_response()
            await bad.send(b"x LOGIN " + b"a" * 70_000 + b"\r\n")
            rest = await bad.read_until_eof()
            assert rest.startswith(b"* BYE") and b"line too long" in rest

            # The healthy session never noticed.
            assert status_of((await healthy.read_until_tagged(b"h1"))[-1]) == b"OK"
            fetched = await healthy.command(b"h2", b"UID FETCH 1:* (FLAGS)")
            assert status_of(fetched[-1]) == b"OK"
            # The listener still accepts and serves new sessions.
            fresh = await ImapClient.connect(*addrs[0])
            assert (await fresh.read_response()).startswith(b"* OK")
            await login_via_proxy(fresh, "bob", "bobpw")
            for c in (healthy, fresh):
                assert status_of((await c.command(b"z", b"LOGOUT"))[-1]) == b"OK"
                await c.read_until_eof()
            assert_no_traceback(healthy.received, fresh.received, bad.received)
    assert not [e for i, e in enumerate(fake.errors()) if i not in faults]


# --------------------------------------------------------------------------- STARTTLS


@DOVECOT
async def test_client_starttls_injection_is_discarded(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    with trio.fail_after(LIMIT):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            config = make_config(relay.port, certs=tls_certs)
            async with running_proxy(config) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                greeting = await client.read_response()
                assert b" STARTTLS" in greeting
                injected = b"b CAPABILITY\r\n"
                await client.send(b"a STARTTLS\r\n" + injected)  # one write
                assert await client.read_until_tagged(b"a") == [
                    b"a OK Begin TLS negotiation now\r\n"
                ]
                await client.starttls(tls_certs.client_context(), "localhost")
                after = await client.command(b"c", b"NOOP")
                await client.command(b"d", b"LOGOUT")
                after += [await client.read_until_eof()]
                sid, _ = await session_end(caplog, client)
            upstream = await relay.connection(0)
            await upstream.done.wait()
    assert not any(r.startswith(b"b ") or b"CAPABILITY" in r for r in after), after
    assert bytes(upstream.received) == b"c NOOP\r\nd LOGOUT\r\n"  # b was never executed
    lines = session_lines(log_messages(caplog), sid)
    assert any(f"discarded {len(injected)} bytes" in line for line in lines), lines
    assert any(f"starttls_discarded={len(injected)} " in line for line in lines), lines


@DOVECOT
async def test_client_starttls_does_not_carry_plaintext_commands_into_tls(
    dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    """A man in the middle prepends a plaintext command to the client's STARTTLS (the
    STARTTLS command-injection attack, here a LOGIN as the attacker).  Dovecot itself
    answers it first and then refuses STARTTLS (no longer "not authenticated").  The proxy
    may do the same, or refuse STARTTLS; it must not accept STARTTLS and then run the
    plaintext command inside the new TLS session, where its answer looks authentic and
    the "secure" session ends up logged in as the attacker."""
    with trio.fail_after(LIMIT):
        async with (
            recording_relay(dovecot.host, dovecot.port) as relay,
            running_proxy(make_config(relay.port, certs=tls_certs)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            await client.send(b"x LOGIN bob bobpw\r\na STARTTLS\r\n")  # one write
            before_tls = await client.read_until(b"a ")
            inside_tls = b""
            if before_tls[-1].startswith(b"a OK"):
                await client.starttls(tls_certs.client_context(), "localhost")
                mark = len(client.received)
                await client.command(b"c", b"NOOP")
                inside_tls = bytes(client.received[mark:])
            await client.aclose()
            upstream = await relay.connection(0)
            await upstream.done.wait()
    assert not re.search(rb"(?m)^x ", inside_tls), (
        f"the proxy said {before_tls[-1]!r} while 'x LOGIN' was still unanswered, forwarded "
        f"x only after the TLS handshake, and x's answer came inside TLS: {inside_tls!r}; "
        f"Dovecot received {bytes(upstream.received)!r}"
    )


def _upstream_starttls_script(tls_certs: TlsCerts, after_ok: bytes) -> Script:
    return [
        Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] fake ready\r\n"),
        # The OK and the injected bytes leave in one write, before any TLS.
        Expect("STARTTLS", reply=b"{tag} OK Begin TLS now\r\n" + after_ok),
        Tls(tls_certs.server_context()),
        Expect(
            "CAPABILITY",
            reply=b"* CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN\r\n{tag} OK done\r\n",
        ),
        Respond(),
    ]


@pytest.mark.parametrize(
    "injected",
    [
        b"* OK injected\r\n",
        b"* CAPABILITY IMAP4rev1 injected\r\n",
        b"a1 OK [CAPABILITY IMAP4rev1] injected LOGIN done\r\n",
        b"* 1 FETCH (BODY[] {8}\r\ninjected)\r\n",
    ],
    ids=["untagged", "capability", "tagged", "literal"],
)
async def test_upstream_starttls_injection_is_discarded(
    caplog: pytest.LogCaptureFixture, tls_certs: TlsCerts, injected: bytes
) -> None:
    with trio.fail_after(LIMIT):
        async with fake_server(_upstream_starttls_script(tls_certs, injected)) as fake:
            config = make_config(
                fake.port, upstream_tls=UpstreamTls.STARTTLS, ca_file=tls_certs.ca_path
            )
            async with running_proxy(config) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                greeting = await client.read_response()
                # the greeting now carries the capabilities the upstream gave under TLS
                assert greeting == (
                    b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] fake ready\r\n"
                )
                assert status_of((await client.command(b"a1", b"NOOP"))[-1]) == b"OK"
                await login_via_proxy(client)
                await client.command(b"z", b"LOGOUT")
                await client.read_until_eof()
                sid, _ = await session_end(caplog, client)
    assert b"injected" not in client.received
    lines = session_lines(log_messages(caplog), sid)
    assert any(f"sent {len(injected)} bytes after its STARTTLS OK" in x for x in lines), lines
    assert not fake.errors()


@DOVECOT
async def test_upstream_starttls_dovecot_works(dovecot: DovecotServer, tls_certs: TlsCerts) -> None:
    """Control for the STARTTLS failures: Dovecot's STARTTLS is used, and its STARTTLS
    capability never reaches the client (the proxy has no certificate to offer one)."""
    config = make_config(dovecot.port, upstream_tls=UpstreamTls.STARTTLS, ca_file=dovecot.ca_path)
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            greeting = await client.read_response()
            assert greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ")
            assert b"STARTTLS" not in greeting and b"LOGINDISABLED" not in greeting
            caps = await client.command(b"c", b"CAPABILITY")
            assert b"STARTTLS" not in caps[0] and b"AUTH=PLAIN" in caps[0]
            await login_via_proxy(client)
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()


@pytest.mark.parametrize(
    "script",
    [
        [Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] no tls here\r\n"), WaitEof()],
        [Send(b"* OK no capabilities in the greeting\r\n"), Respond()],
        [
            Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
            Expect("STARTTLS", reply=b"{tag} NO [UNAVAILABLE] TLS is broken today\r\n"),
            WaitEof(),
        ],
        [
            Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
            Expect("STARTTLS", reply=b"{tag} BAD unknown command\r\n"),
            WaitEof(),
        ],
        [
            Send(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n"),
            Expect("STARTTLS", reply=b"{tag} OK go\r\n"),
            Send(b"this is not TLS\r\n"),
            WaitEof(allow_data=True),  # the proxy's ClientHello (checked below)
        ],
    ],
    ids=["not_offered", "not_in_capability_reply", "refused_no", "refused_bad", "no_tls"],
)
async def test_upstream_starttls_failure_is_hard(
    caplog: pytest.LogCaptureFixture, tls_certs: TlsCerts, script: Script
) -> None:
    with trio.fail_after(LIMIT):
        async with fake_server(script) as fake:
            config = make_config(
                fake.port, upstream_tls=UpstreamTls.STARTTLS, ca_file=tls_certs.ca_path
            )
            rest, sid, end = await refused_before_greeting(caplog, config)
            conn = await fake.connection(0)
            await conn.done.wait()
    assert "reason=upstream_tls_failed" in end and sid in end
    assert rest.startswith(b"* BYE [UNAVAILABLE] upstream")
    # No plaintext fallback: nothing but the proxy's own CAPABILITY/STARTTLS went upstream.
    for command in conn.commands:
        assert re.fullmatch(rb"IMAPPROXY\d+ (CAPABILITY|STARTTLS)\r\n", command), command
    commands = b"".join(conn.commands)
    assert conn.received.startswith(commands)
    after = conn.received[len(commands) :]
    assert not after or after.startswith(b"\x16\x03"), after  # at most a TLS ClientHello


# --------------------------------------------------------------------------- login policy


@DOVECOT
async def test_logindisabled_until_starttls(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    plain_b64 = base64.b64encode(b"\x00alice\x00alicepw")
    with trio.fail_after(LIMIT):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            config = make_config(relay.port, certs=tls_certs, require_tls_for_login=True)
            async with running_proxy(config) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                greeting = await client.read_response()
                for caps in (greeting, (await client.command(b"c1", b"CAPABILITY"))[0]):
                    assert b" LOGINDISABLED" in caps and b" STARTTLS" in caps, caps
                    assert b"AUTH=" not in caps, caps
                refused = [
                    await client.command(b"l1", b"LOGIN alice alicepw"),
                    await client.command(b"l2", b'LOGIN "alice" "alicepw"'),
                    await client.command(b"l3", b"AUTHENTICATE PLAIN " + plain_b64),
                    await client.command(b"l4", b"AUTHENTICATE PLAIN"),
                    # a synchronising literal: refused before the client sends it
                    await client.command(b"l5", b"LOGIN alice {7}"),
                    await client.command(b"l6", b"LOGIN {5}"),
                ]
                for responses in refused:
                    assert len(responses) == 1, responses
                    assert re.fullmatch(rb"l\d NO \[PRIVACYREQUIRED\] [^\r\n]*\r\n", responses[0])
                # non-synchronising literals: refused all the same, literals eaten
                nonsync = await client.command(b"l8", b"LOGIN {5+}\r\nalice {7+}\r\nalicepw")
                assert len(nonsync) == 1, nonsync
                assert nonsync[0].startswith(b"l8 NO [PRIVACYREQUIRED] "), nonsync
                # the session goes on
                assert status_of((await client.command(b"n1", b"NOOP"))[-1]) == b"OK"
                assert (await client.command(b"s", b"STARTTLS"))[-1].startswith(b"s OK")
                await client.starttls(tls_certs.client_context(), "localhost")
                caps = (await client.command(b"c2", b"CAPABILITY"))[0]
                assert b"LOGINDISABLED" not in caps and b"STARTTLS" not in caps
                assert b"AUTH=PLAIN" in caps
                assert status_of((await client.command(b"l7", b"LOGIN alice alicepw"))[-1]) == (
                    b"OK"
                )
                await client.command(b"z", b"LOGOUT")
                await client.read_until_eof()
            upstream = await relay.connection(0)
            await upstream.done.wait()
    to_dovecot = bytes(upstream.received)
    assert to_dovecot == (
        b"c1 CAPABILITY\r\nn1 NOOP\r\nc2 CAPABILITY\r\nl7 LOGIN alice alicepw\r\nz LOGOUT\r\n"
    )
    assert "alicepw" not in caplog.text


@DOVECOT
async def test_compress_is_refused_and_session_goes_on(
    dovecot: DovecotServer,
) -> None:
    with trio.fail_after(LIMIT):
        async with recording_relay(dovecot.host, dovecot.port) as relay:
            async with running_proxy(make_config(relay.port)) as (_, addrs):
                client = await logged_in_client(*addrs[0])
                caps = (await client.command(b"c", b"CAPABILITY"))[0]
                assert b"COMPRESS" not in caps and b"IDLE" in caps
                refused = await client.command(b"z1", b"COMPRESS DEFLATE")
                assert len(refused) == 1 and refused[0].startswith(b"z1 NO "), refused
                # still plaintext IMAP, still the same session
                selected = await client.command(b"z2", b"SELECT INBOX")
                assert status_of(selected[-1]) == b"OK"
                assert status_of((await client.command(b"z3", b"NOOP"))[-1]) == b"OK"
                await client.command(b"z4", b"LOGOUT")
                await client.read_until_eof()
            upstream = await relay.connection(0)
            await upstream.done.wait()
    assert b"COMPRESS" not in upstream.received
    assert b"COMPRESS=DEFLATE" in upstream.sent  # Dovecot offered it; the proxy hid it
    assert b"COMPRESS" not in client.received.replace(b"z1 NO [CANNOT] COMPRESS", b"")
