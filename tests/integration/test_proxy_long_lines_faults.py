"""Long server lines Dovecot does not send, from the scripted fake server (issue 8 §1):
a tagged completion with a huge text, a capability list over the line limit, a greeting
that long.  The proxy runs in-process (``running_proxy``) with a small ``max_line_bytes``.
"""

from __future__ import annotations

import logging

import pytest
import trio

from imapproxy.wire.limits import Limits
from tests.support.fakeserver import (
    Expect,
    ImapClient,
    Respond,
    Send,
    WaitEof,
    fake_server,
    session_lines,
    status_of,
)
from tests.support.proxy import running_proxy

from .test_proxy_faults import (
    GREETING,
    LIMIT,
    expect_unavailable_and_close,
    log_messages,
    make_config,
    session_end,
)

LINES = Limits(max_line_bytes=1024)


@pytest.fixture(autouse=True)
def _capture_proxy_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")


async def test_login_completed_by_a_tagged_ok_with_a_huge_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ok = b"{tag} OK [CAPABILITY IMAP4rev1 IDLE] " + b"welcome " * 20_000 + b"\r\n"
    script = [Send(GREETING), Expect("LOGIN", reply=ok), Respond()]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, limits=LINES)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            reply = await client.command(b"L1", b"LOGIN alice alicepw")
            assert reply == [ok.replace(b"{tag}", b"L1")]  # relayed byte for byte
            # the completion was tracked from the first piece: the session is logged in
            # (the user is known), and commands go on in step
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            assert status_of((await client.command(b"z", b"LOGOUT"))[-1]) == b"OK"
            sid, end = await session_end(caplog, client)
            assert not fake.errors()
    assert "user=alice" in end
    assert any("authenticated as alice" in m for m in session_lines(log_messages(caplog), sid))


async def test_capability_list_over_the_line_limit_is_relayed_unmediated(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caps = b" ".join(b"X-EXT%d" % i for i in range(300)) + b" COMPRESS=DEFLATE STARTTLS"
    answer = b"* CAPABILITY IMAP4rev1 " + caps + b"\r\n{tag} OK done\r\n"
    script = [Send(GREETING), Respond({"CAPABILITY": answer})]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, limits=LINES)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            reply = await client.command(b"c", b"CAPABILITY")
            # as the server sent it: STARTTLS and COMPRESS=DEFLATE included
            assert reply == [b"* CAPABILITY IMAP4rev1 " + caps + b"\r\n", b"c OK done\r\n"]
            # COMPRESS stays refused by the proxy, whatever the list said
            compress = await client.command(b"d", b"COMPRESS DEFLATE")
            assert compress[-1].startswith(b"d NO")
            sid, _ = await session_end_after_logout(caplog, client)
            assert not fake.errors()
    lines = session_lines(log_messages(caplog), sid)
    assert any("capability list longer than the line limit relayed unmediated" in m for m in lines)


async def session_end_after_logout(
    caplog: pytest.LogCaptureFixture, client: ImapClient
) -> tuple[str, str]:
    await client.command(b"z", b"LOGOUT")
    return await session_end(caplog, client)


@pytest.mark.parametrize("literal", [False, True])
async def test_long_fetch_line_with_a_literal_at_its_end(literal: bool) -> None:
    envelope = b'ENVELOPE (NIL "' + b"s" * 5000 + b'" NIL NIL NIL NIL NIL NIL NIL NIL)'
    body = b"Subject: x\r\n\r\n" + b"b" * 3000 + b"\r\n"
    if literal:
        fetch = b"* 1 FETCH (" + envelope + b" BODY[] {%d}\r\n" % len(body) + body + b")\r\n"
    else:
        fetch = b"* 1 FETCH (" + envelope + b")\r\n"
    script = [
        Send(GREETING),
        Expect("LOGIN", reply=b"{tag} OK logged in\r\n"),
        Expect("FETCH", reply=fetch + b"{tag} OK done\r\n"),
        Respond(),
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(make_config(fake.port, limits=LINES)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            await client.command(b"L", b"LOGIN alice alicepw")
            reply = await client.command(b"f", b"FETCH 1 (ENVELOPE BODY[])")
            assert reply == [fetch, b"f OK done\r\n"]
            assert status_of((await client.command(b"n", b"NOOP"))[-1]) == b"OK"
            assert not fake.errors()


async def test_greeting_over_the_line_limit_ends_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    greeting = b"* OK [CAPABILITY IMAP4rev1] " + b"hello " * 1000 + b"\r\n"
    with trio.fail_after(LIMIT):
        async with (
            fake_server([Send(greeting), WaitEof()]) as fake,
            running_proxy(make_config(fake.port, limits=LINES)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            rest = await expect_unavailable_and_close(client)
            _, end = await session_end(caplog, client)
            assert not fake.errors()
    assert b"hello" not in rest and b"longer than 1024 bytes" in rest
    assert "reason=upstream_protocol" in end
