"""Command hooks that must wait (issue 9: "a hook may be async only where it must wait (a
lookup), with a timeout"), end to end against the real Dovecot.

While a filter waits, the session's later commands wait behind it (order is kept) and other
sessions go on; a hook that outlives ``Timeouts.filter_hook`` counts as a failed filter
(its ``on_error`` applies).  A refused command provably never reached Dovecot: its state is
checked directly afterwards.
"""

from __future__ import annotations

import imaplib
import logging
from dataclasses import replace

import pytest
import trio

from imapproxy.config import Timeouts
from imapproxy.filters import PASS, ChainEntry, FilterChain, OnError
from imapproxy.filters.api import CommandView, Filter, Reject, SessionView
from tests.integration.test_filters_dovecot import NewUser, config_for, direct, login
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of
from tests.support.proxy import running_proxy


class Lookup(Filter):
    """Decides CREATE after an outside answer (``answer`` is set by the test); other
    commands pass at once."""

    name = "lookup"
    wants_commands = frozenset({"CREATE"})

    def __init__(self, answer: trio.Event, started: trio.Event, verdict: object) -> None:
        self.answer = answer
        self.started = started
        self.verdict = verdict

    def command(self, cmd: CommandView, session: SessionView):  # type: ignore[no-untyped-def]
        return self._ask(cmd)

    async def _ask(self, cmd: CommandView) -> object:
        self.started.set()
        await self.answer.wait()
        return self.verdict


def boxes(dovecot: DovecotServer, user: str, password: str) -> list[bytes]:
    conn = direct(dovecot, user, password)
    try:
        return [line.rsplit(b" ", 1)[-1] for line in conn.list()[1]]  # type: ignore[union-attr]
    finally:
        conn.logout()


async def test_waiting_hook_keeps_order_and_other_sessions_run(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    answer, started = trio.Event(), trio.Event()
    no = Reject("looked up: not allowed", code="NOPERM")
    chain = FilterChain([ChainEntry("lookup", lambda info: Lookup(answer, started, no))])
    with trio.fail_after(30):
        async with running_proxy(config_for(dovecot.port), filters=chain) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            # CREATE waits for the lookup; the NOOP pipelined behind it must not overtake it
            await client.send(b"c1 CREATE Blocked\r\nc2 NOOP\r\n")
            await started.wait()

            def other_session() -> str:
                with imaplib.IMAP4(*addrs[0], timeout=15) as m:
                    m.login(user, password)
                    typ, _ = m.noop()
                    m.logout()
                    return typ

            # another session is served while this one's filter waits
            assert await trio.to_thread.run_sync(other_session) == "OK"
            with trio.move_on_after(0.3):  # nothing of c1 or c2 comes while it waits
                early = await client.read_line()
                raise AssertionError(f"answered while the filter waited: {early!r}")
            answer.set()
            c1 = await client.read_until_tagged(b"c1")
            c2 = await client.read_until_tagged(b"c2")
            assert c1 == [b"c1 NO [NOPERM] looked up: not allowed\r\n"]
            assert status_of(c2[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
    assert b"Blocked" not in boxes(dovecot, user, password)  # never reached Dovecot


class Stuck(Filter):
    name = "stuck"
    wants_commands = frozenset({"CREATE"})

    def command(self, cmd: CommandView, session: SessionView):  # type: ignore[no-untyped-def]
        return self._forever()

    async def _forever(self) -> object:
        await trio.sleep_forever()
        return PASS


@pytest.mark.parametrize("on_error", ["closed", "open"])
async def test_hook_outliving_its_timeout_is_a_failed_filter(
    on_error: str, dovecot: DovecotServer, new_user: NewUser, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    user, password = new_user()
    config = replace(config_for(dovecot.port), timeouts=Timeouts(filter_hook=0.3))
    chain = FilterChain([ChainEntry("stuck", lambda info: Stuck(), OnError(on_error))])
    with trio.fail_after(30):
        async with running_proxy(config, filters=chain) as (proxy, addrs):
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            reply = await client.command(b"c1", b"CREATE Slow")
            more = await client.command(b"c2", b"NOOP")  # the session goes on
            await client.command(b"z", b"LOGOUT")
            assert proxy.filter_errors == {"stuck": 1}
    assert status_of(more[-1]) == b"OK"
    created = b"Slow" in boxes(dovecot, user, password)
    if on_error == "closed":
        assert reply[-1] == b"c1 NO [UNAVAILABLE] filter failed\r\n"
        assert not created
    else:
        assert status_of(reply[-1]) == b"OK" and created
    assert "longer than 0.3 s" in caplog.text
