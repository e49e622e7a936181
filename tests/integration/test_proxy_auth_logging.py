"""Who logged in, as the session log tells it: the user name, never the password."""

from __future__ import annotations

import base64
import logging

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from tests.support.dovecot import DovecotServer
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
