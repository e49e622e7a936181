"""Timers before and after login, and the end reasons that name the side that stalled.

* the login deadline (``Timeouts.login_timeout``) runs from connect until the session is
  authenticated, and no byte moves it;
* after login, only the client decoder's progress (a frame, a literal chunk) moves the
  idle timer: the bytes of a line that never ends do not, a literal's bytes do;
* the client's stall (mid-line, mid-literal) is ``client_stalled``/``login_timeout``, never
  ``upstream_stalled``, which is kept for a server that is silent while the client waits;
* a server's own BYE is ``upstream_bye``, not a LOGOUT; ``STARTTLS extra`` gets BAD.

Every timeout a test needs is set short here; waits are on EOF or log lines, bounded by
``LIMIT`` only (no tight windows).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import pytest
import trio

from imapproxy.config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    Close,
    Expect,
    ImapClient,
    Script,
    Send,
    Stall,
    WaitEof,
    fake_server,
    status_of,
    wait_session_end,
)
from tests.support.proxy import running_proxy

DOVECOT = pytest.mark.dovecot
LIMIT = 12.0  # outer bound of every test; the timers under test are 1-2 s
LONG = 60.0  # a timer that must not be the one that fires

LOGIN_TIMEOUT = 1.0
IDLE = 1.0


def make_config(port: int, timeouts: Timeouts, certs: TlsCerts | None = None) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port), tls=UpstreamTls.NONE),
        cert_file=str(certs.cert_path) if certs else None,
        key_file=str(certs.key_path) if certs else None,
        timeouts=timeouts,
    )


def timeouts(
    *,
    login: float = LONG,
    idle_unauthenticated: float = LONG,
    idle: float = LONG,
    answer: float = LONG,
) -> Timeouts:
    return Timeouts(
        tls_handshake=5.0,
        upstream_connect=5.0,
        upstream_greeting=5.0,
        login_timeout=login,
        idle_unauthenticated=idle_unauthenticated,
        idle_authenticated=idle,
        answer_timeout=answer,
        shutdown_drain=0.2,
        farewell=0.5,
    )


@pytest.fixture(autouse=True)
def _capture_proxy_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")


def messages(caplog: pytest.LogCaptureFixture) -> Callable[[], list[str]]:
    return lambda: [r.getMessage() for r in caplog.records]


def reason(end: str) -> str:
    m = re.search(r" reason=(\S+)", end)
    assert m, end
    return m.group(1)


async def greeted(host: str, port: int) -> ImapClient:
    client = await ImapClient.connect(host, port)
    greeting = await client.read_response()
    assert greeting.startswith(b"* OK"), greeting
    return client


async def login(client: ImapClient, user: str = "alice", password: str = "alicepw") -> None:
    responses = await client.command(b"L1", f'LOGIN "{user}" "{password}"'.encode())
    assert status_of(responses[-1]) == b"OK", responses


async def drip(client: ImapClient, data: bytes, every: float) -> None:
    """Send ``data`` one byte at a time, then go on with "x"s, until the proxy closes."""
    i = 0
    try:
        while True:
            await client.send(data[i : i + 1] if i < len(data) else b"x")
            i += 1
            await trio.sleep(every)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        return


async def dripped_until_eof(client: ImapClient, data: bytes, every: float) -> tuple[bytes, float]:
    """Drip until the proxy closes; returns what the client read meanwhile and how long
    the drip went on."""
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip, client, data, every)
        rest = await client.read_until_eof()
        nursery.cancel_scope.cancel()
    return rest, trio.current_time() - start


# --------------------------------------------------------------------------- before login


@DOVECOT
async def test_dripping_clients_are_cut_at_the_login_timeout(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    """Clients that send a byte every 0.3 s and never a line end used to be kept alive by
    their bytes (each reset the pre-login idle timer).  The login deadline ends them all,
    however many bytes they send."""
    config = make_config(dovecot.port, timeouts(login=LOGIN_TIMEOUT))
    results: list[tuple[ImapClient, bytes, float]] = []

    async def one(host: str, port: int) -> None:
        connected = trio.current_time()
        client = await greeted(host, port)
        rest, _ = await dripped_until_eof(client, b"a1 LOGIN alice", 0.3)
        results.append((client, rest, trio.current_time() - connected))

    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs), trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one, *addrs[0])
        ends = [await wait_session_end(messages(caplog), c.local_port) for c, _, _ in results]
    assert len(results) == 5
    for client, rest, lasted in results:
        assert rest == b"* BYE Autologout; login timeout\r\n", rest
        assert lasted >= LOGIN_TIMEOUT * 0.95, lasted  # the deadline runs from connect
        assert len(client.sent) >= 3  # it did keep sending
    for _, end in ends:
        assert reason(end) == "login_timeout", end
        assert "not logged in after 1 s" in end, end


@DOVECOT
async def test_login_literal_left_unfinished_is_the_clients_stall(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    """``a LOGIN alice {100}``, the server's "+", 5 bytes, silence: the client owes 95
    bytes.  The login deadline ends it and the log names the client - it used to switch
    to the answer timeout and blame the server (``upstream_stalled``)."""
    config = make_config(dovecot.port, timeouts(login=LOGIN_TIMEOUT, answer=2 * LOGIN_TIMEOUT))
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await greeted(*addrs[0])
            await client.send(b"a LOGIN alice {100}\r\n")
            assert (await client.read_response()).startswith(b"+")
            await client.send(b"alice")
            rest = await client.read_until_eof()
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert rest == b"* BYE Autologout; login timeout\r\n", rest
    assert reason(end) == "login_timeout", end
    assert "client stalled in the middle of a message" in end, end
    assert "upstream" not in end


async def test_login_deadline_counts_the_servers_silence_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that never answers LOGIN: the login deadline (shorter than the answer
    timeout) still ends the session, and the detail says the server owed the answer."""
    script: Script = [Send(b"* OK [CAPABILITY IMAP4rev1] fake\r\n"), Expect("LOGIN"), Stall()]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, timeouts(login=LOGIN_TIMEOUT))) as (_, addrs),
        ):
            client = await greeted(*addrs[0])
            await client.send(b"a LOGIN alice alicepw\r\n")
            rest = await client.read_until_eof()
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert rest == b"* BYE Autologout; login timeout\r\n", rest
    assert reason(end) == "login_timeout", end
    assert "waiting for the server's answer" in end, end


