"""The policy filter end to end against the real Dovecot (issue 10, "Tests it must have").

The proxy runs in-process with a policy chain (``delimiter = "."``: Dovecot's Maildir++
separator here).  Every refusal is checked where it matters: on Dovecot itself, through a
connection straight to it (not through the proxy), the mailboxes, messages and flags show
no change, not only the client's NO.
"""

from __future__ import annotations

import imaplib
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from imapclient import IMAPClient
from imapclient.exceptions import IMAPClientError

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import ChainEntry, FilterChain, OnError
from imapproxy.filters.policy import make_policy
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_jsonl
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of
from tests.support.proxy import ROOT, ProxyProcess, free_port, running_proxy

NewUser = Callable[[], tuple[str, str]]
MSG = b"Subject: policy\r\n\r\nbody\r\n"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def config_for(port: int) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port)),
    )


def policy_chain(rules: list[dict[str, Any]], clock: Clock | None = None, **options: Any):  # type: ignore[no-untyped-def]
    options = {"delimiter": ".", **options, "rules": rules}
    factory = make_policy(options, "filters[0]", clock=clock or Clock())
    return FilterChain([ChainEntry("policy", factory, OnError.CLOSED)])


def direct(dovecot: DovecotServer, user: str, password: str) -> imaplib.IMAP4:
    """A client straight to Dovecot, not through the proxy."""
    conn = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=15)
    conn.login(user, password)
    return conn


def dovecot_state(dovecot: DovecotServer, user: str, password: str) -> dict[str, list[bytes]]:
    """Every mailbox (as Dovecot names it) with each message's UID and flags, read on
    Dovecot directly and read-only (EXAMINE: nothing is changed by looking)."""
    conn = direct(dovecot, user, password)
    try:
        typ, lines = conn.list()
        assert typ == "OK"
        state: dict[str, list[bytes]] = {}
        for line in lines:
            assert isinstance(line, bytes)
            name = line.rsplit(b' "." ', 1)[-1].strip(b'"').decode()
            if b"\\Noselect" in line:
                state[name] = []
                continue
            typ, data = conn.select(f'"{name}"', readonly=True)
            assert typ == "OK", (name, data)
            typ, data = conn.fetch("1:*", "(UID FLAGS)") if data[0] != b"0" else ("OK", [])
            assert typ == "OK", data
            # (\Recent is Dovecot's to drop once a session saw a message: not a change)
            state[name] = sorted(
                re.sub(rb" ?\\Recent", b"", d) for d in data if isinstance(d, bytes)
            )
        return state
    finally:
        conn.logout()


def create_boxes(dovecot: DovecotServer, user: str, password: str, *names: str) -> None:
    conn = direct(dovecot, user, password)
    try:
        for name in names:
            assert conn.create(name)[0] == "OK", name
    finally:
        conn.logout()


async def login(client: ImapClient, user: str, password: str) -> None:
    greeting = await client.read_response()
    assert greeting.startswith(b"* OK"), greeting
    reply = await client.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    assert status_of(reply[-1]) == b"OK", reply


async def sync_literal(client: ImapClient, tag: bytes, head: bytes, literal: bytes,
                       tail: bytes = b"") -> list[bytes]:  # fmt: skip
    """``tag head{n}`` then, after the ``+``, the literal and the rest."""
    await client.send(tag + b" " + head + b"{%d}\r\n" % len(literal))
    cont = await client.read_response()
    assert cont.startswith(b"+"), cont
    await client.send(literal + tail + b"\r\n")
    return await client.read_until_tagged(tag)


# ----------------------------------------------------------------------------- bypasses

BATTERY_RULES = [
    {"name": "no-finance", "match": {"mailbox": ["Finance.*", "Finänce*"]}, "action": "deny"},
    {"name": "private", "match": {"mailbox": ["INBOX.Private.*", "Team.Secret.*"]},
     "action": "deny"},
    {"name": "keep-inbox", "match": {"command": ["STORE", "EXPUNGE"], "mailbox": "INBOX"},
     "action": "deny"},
]  # fmt: skip

