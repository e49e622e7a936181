"""The rewrite filter against the real Dovecot, through imaplib, imapclient and a raw
client: user mapping (LOGIN and AUTHENTICATE PLAIN in each form), mailbox mapping through
whole client sessions with Dovecot's real names checked directly, capabilities in every
place.  Every response the client got is captured (an observer runs after the deciding
filters, on what is sent) and searched for the server's names."""

from __future__ import annotations

import base64
import imaplib
import logging
import re
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from imapclient import IMAPClient

from imapproxy.configfile import from_mapping
from imapproxy.filters import (
    ChainEntry,
    Filter,
    FilterChain,
    OnError,
    ResponseView,
    SessionView,
)
from imapproxy.filters.api import Verdict
from imapproxy.filters.rewrite import CapabilityEdit, RewriteConfig, RewriteFilter
from tests.integration.test_filters_dovecot import config_for, direct
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of
from tests.support.proxy import running_proxy

NewUser = Callable[[], tuple[str, str]]
MSG = b"Subject: rewrite\r\n\r\nhello\r\n"
TIMEOUT = 30
SERVER_NAMES = (b"INBOX.Archive", b"Sent Items")  # never shown to the client
MAILBOXES = [
    {"client": "Archive", "server": "INBOX.Archive"},
    {"client": "Sent", "server": "Sent Items", "exact": True},
]


class Capture(Filter):
    """Observes every response as it is sent to the client, and the session's names."""

    name = "capture"
    observes_only = True

    def __init__(self, sink: dict[str, Any]) -> None:
        self.sink = sink

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        self.sink.setdefault("responses", []).append(resp.raw)
        return super().response(resp, session)

    def authenticated(self, session: SessionView) -> None:
        self.sink.setdefault("logins", []).append((session.user, session.upstream_user))


def chain_for(options: dict[str, Any], sink: dict[str, Any]) -> FilterChain:
    """The rewrite filter configured as from a TOML file, then the capture."""
    configured = from_mapping({"filters": [{"use": "rewrite", **options}]}).filters
    capture = ChainEntry("capture", lambda info: Capture(sink), OnError.CLOSED)
    return FilterChain([*configured.entries, capture])


def server_names(dovecot: DovecotServer, user: str, password: str) -> set[str]:
    conn = direct(dovecot, user, password)
    try:
        typ, lines = conn.list()
        assert typ == "OK"
        return {
            line.rsplit(b' "." ', 1)[-1].strip(b'"').decode()  # type: ignore[union-attr]
            for line in lines
        }
    finally:
        conn.logout()


def server_count(dovecot: DovecotServer, user: str, password: str, box: str) -> int:
    conn = direct(dovecot, user, password)
    try:
        typ, data = conn.status(f'"{box}"', "(MESSAGES)")
        assert typ == "OK", data
        m = re.search(rb"MESSAGES (\d+)", data[0])  # type: ignore[arg-type]
        assert m, data
        return int(m.group(1))
    finally:
        conn.logout()


def assert_no_server_names(sink: dict[str, Any]) -> None:
    responses = sink.get("responses", [])
    assert responses, "nothing captured"
    shown = [r for r in responses if any(n in r for n in SERVER_NAMES)]
    assert not shown, shown


# ----------------------------------------------------------------------------- users


@pytest.fixture(scope="module")
def mapped_user(dovecot: DovecotServer) -> Iterator[tuple[str, str]]:
    """A client name ``uXXXX``; Dovecot knows the user as ``uXXXX@example.com`` (one
    passwd reload for the module)."""
    name = f"u{uuid.uuid4().hex[:10]}"
    password = f"pw {uuid.uuid4().hex}"  # a space: quoted, and easy to look for
    dovecot.add_user(f"{name}@example.com", password)
    dovecot.seed_message(f"{name}@example.com", MSG)
    yield name, password


USERS = {"users": {"add_domain": "example.com"}}