@DOVECOT
async def test_login_deadline_ends_at_login(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    """Once logged in, the login deadline is over: a session may then sit quietly (well
    within its idle timeout) past it."""
    config = make_config(dovecot.port, timeouts(login=LOGIN_TIMEOUT))
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await greeted(*addrs[0])
            await login(client)
            await trio.sleep(LOGIN_TIMEOUT * 1.5)
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
            assert await client.read_until_eof() == b""
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert reason(end) == "logout", end


async def test_preauth_greeting_has_no_login_deadline(caplog: pytest.LogCaptureFixture) -> None:
    """A PREAUTH greeting authenticates the session: no login deadline (a server that
    PREAUTHs is not something Dovecot does on a network port, hence the fake)."""
    script: Script = [
        Send(b"* PREAUTH [CAPABILITY IMAP4rev1] fake\r\n"),
        Expect("NOOP", reply=b"{tag} OK noop\r\n"),
        WaitEof(),
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, timeouts(login=LOGIN_TIMEOUT))) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            assert (await client.read_response()).startswith(b"* PREAUTH")
            await trio.sleep(LOGIN_TIMEOUT * 1.5)
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            await client.aclose()
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert reason(end) == "client_closed", end
    assert not fake.errors()


# --------------------------------------------------------------------------- after login


def message(size: int) -> bytes:
    head = b"From: a@example.org\r\nSubject: slow\r\n\r\n"
    line = b"y" * 70 + b"\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head + body)[:size]