# Each is refused NO [NOPERM] by the proxy (sent alone, one write each).
SPELLINGS = [
    b"SELECT Finance.2024", b"Select finance.2024".replace(b"finance", b"Finance"),
    b'SELECT "Finance.2024"', b"SELECT {12+}\r\nFinance.2024", b"EXAMINE Finance",
    b"SELECT Finance..2024", b"SELECT Finance.2024.", b"STATUS Finance.2024 (MESSAGES)",
    b"DELETE Finance.2024", b"RENAME Finance.2024 Other.Moved", b"RENAME Other Finance.New",
    b"CREATE Finance.New", b"SUBSCRIBE Finance.2024", b"GETACL Finance.2024",
    b"MYRIGHTS Finance.2024", b"SELECT Fin&AOQ-nce", b'SELECT "Fin\xc3\xa4nce"',
    b"SELECT {8+}\r\nFin\xc3\xa4nce", b"SELECT inbox.Private", b"SELECT InBoX.Private",
    b"DELETE inbox.Private", b'APPEND Finance.2024 {3+}\r\nabc',
    b'APPEND Other CATENATE (URL "/Finance.2024;UIDVALIDITY=1/;UID=1")',
    b"RENAME Team Renamed",  # (Dovecot renames Team.Secret with it)
]  # fmt: skip
# In INBOX (selected), with a message flagged \Deleted: nothing may expunge it or change
# a flag (one write each; the last ones pipelined).
IN_INBOX = [
    b"STORE 1 +FLAGS (\\Flagged)", b"store 1 -FLAGS (\\Deleted)", b"UID STORE 1:* FLAGS ()",
    b"EXPUNGE", b"uid expunge 1:*", b"MOVE 1 Other", b"UID MOVE 1:* Other", b"CLOSE",
    b"FETCH 1 BODY[]", b"UID FETCH 1:* (FLAGS RFC822)",  # (they would set \Seen)
]  # fmt: skip