async def test_login_forms_reach_the_mapped_user(
    dovecot: DovecotServer, mapped_user: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """LOGIN quoted, as literals and AUTHENTICATE PLAIN with an initial response: each
    logs in to Dovecot's ``name@example.com`` (its INBOX holds the seeded message); the
    session knows both names; the password is in no log line."""
    caplog.set_level(logging.DEBUG)
    name, password = mapped_user
    sink: dict[str, Any] = {}
    pw = password.encode()
    plain_ir = base64.b64encode(b"\0" + name.encode() + b"\0" + pw)
    forms = [
        b'LOGIN "%s" "%s"' % (name.encode(), pw),
        b"LOGIN {%d}\r\n%s {%d}\r\n%s" % (len(name), name.encode(), len(pw), pw),
        b"AUTHENTICATE PLAIN " + plain_ir,
    ]
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(USERS, sink)) as (
            _,
            addrs,
        ):
            for form in forms:
                client = await ImapClient.connect(*addrs[0])
                await client.read_response()
                head, *rest = form.split(b"\r\n")
                await client.send(b"L " + head + b"\r\n")
                for part in rest:
                    assert (await client.read_response()).startswith(b"+")
                    await client.send(part + b"\r\n")
                reply = await client.read_until_tagged(b"L")
                assert status_of(reply[-1]) == b"OK", (form[:20], reply)
                got = await client.command(b"S", b"STATUS INBOX (MESSAGES)")
                assert b"MESSAGES 1" in got[0], got
                await client.command(b"Z", b"LOGOUT")
                await client.aclose()
    assert sink["logins"] == [(name, f"{name}@example.com")] * len(forms)
    assert caplog.text.count(f"user {name} is {name}@example.com upstream") == len(forms)
    assert password not in caplog.text
    assert plain_ir.decode() not in caplog.text


async def test_imaplib_and_imapclient_logins(
    dovecot: DovecotServer, mapped_user: tuple[str, str]
) -> None:
    """imaplib's LOGIN and imapclient's AUTHENTICATE PLAIN (the SASL message on the line
    after the server's ``+``) with the client's name; a wrong password still fails."""
    name, password = mapped_user
    sink: dict[str, Any] = {}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(USERS, sink)) as (
            _,
            addrs,
        ):

            def clients() -> None:
                conn = imaplib.IMAP4(*addrs[0], timeout=15)
                assert conn.login(name, password)[0] == "OK"
                assert conn.select("INBOX", readonly=True)[1] == [b"1"]
                conn.logout()
                client = IMAPClient(addrs[0][0], port=addrs[0][1], ssl=False, timeout=15)
                client.plain_login(name, password)
                assert client.select_folder("INBOX", readonly=True)[b"EXISTS"] == 1
                client.logout()
                bad = imaplib.IMAP4(*addrs[0], timeout=15)
                with pytest.raises(imaplib.IMAP4.error):
                    bad.login(name, password + "x")
                bad.logout()

            await trio.to_thread.run_sync(clients)
    assert sink["logins"] == [(name, f"{name}@example.com")] * 2


# ----------------------------------------------------------------------------- mailboxes


def seed_server_side(dovecot: DovecotServer, user: str, password: str) -> None:
    conn = direct(dovecot, user, password)
    try:
        for box in ("INBOX.Archive", '"Sent Items"', "Drafts"):
            assert conn.create(box)[0] == "OK"
        for box in ("INBOX.Archive", '"Sent Items"'):
            assert conn.append(box, "", None, MSG)[0] == "OK"
    finally:
        conn.logout()