@DOVECOT
async def test_after_login_a_line_that_never_ends_is_idle_but_a_slow_literal_is_not(
    caplog: pytest.LogCaptureFixture,
    dovecot: DovecotServer,
    new_user: Callable[[], tuple[str, str]],
) -> None:
    """Two sessions at once, idle timeout 1 s.  One drips the bytes of a command line that
    never ends: that is no activity, and it is ended by the idle timeout (``client_stalled``:
    it stopped mid-line).  The other sends a 300 KB APPEND literal slowly but steadily over
    about three idle timeouts: literal bytes are progress, and it completes."""
    user, password = new_user()
    config = make_config(dovecot.port, timeouts(idle=IDLE))
    data = message(300_000)
    appended: list[bytes] = []

    async def dripper(host: str, port: int) -> tuple[ImapClient, bytes, float]:
        client = await greeted(host, port)
        await login(client, user, password)
        rest, lasted = await dripped_until_eof(client, b"s1 SEARCH SUBJECT ", 0.2)
        return client, rest, lasted

    async def appender(host: str, port: int) -> None:
        client = await greeted(host, port)
        await login(client, user, password)
        await client.send(b"a1 APPEND INBOX {%d}\r\n" % len(data))
        assert (await client.read_response()).startswith(b"+")
        step = len(data) // 30
        for i in range(0, len(data), step):  # ~3 s: three idle timeouts
            await client.send(data[i : i + step])
            await trio.sleep(0.1)
        await client.send(b"\r\n")
        appended.extend(await client.read_until_tagged(b"a1"))
        await client.command(b"z", b"LOGOUT")

    dripped: list[tuple[ImapClient, bytes, float]] = []
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            async with trio.open_nursery() as nursery:

                async def run_dripper() -> None:
                    dripped.append(await dripper(*addrs[0]))

                nursery.start_soon(run_dripper)
                nursery.start_soon(appender, *addrs[0])
            client, rest, lasted = dripped[0]
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert rest == b"* BYE Autologout; idle for too long\r\n", rest
    assert lasted >= IDLE * 0.5, lasted  # (the timer started at login, before the drip)
    assert reason(end) == "client_stalled", end
    assert status_of(appended[-1]) == b"OK", appended
    assert b"BYE" not in b"".join(appended)