async def test_bypass_battery_leaves_dovecot_unchanged(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    create_boxes(dovecot, user, password, "Finance", "Finance.2024", "Fin&AOQ-nce",
                 "INBOX.Private", "Other", "Team", "Team.Secret")  # fmt: skip
    dovecot.seed_message(user, MSG, mailbox="Finance.2024")
    dovecot.seed_message(user, MSG, mailbox="INBOX.Private")
    dovecot.seed_message(user, MSG, flags="T")  # \Deleted, in INBOX
    before = dovecot_state(dovecot, user, password)
    assert before["INBOX"] and before["Finance.2024"] and before["INBOX.Private"]
    with trio.fail_after(30):
        async with running_proxy(config_for(dovecot.port),
                                 filters=policy_chain(BATTERY_RULES)) as (_, addrs):  # fmt: skip
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            for i, text in enumerate(SPELLINGS):
                tag = b"s%d" % i
                reply = await client.command(tag, text)
                assert reply[-1].startswith(tag + b" NO [NOPERM]"), (text, reply)
            # synchronising literals: the proxy sends the "+" and decides on the whole
            for i, (head, lit) in enumerate([(b"SELECT ", b"Finance.2024"),
                                             (b"DELETE ", b"Inbox.Private"),
                                             (b"SELECT ", "Finänce".encode())]):  # fmt: skip
                reply = await sync_literal(client, b"y%d" % i, head, lit)
                assert reply[-1].startswith(b"y%d NO [NOPERM]" % i), (head, lit, reply)
            # an escape the proxy does not read is refused, not guessed (Dovecot reads it)
            reply = await client.command(b"e1", b'SELECT "Finance\\.2024"')
            assert reply[-1].startswith(b"e1 BAD [CLIENTBUG]"), reply
            # ENABLE UTF8=ACCEPT pipelined with a UTF-8 name (Dovecot 2.3 ignores it)
            await client.send(b'u1 ENABLE UTF8=ACCEPT\r\nu2 SELECT "Fin\xc3\xa4nce"\r\n')
            reply = await client.read_until_tagged(b"u2")
            assert reply[-1].startswith(b"u2 NO [NOPERM]"), reply
            # in INBOX: nothing changes the \Deleted message, in any spelling
            reply = await client.command(b"i0", b"SELECT INBOX")
            assert reply[-1].startswith(b"i0 OK"), reply
            for i, text in enumerate(IN_INBOX):
                reply = await client.command(b"i%d" % (i + 1), text)
                assert reply[-1].startswith(b"i%d NO [NOPERM]" % (i + 1)), (text, reply)
            # Other selected; then, pipelined in one write, SELECT INBOX and changes
            # (decided before Dovecot has answered the SELECT)
            reply = await client.command(b"p0", b"SELECT Other")
            assert reply[-1].startswith(b"p0 OK"), reply
            await client.send(
                b"p1 SELECT Other\r\np2 SELECT inbox\r\np3 EXPUNGE\r\n"
                b"p4 COPY 1 Other\r\np5 STORE 1 +FLAGS.SILENT (\\Seen)\r\n"
            )
            # (a refusal is answered at once, before Dovecot answers what came earlier)
            tagged: dict[bytes, bytes] = {}
            replies: list[bytes] = []
            while len(tagged) < 5:
                replies.append(await client.read_response())
                if not replies[-1].startswith(b"*"):
                    tagged[replies[-1].split(b" ")[0]] = replies[-1]
            assert tagged[b"p1"].startswith(b"p1 OK") and tagged[b"p2"].startswith(b"p2 OK")
            assert tagged[b"p3"].startswith(b"p3 NO [NOPERM]"), replies
            assert tagged[b"p4"].startswith(b"p4 OK"), replies  # copying out is allowed
            assert tagged[b"p5"].startswith(b"p5 NO [NOPERM]"), replies
            # the session is still in step
            reply = await client.command(b"z", b"NOOP")
            assert reply[-1].startswith(b"z OK"), reply
            await client.aclose()
    after = dovecot_state(dovecot, user, password)
    # the only change: the copy p4 made into Other (which proves commands got through)
    assert len(after.pop("Other")) == 1 and not before.pop("Other")
    assert after == before


async def test_unparsable_arguments_are_refused_bad(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """A held command whose arguments the proxy cannot parse is refused BAD by the relay
    (relay/gate.py), never passed on for Dovecot to read its own way."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Finance.2024")
    with trio.fail_after(20):
        async with running_proxy(config_for(dovecot.port),
                                 filters=policy_chain(BATTERY_RULES)) as (_, addrs):  # fmt: skip
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            for i, text in enumerate([b'DELETE "Finance.2024', b'DELETE "Fin\\ance.2024"',
                                      b"DELETE Finance.2024 ("]):  # fmt: skip
                reply = await client.command(b"b%d" % i, text)
                assert reply[-1].startswith(b"b%d BAD [CLIENTBUG]" % i), reply
            await client.aclose()
    assert "Finance.2024" in dovecot_state(dovecot, user, password)


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize(
    ("match", "denied"),
    [({"command": "create"}, True), ({"command": ["DELETE", "UID CREATE"]}, False),
     ({"user": "U*"}, True), ({"user": "someone-else"}, False),
     ({"client": "127.0.0.0/8"}, True), ({"client": ["10.0.0.0/8", "::1"]}, False),
     ({"tls": False}, True), ({"tls": True}, False),
     ({"listener": "imap"}, True), ({"listener": "imaps"}, False),
     ({"mailbox": "New.*"}, True), ({"mailbox": "Old.*"}, False),
     ({"size_over": 5}, False)],
)  # fmt: skip
async def test_each_match_key_through_imaplib(
    dovecot: DovecotServer, new_user: NewUser, match: dict[str, Any], denied: bool
) -> None:
    user, password = new_user()  # (users are "u..."; globs on them ignore case)
    # (with the command: a rule on the client alone would refuse CAPABILITY and LOGIN too)
    match = {"command": "CREATE", **match}
    rules = [{"name": "k", "match": match, "action": "deny", "code": "NOPERM", "text": "no k"}]
    async with running_proxy(config_for(dovecot.port), filters=policy_chain(rules)) as (_, addrs):

        def through_proxy() -> tuple[str, list[Any]]:
            conn = imaplib.IMAP4(*addrs[0], timeout=15)
            try:
                assert conn.login(user, password)[0] == "OK"
                return conn.create("New.Box")  # type: ignore[return-value]
            finally:
                conn.logout()

        with trio.fail_after(20):
            typ, data = await trio.to_thread.run_sync(through_proxy)
    exists = "New.Box" in dovecot_state(dovecot, user, password)
    if denied:
        assert (typ, data) == ("NO", [b"[NOPERM] no k"]) and not exists
    else:
        assert typ == "OK" and exists, data


async def test_size_over_refuses_a_large_append_before_its_literal(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    user, password = new_user()
    rules = [{"match": {"command": "APPEND", "size_over": 1000}, "action": "deny",
              "code": "TOOBIG", "text": "message too large"}]  # fmt: skip
    async with running_proxy(config_for(dovecot.port), filters=policy_chain(rules)) as (_, addrs):

        def through_proxy() -> tuple[Any, Any]:
            with IMAPClient(*addrs[0], ssl=False, timeout=15) as client:
                client.login(user, password)
                small = client.append("INBOX", MSG)
                try:
                    client.append("INBOX", MSG + b"x" * 5000)
                except IMAPClientError as exc:
                    return small, str(exc)
                return small, None

        with trio.fail_after(20):
            small, error = await trio.to_thread.run_sync(through_proxy)
    assert b"APPEND" in small.upper() or small  # (imapclient returns the OK text)
    assert error is not None and "TOOBIG" in error and "message too large" in error
    assert len(dovecot_state(dovecot, user, password)["INBOX"]) == 1


# ----------------------------------------------------------------------------- actions


@pytest.mark.parametrize("library", ["imaplib", "imapclient"])
async def test_read_only_end_to_end(
    dovecot: DovecotServer, new_user: NewUser, library: str
) -> None:
    """SELECT goes as EXAMINE: a FETCH of BODY[] leaves \\Seen unset on Dovecot (checked
    directly); changes are refused; the client sees [READ-ONLY]."""
    user, password = new_user()
    dovecot.seed_message(user, MSG)
    rules = [{"name": "audit", "match": {"user": user.upper()}, "action": "read-only"}]
    before = dovecot_state(dovecot, user, password)
    async with running_proxy(config_for(dovecot.port), filters=policy_chain(rules)) as (_, addrs):

        def with_imaplib() -> list[Any]:
            conn = imaplib.IMAP4(*addrs[0], timeout=15)
            conn.login(user, password)
            try:
                conn.select("INBOX")  # imaplib refuses a read-only answer to SELECT ...
                out: list[Any] = ["not read-only"]
            except imaplib.IMAP4.readonly:
                out = ["OK", "READ-ONLY"]  # ... but the mailbox is selected
                conn.is_readonly = True  # (what select(readonly=True) would have set)

            typ, data = conn.fetch("1", "(BODY[])")
            out += [typ, data[0][1] if typ == "OK" else data]  # type: ignore[index]
            out.append(conn.store("1", "+FLAGS", "(\\Deleted)")[0])
            out.append(conn.append("INBOX", None, None, MSG)[0])
            out.append(conn.create("Made")[0])
            out.append(conn.copy("1", "INBOX")[0])
            conn.logout()
            return out

        def with_imapclient() -> list[Any]:
            with IMAPClient(*addrs[0], ssl=False, timeout=15) as client:
                client.login(user, password)
                try:
                    client.select_folder("INBOX")
                    out: list[Any] = ["not read-only"]
                except imaplib.IMAP4.readonly:
                    out = ["OK", "READ-ONLY"]
                    client._imap.is_readonly = True
                body = client.fetch([1], ["BODY[]"])
                out += ["OK", next(iter(body.values()))[b"BODY[]"]]
                for change in (lambda: client.add_flags([1], [b"\\Deleted"]),
                               lambda: client.append("INBOX", MSG),
                               lambda: client.create_folder("Made"),
                               lambda: client.copy([1], "INBOX")):  # fmt: skip
                    try:
                        change()
                        out.append("OK")
                    except IMAPClientError:
                        out.append("NO")
            return out

        with trio.fail_after(20):
            out = await trio.to_thread.run_sync(
                with_imaplib if library == "imaplib" else with_imapclient
            )
    assert out[:3] == ["OK", "READ-ONLY", "OK"] and out[3] == MSG
    assert out[4:] == ["NO", "NO", "NO", "NO"]
    after = dovecot_state(dovecot, user, password)
    assert after == before and b"\\Seen" not in after["INBOX"][0]


@pytest.mark.parametrize("library", ["imaplib", "imapclient"])
async def test_hide_end_to_end(dovecot: DovecotServer, new_user: NewUser, library: str) -> None:
    """A hidden mailbox is nowhere: not in LIST, LSUB, LIST RETURN (STATUS) or STATUS,
    and SELECT/STATUS/DELETE of it answer NO [NONEXISTENT]."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "HR", "HR.Salaries", "Team")
    conn = direct(dovecot, user, password)
    for box in ("HR", "HR.Salaries", "Team"):
        conn.subscribe(box)
    conn.logout()
    rules = [{"name": "hide-hr", "match": {"user": "u*", "mailbox": "HR.*"}, "action": "hide"}]
    async with running_proxy(config_for(dovecot.port), filters=policy_chain(rules)) as (_, addrs):

        def list_status(conn: imaplib.IMAP4) -> list[Any]:
            typ, _ = conn._simple_command("LIST", '""', "*", "RETURN", "(STATUS (MESSAGES))")
            assert typ == "OK"
            return conn._untagged_response(typ, [None], "STATUS")[1]

        def with_imaplib() -> dict[str, Any]:
            conn = imaplib.IMAP4(*addrs[0], timeout=15)
            conn.login(user, password)
            seen = {
                "list": conn.list()[1],
                "lsub": conn.lsub()[1],
                "list-status": list_status(conn),
                "select": conn.select("HR.Salaries"),
                "status": conn.status("HR", "(MESSAGES)"),
                "delete": conn.delete("HR"),
            }
            conn.logout()
            return seen

        def with_imapclient() -> dict[str, Any]:
            with IMAPClient(*addrs[0], ssl=False, timeout=15) as client:
                client.login(user, password)
                seen: dict[str, Any] = {
                    "list": client.list_folders(),
                    "lsub": client.list_sub_folders(),
                }
                for what, call in (("select", lambda: client.select_folder("HR.Salaries")),
                                   ("status", lambda: client.folder_status("HR")),
                                   ("delete", lambda: client.delete_folder("HR"))):  # fmt: skip
                    try:
                        seen[what] = call()
                    except IMAPClientError as exc:
                        seen[what] = ("NO", [str(exc).encode()])
            return seen

        with trio.fail_after(20):
            seen = await trio.to_thread.run_sync(
                with_imaplib if library == "imaplib" else with_imapclient
            )
    text = repr(seen["list"]) + repr(seen["lsub"]) + repr(seen.get("list-status"))
    assert "Team" in repr(seen["list"]) and "Team" in repr(seen["lsub"])
    if library == "imaplib":
        assert "Team" in repr(seen["list-status"])
    assert "HR" not in text, text
    for what in ("select", "status", "delete"):
        assert seen[what][0] == "NO" and b"NONEXISTENT" in seen[what][1][0], (what, seen)
    assert {"HR", "HR.Salaries"} <= set(dovecot_state(dovecot, user, password))


# ----------------------------------------------------------------------------- rates


async def test_rates_with_time_controlled_by_the_test(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """Logins per client address ("2/min") and commands per user ("3/s"): over the limit
    NO [LIMIT]; the test moves the clock, the buckets refill."""
    user, password = new_user()
    clock = Clock()
    rules = [
        {"name": "logins", "match": {"command": ["LOGIN", "AUTHENTICATE"]}, "rate": "2/min",
         "delay": 0},
        {"name": "per-user", "match": {"user": "*"}, "rate": "3/s"},
    ]  # fmt: skip
    chain = policy_chain(rules, clock)
    async with running_proxy(config_for(dovecot.port), filters=chain) as (_, addrs):

        def logins() -> list[str]:
            out = []
            for _ in range(3):
                conn = imaplib.IMAP4(*addrs[0], timeout=15)
                try:
                    conn.login(user, password)
                    out.append("OK")
                except imaplib.IMAP4.error as exc:
                    out.append(str(exc))
                conn.logout()
            return out

        with trio.fail_after(20):
            first = await trio.to_thread.run_sync(logins)
            assert first[:2] == ["OK", "OK"] and "[LIMIT]" in first[2], first
            clock.now += 30  # one login back
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            replies = [(await client.command(b"n%d" % i, b"NOOP"))[-1] for i in range(4)]
            assert [status_of(r) for r in replies] == [b"OK", b"OK", b"OK", b"NO"], replies
            assert replies[3] == b"n3 NO [LIMIT] too many commands, slow down\r\n"
            clock.now += 1 / 3 + 0.01  # one command back
            assert status_of((await client.command(b"m", b"NOOP"))[-1]) == b"OK"
            await client.aclose()


def test_dovecot_refuses_what_canonical_names_fold(dovecot: DovecotServer) -> None:
    """What the canonical form assumes of Dovecot (Maildir++, "." separator): a doubled or
    trailing separator is refused, and INBOX is case-insensitive as a parent too."""
    conn = direct(dovecot, "alice", "alicepw")
    try:
        conn.create("INBOX.Sub")
        assert conn.select("inbox.Sub", readonly=True)[0] == "OK"
        for bad in ("Finance..2024", "Finance.2024.", ".Finance"):
            typ, data = conn.select(bad, readonly=True)
            assert typ == "NO" and re.search(rb"separator", data[0]), (bad, data)  # type: ignore[arg-type]
    finally:
        conn.delete("INBOX.Sub")
        conn.logout()


# ----------------------------------------------------------------------------- records


async def _blocked_select(
    dovecot: DovecotServer, user: str, password: str
) -> list[dict[str, Any]]:
    """A session through policy + JSONL transcript whose SELECT the rule no-finance
    refuses; the transcript's records."""
    create_boxes(dovecot, user, password, "Finance.2024")
    out = io.StringIO()
    sink = RecordSink("-", format_jsonl, stream=out)
    factory = make_policy({"delimiter": ".", "rules": BATTERY_RULES}, "filters[0]")
    chain = FilterChain([
        ChainEntry("policy", factory, OnError.CLOSED),
        ChainEntry("transcript", TranscriptFactory(sink, bodies=False), OnError.OPEN),
    ])  # fmt: skip
    with trio.fail_after(20):
        async with running_proxy(config_for(dovecot.port), filters=chain) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await login(client, user, password)
            reply = await client.command(b"x1", b"SELECT Finance.2024")
            assert reply == [b"x1 NO [NOPERM] not allowed\r\n"]
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            while '"session_end"' not in out.getvalue():  # noqa: ASYNC110
                await trio.sleep(0.02)
    return [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


async def test_a_block_is_a_log_line_and_a_transcript_record(
    dovecot: DovecotServer, new_user: NewUser, caplog: pytest.LogCaptureFixture
) -> None:
    user, password = new_user()
    with caplog.at_level(logging.INFO):
        records = await _blocked_select(dovecot, user, password)
    command = next(r for r in records if r["type"] == "command" and r["tag"] == "x1")
    assert command["verdict"] == "reject" and command["filter"] == "policy"
    reply_record = next(r for r in records if r["type"] == "response" and r["tag"] == "x1")
    assert reply_record["code"] == "NOPERM" and reply_record["text"].endswith("not allowed")
    lines = [r.getMessage() for r in caplog.records if r.name == "imapproxy.policy"]
    assert len(lines) == 1 and lines[0].endswith(": policy rule no-finance: SELECT denied")
    assert password not in caplog.text and "Finance" not in lines[0]


async def test_the_transcript_names_the_rule(dovecot: DovecotServer, new_user: NewUser) -> None:
    user, password = new_user()
    records = await _blocked_select(dovecot, user, password)
    command = next(r for r in records if r["type"] == "command" and r["tag"] == "x1")
    assert command["verdict"] == "reject" and command["rule"] == "no-finance", command


# ----------------------------------------------------------------------------- CLI


def test_policy_from_the_config_file(
    dovecot: DovecotServer, new_user: NewUser, tmp_path: Path
) -> None:
    """``use = "policy"`` in ``imapproxy run --config``: refusals with the rule's code and
    text; a mistake in a rule is one line naming its key path, exit status 2."""
    user, password = new_user()
    create_boxes(dovecot, user, password, "Finance.2024")
    config = tmp_path / "proxy.toml"
    config.write_text(
        '[[filters]]\nuse = "policy"\ndelimiter = "."\n'
        '[[filters.rules]]\nname = "no-finance"\nmatch = { mailbox = "Finance.*" }\n'
        'action = "deny"\ncode = "NOPERM"\ntext = "finance is closed"\n'
    )
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"{dovecot.host}:{dovecot.port}",
            "--config", str(config)]  # fmt: skip
    with ProxyProcess(args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)]) as proxy:
        conn = imaplib.IMAP4("127.0.0.1", port, timeout=15)
        conn.login(user, password)
        assert conn.select("Finance.2024") == ("NO", [b"[NOPERM] finance is closed"])
        assert conn.delete("Finance.2024")[0] == "NO"
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()
        proxy.stop()
        assert "policy rule no-finance: SELECT denied" in proxy.log()
    assert "Finance.2024" in dovecot_state(dovecot, user, password)
    config.write_text('[[filters]]\nuse = "policy"\n[[filters.rules]]\naction = "dney"\n')
    done = subprocess.run(
        [sys.executable, "-m", "imapproxy", "run", *args], capture_output=True, text=True,
        cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert done.stderr.strip().splitlines()[-1].endswith(
        'filters[0].rules[0].action: expected one of allow, deny, read-only, hide; got "dney"'
    ), done.stderr
    assert "Traceback" not in done.stderr
