"""Who logged in, as the session log tells it: the user name, never the password."""

from __future__ import annotations

import base64
import logging
import re

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import (
    ImapClient,
    Respond,
    Send,
    fake_server,
    status_of,
    wait_session_end,
)
from tests.support.proxy import running_proxy


async def _line(stream: trio.SocketStream, buf: bytearray) -> bytes:
    while b"\n" not in buf:
        data = await stream.receive_some(65536)
        if not data:
            raise AssertionError("connection closed")
        buf += data
    end = buf.index(b"\n") + 1
    line = bytes(buf[:end])
    del buf[:end]
    return line


@pytest.mark.parametrize("initial_response", [True, False], ids=["sasl-ir", "two-step"])
async def test_authenticate_login_logs_the_user_not_the_password(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, initial_response: bool
) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")
    config = ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", dovecot.port)),
    )
    user, password = base64.b64encode(b"alice"), base64.b64encode(b"alicepw")
    with trio.fail_after(20):
        async with running_proxy(config) as (_, addrs):
            stream = await trio.open_tcp_stream(*addrs[0])
            buf = bytearray()
            await _line(stream, buf)  # greeting
            if initial_response:
                await stream.send_all(b"a AUTHENTICATE LOGIN " + user + b"\r\n")
            else:
                await stream.send_all(b"a AUTHENTICATE LOGIN\r\n")
                assert (await _line(stream, buf)).startswith(b"+")
                await stream.send_all(user + b"\r\n")
            assert (await _line(stream, buf)).startswith(b"+")
            await stream.send_all(password + b"\r\n")
            while not (line := await _line(stream, buf)).startswith(b"a "):
                pass
            assert line.startswith(b"a OK"), line
            await stream.send_all(b"z LOGOUT\r\n")
            while not (await _line(stream, buf)).startswith(b"z "):
                pass
            await stream.aclose()
            with trio.move_on_after(5):
                while "reason=" not in caplog.text:  # noqa: ASYNC110 - polling the log
                    await trio.sleep(0.02)
    assert "authenticated as alice" in caplog.text
    assert "user=alice " in caplog.text
    assert "alicepw" not in caplog.text


# --------------------------------------------------------------------------- forged names

_LOG_LINE = re.compile(r"(DEBUG|INFO|WARNING|ERROR|CRITICAL) +[\w.]+:[\w.]+:\d+ ")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
FORGED_NAME = (
    b"mallory\r\n"
    b"INFO     imapproxy.session:session.py:190 session 1-99 end peer=6.6.6.6:1 listener=x "
    b"tls=none user=root in=1 out=1 starttls_discarded=0 duration=1.000s reason=logout\r\n"
    b"\x1b[2J\x1b[31mred\x1b[0m \xc2\x85nel \xe2\x80\xa8ls \xe2\x80\xaertl \xff\x7f\x01 end"
)


def _fake_login_server(bye_text: bytes) -> list[object]:
    # accepts any LOGIN; its BYE on LOGOUT carries terminal escapes too
    return [
        Send(b"* OK [CAPABILITY IMAP4rev1 LITERAL+ AUTH=PLAIN] fake ready\r\n"),
        Respond({"LOGOUT": b"* BYE " + bye_text + b"\r\n{tag} OK bye\r\n"}),
    ]


@pytest.mark.parametrize(
    "name", [FORGED_NAME, b"x" * 60_000], ids=["control-characters", "60-kB-name"]
)
async def test_a_user_name_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture, name: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")
    bye_text = b"\x1b[2J\x1b]0;owned\x07 fake logging out"
    with trio.fail_after(20):
        async with fake_server(_fake_login_server(bye_text)) as fake:
            config = ProxyConfig(
                listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
                upstream=UpstreamConfig(Endpoint("127.0.0.1", fake.port)),
            )
            async with running_proxy(config) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await client.read_response()
                await client.send(b"a LOGIN {%d}\r\n" % len(name))
                await client.read_until(b"+")
                await client.send(name + b" pw\r\n")
                assert status_of((await client.read_until_tagged(b"a"))[-1]) == b"OK"
                await client.command(b"b", b"LOGOUT")
                await client.aclose()
                messages = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
                _sid, end = await wait_session_end(messages, client.local_port)
            assert not fake.errors()
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("imapproxy")]
    assert any("authenticated as" in m for m in ours)
    for message in ours:
        assert not _CONTROL.search(message), f"control character in {message[:300]!r}"
        assert len(message) < 1000, f"a {len(message)}-character log line"
    for line in caplog.text.splitlines():
        assert _LOG_LINE.match(line), f"a log line the proxy did not write: {line[:300]!r}"
    ends = [m for m in ours if re.match(r"session \S+ end ", m)]
    assert ends == [end]
    user = re.search(r" user=(\S+) in=\d+ ", end)
    assert user is not None, end
    assert user.group(1).startswith("mallory\\r\\nINFO") or user.group(1).startswith("xxx")


@pytest.mark.parametrize(
    "login",
    [
        b"a LOGIN OnlyArgPassword",
        b'a LOGIN "alice OnlyArgPassword"',
        b"a LOGIN x OnlyArgPassword y",
    ],
    ids=["one-argument", "one-quoted-argument", "three-arguments"],
)
async def test_a_malformed_login_gives_no_user_even_if_the_server_accepts_it(
    caplog: pytest.LogCaptureFixture, login: bytes
) -> None:
    """A LOGIN with one argument is a password alone: were it taken for the user name, a
    server that accepts it would put the password in the log."""
    caplog.set_level(logging.INFO, logger="imapproxy")
    with trio.fail_after(20):
        async with fake_server(_fake_login_server(b"bye")) as fake:
            config = ProxyConfig(
                listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
                upstream=UpstreamConfig(Endpoint("127.0.0.1", fake.port)),
            )
            async with running_proxy(config) as (_, addrs):
                client = await ImapClient.connect(*addrs[0])
                await client.read_response()
                responses = await client.command(b"a", login.split(b" ", 1)[1])
                assert status_of(responses[-1]) == b"OK"  # this server accepts anything
                await client.command(b"b", b"LOGOUT")
                await client.aclose()
                messages = lambda: [r.getMessage() for r in caplog.records]  # noqa: E731
                _sid, end = await wait_session_end(messages, client.local_port)
            assert not fake.errors()
            conn = await fake.connection(0)
            assert any(c.startswith(login) for c in conn.commands)
    assert " user=- " in end
    assert "OnlyArgPassword" not in caplog.text
