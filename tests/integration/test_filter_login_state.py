"""A login a filter refused never counts as one: the tag's later command cannot make the
proxy believe (and log) that the refused user logged in."""

from __future__ import annotations

import logging

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import ChainEntry, CommandView, Filter, FilterChain, Reject, SessionView
from imapproxy.filters.api import PASS, Verdict
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of, wait_session_end
from tests.support.proxy import running_proxy


class NoAlice(Filter):
    name = "no-alice"
    wants_commands = frozenset({"LOGIN"})

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return Reject("not alice", code="NOPERM") if b"alice" in cmd.raw else PASS


async def test_a_refused_login_is_forgotten(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    caplog.set_level(logging.INFO, logger="imapproxy")
    config = ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", dovecot.port)),
    )
    chain = FilterChain([ChainEntry("no-alice", lambda info: NoAlice())])
    with trio.fail_after(20):
        async with running_proxy(config, filters=chain) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            refused = await client.command(b"a", b"LOGIN alice alicepw")
            assert refused == [b"a NO [NOPERM] not alice\r\n"]
            # the same tag again, for a command Dovecot accepts
            assert status_of((await client.command(b"a", b"NOOP"))[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            _, end = await wait_session_end(
                lambda: [r.getMessage() for r in caplog.records], client.local_port
            )
    assert "authenticated as" not in caplog.text
    assert " user=- " in end, end