@DOVECOT
@pytest.mark.parametrize("marker", [b"", b"+"], ids=["sync", "nonsync"])
async def test_append_literal_stopped_midway_is_the_clients_stall(
    caplog: pytest.LogCaptureFixture,
    dovecot: DovecotServer,
    new_user: Callable[[], tuple[str, str]],
    marker: bytes,
) -> None:
    """An APPEND whose literal (``{n}`` after the "+", or ``{n+}``) stops a third of the
    way: the client owes the rest, so its idle timeout ends the session as
    ``client_stalled`` - not the answer timeout as ``upstream_stalled`` (the command is in
    progress, but the server is not the one that stalled)."""
    user, password = new_user()
    config = make_config(dovecot.port, timeouts(idle=IDLE, answer=2.5 * IDLE))
    size = 300_000
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await greeted(*addrs[0])
            await login(client, user, password)
            await client.send(b"a1 APPEND INBOX {%d%s}\r\n" % (size, marker))
            if not marker:
                assert (await client.read_response()).startswith(b"+")
            await client.send(message(size)[: size // 3])
            start = trio.current_time()
            rest = await client.read_until_eof()
            waited = trio.current_time() - start
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert reason(end) == "client_stalled", end
    assert "client stopped in the middle of a message" in end, end
    assert rest == b"* BYE Autologout; idle for too long\r\n", rest
    assert waited >= IDLE * 0.5, waited  # (it started at the "+", a little earlier)


async def test_silent_server_with_the_client_waiting_is_upstream_stalled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server never sends the "+" the client waits for (the client owes nothing, even
    though it sends a few bytes early, which are only held): that is the server's stall,
    ``upstream_stalled`` after the answer timeout, whatever the idle timeout."""
    script: Script = [
        Send(b"* OK [CAPABILITY IMAP4rev1] fake\r\n"),
        Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
        Stall(),
    ]
    answer = 2 * IDLE
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, timeouts(idle=IDLE, answer=answer))) as (
                _,
                addrs,
            ),
        ):
            client = await greeted(*addrs[0])
            await login(client)
            start = trio.current_time()
            await client.send(b"a1 APPEND INBOX {5}\r\n")
            conn = await fake.connection(0)
            await conn.wait_received(b"a1 APPEND INBOX {5}\r\n")
            await client.send(b"he")  # early, before any "+": held by the proxy
            rest = await client.read_until_eof()
            waited = trio.current_time() - start
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert rest == b"* BYE [UNAVAILABLE] upstream stopped answering\r\n", rest
    assert reason(end) == "upstream_stalled", end
    assert waited >= answer * 0.95, waited  # the answer timeout, not the idle one


# --------------------------------------------------------------------------- server BYE


LONG_TEXT = b"shutting down \x1b[31mnow\x1b[0m \\ " + b"z" * 2000


@pytest.mark.parametrize("who_closes", ["server", "client"])
async def test_server_bye_is_logged_as_the_servers(
    caplog: pytest.LogCaptureFixture, who_closes: str
) -> None:
    """A server that says BYE by itself (shutting down, its own idle timeout) and closes -
    or whose client closes on reading it - ended the session, not a LOGOUT: reason
    ``upstream_bye``, its text escaped and cut short in the detail."""
    bye = b"* BYE [UNAVAILABLE] " + LONG_TEXT + b"\r\n"
    then = Close() if who_closes == "server" else WaitEof()
    script: Script = [
        Send(b"* OK [CAPABILITY IMAP4rev1] fake\r\n"),
        Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
        Expect("NOOP"),
        Send(bye),
        then,
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, timeouts())) as (_, addrs),
        ):
            client = await greeted(*addrs[0])
            await login(client)
            await client.send(b"n1 NOOP\r\n")
            if who_closes == "server":
                rest = await client.read_until_eof()
            else:
                rest = await client.read_response()
                await client.aclose()
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert rest == bye
    assert reason(end) == "upstream_bye", end
    assert "upstream said BYE: [UNAVAILABLE] shutting down \\x1b[31mnow\\x1b[0m \\ zzz" in end
    assert "\x1b" not in end
    assert len(end) < 600, end  # 2000 bytes of BYE text are not all logged
    assert "logged out" not in end


@DOVECOT
async def test_logout_is_still_logout(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    """The BYE that answers the client's LOGOUT keeps the reason ``logout``."""
    with trio.fail_after(LIMIT):
        async with running_proxy(make_config(dovecot.port, timeouts())) as (_, addrs):
            client = await greeted(*addrs[0])
            await login(client)
            responses = await client.command(b"z", b"LOGOUT")
            assert responses[0].startswith(b"* BYE"), responses
            assert await client.read_until_eof() == b""
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert reason(end) == "logout", end


# --------------------------------------------------------------------------- STARTTLS


@DOVECOT
@pytest.mark.parametrize("command", [b"STARTTLS extra", b"STARTTLS ", b"starttls x y"])
async def test_starttls_with_arguments_is_refused(
    caplog: pytest.LogCaptureFixture,
    dovecot: DovecotServer,
    tls_certs: TlsCerts,
    command: bytes,
) -> None:
    """STARTTLS takes no arguments: a tagged BAD from the proxy (never forwarded, no TLS
    switch), and the plaintext session goes on - STARTTLS proper still works after it."""
    config = make_config(dovecot.port, timeouts(), certs=tls_certs)
    with trio.fail_after(LIMIT):
        async with running_proxy(config) as (_, addrs):
            client = await greeted(*addrs[0])
            refused = await client.command(b"s1", command)
            assert len(refused) == 1 and refused[0].startswith(b"s1 BAD "), refused
            assert status_of((await client.command(b"n1", b"NOOP"))[-1]) == b"OK"
            assert (await client.command(b"s2", b"STARTTLS"))[-1].startswith(b"s2 OK")
            await client.starttls(tls_certs.client_context(), "localhost")
            await login(client)
            await client.command(b"z", b"LOGOUT")
            _, end = await wait_session_end(messages(caplog), client.local_port)
    assert reason(end) == "logout", end