async def test_imapclient_session_sees_only_its_names(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """list, select, append, copy, move, rename, status, subscribe/lsub, delete through
    imapclient: each lands on Dovecot's real name (checked directly), and no response
    the client got holds a server name."""
    user, password = new_user()
    seed_server_side(dovecot, user, password)
    sink: dict[str, Any] = {}
    options = {"mailboxes": MAILBOXES}
    seen: dict[str, Any] = {}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(options, sink)) as (
            _,
            addrs,
        ):

            def session() -> None:
                c = IMAPClient(addrs[0][0], port=addrs[0][1], ssl=False, timeout=15)
                c.login(user, password)
                seen["list"] = {f[2] for f in c.list_folders()}
                seen["top"] = {f[2] for f in c.list_folders(pattern="%")}
                c.create_folder("Archive.2020")
                seen["archive"] = c.select_folder("Archive")[b"EXISTS"]
                c.append("Archive.2020", MSG)
                c.copy([1], "Sent")
                c.move([1], "Archive.2020")
                c.rename_folder("Archive.2020", "Archive.2021")
                seen["status"] = c.folder_status("Archive.2021", ["MESSAGES"])[b"MESSAGES"]
                c.subscribe_folder("Archive.2021")
                c.subscribe_folder("Sent")
                seen["lsub"] = {f[2] for f in c.list_sub_folders()}
                seen["lsub_archive"] = {f[2] for f in c.list_sub_folders(pattern="Archive.*")}
                c.close_folder()
                c.logout()

            await trio.to_thread.run_sync(session)
    assert seen["list"] == {"INBOX", "Archive", "Sent", "Drafts"}
    assert seen["top"] == {"INBOX", "Archive", "Sent", "Drafts"}
    assert seen["archive"] == 1
    assert seen["status"] == 2  # appended, and moved in from Archive
    assert seen["lsub"] == {"Archive.2021", "Sent"}
    assert seen["lsub_archive"] == {"Archive.2021"}
    assert server_names(dovecot, user, password) == {
        "INBOX",
        "INBOX.Archive",
        "INBOX.Archive.2021",
        "Sent Items",
        "Drafts",
    }
    assert server_count(dovecot, user, password, "INBOX.Archive") == 0  # moved out
    assert server_count(dovecot, user, password, "Sent Items") == 2  # seeded + copied
    assert server_count(dovecot, user, password, "INBOX.Archive.2021") == 2
    assert_no_server_names(sink)

    # delete and unsubscribe through imaplib, then Dovecot's own state
    sink.clear()
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(options, sink)) as (
            _,
            addrs,
        ):

            def cleanup() -> tuple[Any, ...]:
                conn = imaplib.IMAP4(*addrs[0], timeout=15)
                conn.login(user, password)
                unsub = conn.unsubscribe("Archive.2021")
                deleted = conn.delete("Archive.2021")
                listed = conn.list('""', "Archive*")
                selected = conn.select("INBOX.Archive")  # the server's name: not for the client
                conn.logout()
                return unsub, deleted, listed, selected

            unsub, deleted, listed, selected = await trio.to_thread.run_sync(cleanup)
    assert unsub[0] == "OK" and deleted[0] == "OK", (unsub, deleted)
    assert listed == ("OK", [b'(\\HasNoChildren) "." Archive']), listed
    assert selected[0] == "NO" and b"NONEXISTENT" in selected[1][0], selected
    assert "INBOX.Archive.2021" not in server_names(dovecot, user, password)
    assert_no_server_names(sink)


async def test_a_large_append_to_a_renamed_mailbox(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """A message over the inline limit streams: the APPEND is decided (and its mailbox
    renamed) on its head, then the message follows as the client sends it, both as a
    synchronising literal (imapclient) and as {n+}."""
    user, password = new_user()
    seed_server_side(dovecot, user, password)
    big = b"Subject: big\r\n\r\n" + b"x" * 300_000 + b"\r\n"
    sink: dict[str, Any] = {}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(
            config_for(dovecot.port), filters=chain_for({"mailboxes": MAILBOXES}, sink)
        ) as (_, addrs):

            def session() -> None:
                c = IMAPClient(addrs[0][0], port=addrs[0][1], ssl=False, timeout=15)
                c.login(user, password)
                c.append("Archive", big)
                c.logout()

            await trio.to_thread.run_sync(session)
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            await client.command(b"l", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
            await client.send(b"a1 APPEND Sent {%d+}\r\n" % len(big) + big + b"\r\n")
            reply = await client.read_until_tagged(b"a1")
            await client.command(b"z", b"LOGOUT")
    assert status_of(reply[-1]) == b"OK", reply
    assert server_count(dovecot, user, password, "INBOX.Archive") == 2  # seeded + this one
    assert server_count(dovecot, user, password, "Sent Items") == 2
    conn = direct(dovecot, user, password)
    try:
        conn.select("INBOX.Archive", readonly=True)
        _typ, data = conn.fetch("2", "(RFC822.SIZE)")
        assert f"RFC822.SIZE {len(big)}".encode() in data[0], data  # type: ignore[operator]
    finally:
        conn.logout()
    assert_no_server_names(sink)


async def test_raw_session_literals_list_extended_and_namespace(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """A mailbox as a synchronising literal (assembled, rewritten, sent in segments),
    LIST-EXTENDED with RETURN (STATUS) and OLDNAME-free answers, NAMESPACE: every byte
    the client received is free of server names."""
    user, password = new_user()
    seed_server_side(dovecot, user, password)
    sink: dict[str, Any] = {}
    options = {"mailboxes": MAILBOXES}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(options, sink)) as (
            _,
            addrs,
        ):
            c = await ImapClient.connect(*addrs[0])
            await c.read_response()
            assert (
                status_of(
                    (
                        await c.command(
                            b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode())
                        )
                    )[-1]
                )
                == b"OK"
            )
            await c.send(b"a SELECT {4}\r\n")
            assert (await c.read_response()).startswith(b"+")
            await c.send(b"Sent\r\n")
            got = await c.read_until_tagged(b"a")
            assert status_of(got[-1]) == b"OK" and b"* 1 EXISTS\r\n" in got, got
            got = await c.command(b"b", b'LIST "" "%" RETURN (STATUS (MESSAGES) CHILDREN)')
            assert status_of(got[-1]) == b"OK", got
            listed = b"".join(got)
            assert b'"." Archive\r\n' in listed and b'"." "Sent"\r\n' in listed, got
            assert b"* STATUS Archive (MESSAGES 1)" in listed, got
            assert b'* STATUS "Sent" (MESSAGES 1)' in listed, got
            got = await c.command(b"c", b"NAMESPACE")
            assert status_of(got[-1]) == b"OK", got
            got = await c.command(b"d", b'STATUS "Archive" (MESSAGES)')
            assert got[0] == b"* STATUS Archive (MESSAGES 1)\r\n", got
            await c.command(b"z", b"LOGOUT")
            await c.aclose()
    received = bytes(c.received)
    assert not any(n in received for n in SERVER_NAMES), received
    assert_no_server_names(sink)


# ----------------------------------------------------------------------------- capabilities


CAPS = {"capabilities": {"add": ["X-REWRITTEN"], "remove": ["IDLE", "SORT*"]}}


def caps_in(line: bytes) -> set[bytes]:
    m = re.search(rb"\* CAPABILITY ([^\r\n]*)|\[CAPABILITY ([^\]]*)\]", line)
    assert m, line
    return set((m.group(1) or m.group(2)).upper().split())


async def test_capabilities_in_every_place(dovecot: DovecotServer, new_user: NewUser) -> None:
    """Greeting, CAPABILITY before and after login, LOGIN's tagged OK [CAPABILITY]: the
    additions there, the removals gone; imapclient sees the same."""
    user, password = new_user()
    sink: dict[str, Any] = {}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(CAPS, sink)) as (
            _,
            addrs,
        ):
            c = await ImapClient.connect(*addrs[0])
            lists = [await c.read_response()]
            # (Dovecot puts its list in LOGIN's OK only if the client did not ask before)
            lists.append(
                (await c.command(b"b", b'LOGIN "%s" "%s"' % (user.encode(), password.encode())))[-1]
            )
            lists.append((await c.command(b"c", b"CAPABILITY"))[0])
            await c.command(b"z", b"LOGOUT")
            await c.aclose()
            c = await ImapClient.connect(*addrs[0])
            await c.read_response()
            lists.append((await c.command(b"a", b"CAPABILITY"))[0])
            await c.command(b"z", b"LOGOUT")
            await c.aclose()

            def with_imapclient() -> tuple[bytes, ...]:
                client = IMAPClient(addrs[0][0], port=addrs[0][1], ssl=False, timeout=15)
                client.login(user, password)
                caps = client.capabilities()
                client.logout()
                return caps

            seen = await trio.to_thread.run_sync(with_imapclient)
    assert len(lists) == 4
    for line in lists:
        caps = caps_in(line)
        assert b"X-REWRITTEN" in caps, line
        assert not {c for c in caps if c == b"IDLE" or c.startswith(b"SORT")}, line
        assert not {c for c in caps if c.startswith(b"COMPRESS")}, line
    assert b"LITERAL+" in caps_in(lists[2])  # the rest is the server's
    assert b"X-REWRITTEN" in seen and b"IDLE" not in seen


async def test_a_rewrite_cannot_bring_back_what_the_proxy_removed(
    dovecot: DovecotServer, new_user: NewUser
) -> None:
    """A rewrite filter built directly (the config refuses this) that adds COMPRESS and
    STARTTLS on a listener without STARTTLS: the client is offered neither, and COMPRESS
    is still refused by the proxy."""
    user, password = new_user()
    edit = CapabilityEdit(["COMPRESS=DEFLATE", "STARTTLS", "X-ADDED"], [], auth=None)
    filters = FilterChain(
        [ChainEntry("rewrite", lambda info: RewriteFilter(RewriteConfig(capabilities=edit)))]
    )
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=filters) as (_, addrs):
            c = await ImapClient.connect(*addrs[0])
            greeting = await c.read_response()
            login = await c.command(b"b", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
            after = (await c.command(b"c", b"CAPABILITY"))[0]
            compress = await c.command(b"d", b"COMPRESS DEFLATE")
            await c.command(b"z", b"LOGOUT")
            await c.aclose()
    for line in (greeting, login[-1], after):
        caps = caps_in(line)
        assert b"X-ADDED" in caps, line
        assert b"STARTTLS" not in caps and not any(x.startswith(b"COMPRESS") for x in caps)
    assert status_of(compress[-1]) == b"NO" and b"[CANNOT]" in compress[-1]


# ----------------------------------------------------------------------------- ACL, METADATA


class AclMetadataDovecot(DovecotServer):
    """The test Dovecot with the ACL plugin (vfile) and IMAP METADATA switched on."""

    def render_config(self) -> str:
        text = super().render_config()
        plugins = "mail_plugins = $mail_plugins imap_zlib"
        assert plugins in text, "the fixture's imap plugins line moved: adapt this test"
        text = text.replace(plugins, plugins + " imap_acl")
        extra = (
            "mail_plugins = $mail_plugins acl\n"
            "plugin {\n  acl = vfile\n}\n"
            "imap_metadata = yes\n"
            "mail_attribute_dict = file:%h/dovecot-attributes\n"
        )
        return text.replace("protocol imap {", extra + "protocol imap {", 1)


@pytest.fixture(scope="module")
def acl_dovecot(tls_certs: Any) -> Iterator[DovecotServer]:
    with AclMetadataDovecot(certs=tls_certs) as server:
        yield server


async def test_acl_and_metadata_answers(acl_dovecot: DovecotServer) -> None:
    """SETACL, GETACL, MYRIGHTS, LISTRIGHTS, SETMETADATA, GETMETADATA on the client's
    names: Dovecot's INBOX.Archive holds the ACL and the annotation (checked directly),
    and the ACL, MYRIGHTS, LISTRIGHTS and METADATA answers name the client's mailbox."""
    dovecot = acl_dovecot
    user, password = "alice", dovecot.users["alice"]
    seed_server_side(dovecot, user, password)
    sink: dict[str, Any] = {}
    options = {"mailboxes": MAILBOXES}
    with trio.fail_after(TIMEOUT):
        async with running_proxy(config_for(dovecot.port), filters=chain_for(options, sink)) as (
            _,
            addrs,
        ):
            c = await ImapClient.connect(*addrs[0])
            await c.read_response()
            await c.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
            answers = {}
            for tag, text in [
                (b"a", b"SETACL Archive bob lr"),
                (b"b", b"GETACL Archive"),
                (b"c", b"MYRIGHTS Sent"),
                (b"d", b"LISTRIGHTS Archive bob"),
                (b"e", b'SETMETADATA Archive (/private/comment "kept")'),
                (b"f", b"GETMETADATA Archive /private/comment"),
            ]:
                got = await c.command(tag, text)
                assert status_of(got[-1]) == b"OK", (text, got)
                answers[tag] = got[0]
            await c.command(b"z", b"LOGOUT")
            await c.aclose()
    assert answers[b"b"].startswith(b"* ACL Archive ") and b"bob lr" in answers[b"b"]
    assert answers[b"c"].startswith(b'* MYRIGHTS "Sent" '), answers[b"c"]
    assert answers[b"d"].startswith(b"* LISTRIGHTS Archive bob "), answers[b"d"]
    assert answers[b"f"] == b"* METADATA Archive (/private/comment {4}\r\nkept)\r\n" or (
        answers[b"f"] == b'* METADATA Archive (/private/comment "kept")\r\n'
    ), answers[b"f"]
    received = bytes(c.received)
    assert not any(n in received for n in SERVER_NAMES), received
    # Dovecot's own state, on its own names
    d = await ImapClient.connect(dovecot.host, dovecot.port)
    await d.read_response()
    await d.command(b"L", b'LOGIN "%s" "%s"' % (user.encode(), password.encode()))
    acl = await d.command(b"a", b"GETACL INBOX.Archive")
    meta = await d.command(b"b", b"GETMETADATA INBOX.Archive /private/comment")
    await d.command(b"z", b"LOGOUT")
    await d.aclose()
    assert acl[0].startswith(b"* ACL INBOX.Archive ") and b"bob lr" in acl[0], acl
    assert meta[0].startswith(b"* METADATA INBOX.Archive ") and b"kept" in meta[0], meta
