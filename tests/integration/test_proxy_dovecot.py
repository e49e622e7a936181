"""Real clients (stdlib ``imaplib``, ``imapclient``, raw sockets) talking to a real Dovecot
*through* the proxy, over every combination of client leg (STARTTLS on the plain listener,
implicit TLS) and upstream leg (none, implicit TLS, STARTTLS).

Observed Dovecot 2.3.19 behaviour these tests rely on (checked directly, without the proxy):

* Capabilities: the greeting carries ``[CAPABILITY ...]`` (``STARTTLS`` only on a plaintext
  connection); ``COMPRESS=DEFLATE`` appears only after login.  The tagged ``OK`` of LOGIN /
  AUTHENTICATE carries ``[CAPABILITY ...]`` unless the client sent CAPABILITY before
  STARTTLS / login - then Dovecot sends an untagged ``* CAPABILITY`` before a plain tagged
  ``OK`` instead.  (CAPABILITY sent *after* STARTTLS does not count, so with
  ``--upstream-tls starttls`` the proxy's own CAPABILITY never changes this.)  Every list
  has ``LITERAL+``, which the proxy passes on: it sends ``{n+}`` upstream as ``{n}`` and
  absorbs Dovecot's ``+`` (see test_proxy_unparsed_literals.py).
* A synchronising literal Dovecot will not take (``APPEND`` to a missing mailbox) is refused
  with a tagged ``NO [TRYCREATE]`` and *no* ``+``: the client must not send the literal and
  its next line is a new command.
* Pipelined SEARCH / STATUS / LIST / CHECK may complete out of order (Dovecot runs some
  commands in parallel); NOOP, CAPABILITY, SELECT, EXAMINE, FETCH, STORE, UID FETCH and
  UNSELECT complete in order.
* Dovecot's hierarchy separator here (Maildir++) is ``.``, and ``/`` is refused in names.
"""

from __future__ import annotations

import base64
import imaplib
import itertools
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from imapclient.exceptions import LoginError

from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer

from .conftest import TIMEOUT, ProxyPool, RawClient, Route, UserPool

pytestmark = pytest.mark.dovecot

NewUser = Callable[[], tuple[str, str]]

# ----------------------------------------------------------------------------- messages

ATTACHMENT = bytes(range(256)) * 8  # NUL bytes included: BINARY[] needs a literal8


def multipart_message(marker: str) -> bytes:
    """A two-part message: 8-bit UTF-8 text and a base64 binary attachment.  The raw 8-bit
    ``To`` name and file name make Dovecot send literals inside ENVELOPE / BODYSTRUCTURE."""
    b64 = base64.encodebytes(ATTACHMENT).replace(b"\n", b"\r\n")
    head = (
        "From: Alice <alice@example.org>\r\n"
        "To: Bjørn <bob@example.org>\r\n"
        f"Subject: Gr=?utf-8?q?=C3=BC=C3=9Fe?= {marker}\r\n"
        "Date: Mon, 7 Feb 1994 21:52:25 -0800\r\n"
        f"Message-ID: <{marker}@example.org>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="=-=-boundary"\r\n'
        "\r\n"
        "Preamble.\r\n"
        "--=-=-boundary\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "\r\n"
    )
    attachment_head = (
        "--=-=-boundary\r\n"
        'Content-Type: application/octet-stream; name="blöb.bin"\r\n'
        "Content-Transfer-Encoding: base64\r\n"
        "\r\n"
    )
    return head.encode() + TEXT_PART + attachment_head.encode() + b64 + b"--=-=-boundary--\r\n"


TEXT_PART = "Grüße aus Zürich \u2013 台北\r\n".encode()


def simple_message(subject: str, body: str = "hello") -> bytes:
    return (
        f"From: t@example.org\r\nTo: u@example.org\r\nSubject: {subject}\r\n"
        f"Date: Tue, 1 Aug 2023 10:00:00 +0000\r\n\r\n{body}\r\n"
    ).encode()


# ----------------------------------------------------------------------------- capabilities

_CODE_LIST = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_DATA_LIST = re.compile(rb"^\* CAPABILITY ([^\r\n]*)", re.IGNORECASE)


def caps_in(message: bytes) -> list[str] | None:
    """The capability list a response carries (code or untagged data), else None."""
    m = _DATA_LIST.match(message) or _CODE_LIST.search(message)
    return None if m is None else m.group(1).decode("ascii").split()


def strip_caps(message: bytes) -> bytes:
    return _DATA_LIST.sub(b"* CAPABILITY <list>", _CODE_LIST.sub(b"[CAPABILITY <list>]", message))


def mediated(upstream: list[str]) -> list[str]:
    """What the proxy must leave of an upstream list (STARTTLS is judged separately)."""
    out = []
    for cap in upstream:
        upper = cap.upper()
        if upper == "STARTTLS" or upper.startswith("COMPRESS="):
            continue
        if upper.startswith("AUTH=") and upper.endswith("-PLUS"):
            continue
        out.append(cap)
    return out


def assert_caps(got: list[str] | None, upstream: list[str], *, starttls: bool) -> None:
    assert got is not None, "no capability list"
    assert not [c for c in got if c.upper().startswith("COMPRESS")], got
    assert "LITERAL+" in got, got  # passed on: {n+} goes upstream as {n}
    assert ("STARTTLS" in got) == starttls, got
    assert got.count("STARTTLS") <= 1, got
    # Everything else (unknown extensions included) unchanged and in the upstream's order.
    assert [c for c in got if c != "STARTTLS"] == mediated(upstream)


@dataclass(frozen=True)
class DovecotCaps:
    greeting: bytes  # the plain port's greeting
    pre_login: list[str]  # plain port greeting list (has STARTTLS)
    pre_login_tls: list[str]  # implicit-TLS port greeting list
    post_login: list[str]  # the LOGIN OK's list


@pytest.fixture(scope="module")
def dovecot_caps(dovecot: DovecotServer, tls_certs: TlsCerts) -> DovecotCaps:
    """What Dovecot itself says, asked directly (no proxy)."""
    with RawClient.connect(dovecot.port) as plain:
        greeting = plain.greeting
        reply = plain.command(b"a", b'LOGIN "alice" "%s"' % dovecot.users["alice"].encode())
        plain.command(b"b", b"LOGOUT")
    with RawClient.connect(dovecot.tls_port, tls_certs.client_context()) as tls:
        tls_greeting = tls.greeting
        tls.command(b"b", b"LOGOUT")
    pre, pre_tls, post = caps_in(greeting), caps_in(tls_greeting), caps_in(reply[-1])
    assert pre is not None and pre_tls is not None and post is not None
    # The premises of the mediation tests:
    assert "STARTTLS" in pre and "STARTTLS" not in pre_tls
    assert "COMPRESS=DEFLATE" in post and not [c for c in pre if c.startswith("COMPRESS")]
    assert "LITERAL+" in pre and "LITERAL+" in pre_tls and "LITERAL+" in post
    assert mediated(pre) == mediated(pre_tls)
    return DovecotCaps(greeting, pre, pre_tls, post)


# ----------------------------------------------------------------------------- helpers


def login_cmd(user: str, password: str) -> bytes:
    return b'LOGIN "%s" "%s"' % (user.encode(), password.encode())


def plain_ir(user: str, password: str) -> bytes:
    return base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())


def tagged(reply: list[bytes], tag: bytes, status: bytes = b"OK") -> bytes:
    last = reply[-1]
    assert last.startswith(tag + b" " + status), reply
    return last


def direct_imaplib(dovecot: DovecotServer) -> imaplib.IMAP4:
    return imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT)


def literals_by_item(fetched: list[object]) -> dict[bytes, bytes]:
    """imaplib FETCH data: each literal under the name of the item it belongs to."""
    out = {}
    for part in fetched:
        if isinstance(part, tuple):
            m = re.search(rb"((?:BODY|BINARY)\[[^\]]*\](?:<\d+>)?) ~?\{\d+\}$", part[0])
            if m is not None:  # else a literal inside ENVELOPE / BODYSTRUCTURE
                out[m.group(1)] = part[1]
    return out


def fetch_uid_body(conn: imaplib.IMAP4, uid: bytes) -> bytes:
    typ, data = conn.uid("FETCH", uid.decode(), "(BODY.PEEK[])")
    assert typ == "OK"
    item = data[0]
    assert isinstance(item, tuple)
    return item[1]


# ============================================================================ login / auth


def test_login_imaplib(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.imaplib() as conn:
        # (on the STARTTLS leg imaplib has re-read the capabilities after STARTTLS)
        assert "STARTTLS" not in conn.capabilities
        assert conn.login(user, password)[0] == "OK"
        assert conn.state == "AUTH"
        assert conn.select("INBOX") == ("OK", [b"0"])
        assert conn.noop()[0] == "OK"
        assert conn.logout()[0] == "BYE"


def test_login_wrong_password_then_right(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.imapclient() as client:
        with pytest.raises(LoginError, match="AUTHENTICATIONFAILED"):
            client.login(user, "not-" + password)
        # the session is still usable
        assert b"Logged in" in client.login(user, password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        client.logout()


def test_login_imapclient(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.imapclient() as client:
        assert not client.has_capability("STARTTLS")
        client.login(user, password)
        assert client.has_capability("IDLE") and client.has_capability("MOVE")
        assert not client.has_capability("COMPRESS=DEFLATE")
        client.noop()
        client.logout()


def test_authenticate_plain_sasl_ir(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.raw() as c:
        reply = c.command(b"A1", b"AUTHENTICATE PLAIN " + plain_ir(user, password))
        ok = tagged(reply, b"A1")
        assert b"[CAPABILITY " in ok  # Dovecot's post-login list, mediated
        assert b"COMPRESS" not in ok
        tagged(c.command(b"A2", b"SELECT INBOX"), b"A2")
        tagged(c.command(b"A3", b"LOGOUT"), b"A3")


def test_authenticate_plain_two_step(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.raw() as c:
        c.send(b"A1 AUTHENTICATE PLAIN\r\n")
        assert c.expect_continuation() == b"+ \r\n"
        c.send(plain_ir(user, password) + b"\r\n")
        tagged(c.read_until_tagged(b"A1"), b"A1")
        tagged(c.command(b"A2", b"SELECT INBOX"), b"A2")


def test_authenticate_login_two_rounds(route: Route, new_user: NewUser) -> None:
    """AUTH=LOGIN: two "+" challenges, each answered by one SASL line."""
    user, password = new_user()
    with route.raw() as c:
        c.send(b"A1 AUTHENTICATE LOGIN\r\n")
        assert c.expect_continuation() == b"+ VXNlcm5hbWU6\r\n"  # "Username:"
        c.send(base64.b64encode(user.encode()) + b"\r\n")
        assert c.expect_continuation() == b"+ UGFzc3dvcmQ6\r\n"  # "Password:"
        c.send(base64.b64encode(password.encode()) + b"\r\n")
        tagged(c.read_until_tagged(b"A1"), b"A1")
        tagged(c.command(b"A2", b"EXAMINE INBOX"), b"A2")


def test_authenticate_plain_imaplib_and_imapclient(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    # imaplib never sends an initial response: AUTHENTICATE PLAIN, "+ ", then the data.
    with route.imaplib() as conn:
        creds = f"\0{user}\0{password}".encode()
        typ, _ = conn.authenticate("PLAIN", lambda _challenge: creds)
        assert typ == "OK"
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()
    with route.imapclient() as client:
        client.plain_login(user, password)
        assert client.select_folder("INBOX")[b"EXISTS"] == 0
        client.logout()


def test_authenticate_cancel(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.raw() as c:
        c.send(b"A1 AUTHENTICATE PLAIN\r\n")
        c.expect_continuation()
        c.send(b"*\r\n")
        reply = c.read_until_tagged(b"A1")
        assert reply == [b"A1 BAD Authentication aborted by client.\r\n"]
        # the stream is in step: the next line is a command again
        tagged(c.command(b"A2", b"NOOP"), b"A2")
        tagged(c.command(b"A3", login_cmd(user, password)), b"A3")
        tagged(c.command(b"A4", b"EXAMINE INBOX"), b"A4")
    # imaplib: an authobject returning None sends "*"
    with route.imaplib() as conn:
        with pytest.raises(imaplib.IMAP4.error, match="aborted"):
            conn.authenticate("PLAIN", lambda _challenge: None)
        assert conn.login(user, password)[0] == "OK"
        conn.logout()


# ============================================================================ capabilities


def test_capabilities_before_and_after_tls_and_login(
    route: Route, dovecot_caps: DovecotCaps, new_user: NewUser
) -> None:
    user, password = new_user()
    starttls_leg = route.client_leg == "starttls"
    with route.raw(starttls=False) as c:
        # 1. the greeting: STARTTLS only on the plain listener; the text is Dovecot's
        assert_caps(caps_in(c.greeting), dovecot_caps.pre_login, starttls=starttls_leg)
        assert strip_caps(c.greeting) == strip_caps(dovecot_caps.greeting)
        # 2. * CAPABILITY before login
        reply = c.command(b"C1", b"CAPABILITY")
        tagged(reply, b"C1")
        assert_caps(caps_in(reply[0]), dovecot_caps.pre_login, starttls=starttls_leg)
        if starttls_leg:
            c.starttls(route.ctx(), tag=b"C2")
            reply = c.command(b"C3", b"CAPABILITY")
            assert_caps(caps_in(reply[0]), dovecot_caps.pre_login, starttls=False)
        # STARTTLS again / on the TLS listener: refused by the proxy, session goes on
        tagged(c.command(b"C4", b"STARTTLS"), b"C4", b"BAD")
        tagged(c.command(b"C5", b"NOOP"), b"C5")
        # 3. LOGIN after a CAPABILITY command: the post-login list arrives exactly once,
        #    as untagged data or in the tagged OK (depending on what Dovecot saw)
        reply = c.command(b"C6", login_cmd(user, password))
        tagged(reply, b"C6")
        lists = [got for m in reply if (got := caps_in(m)) is not None]
        assert len(lists) == 1, reply
        assert_caps(lists[0], dovecot_caps.post_login, starttls=False)
        # 4. * CAPABILITY after login
        reply = c.command(b"C7", b"CAPABILITY")
        tagged(reply, b"C7")
        assert_caps(caps_in(reply[0]), dovecot_caps.post_login, starttls=False)
        # COMPRESS is not offered and refused by the proxy; the stream stays uncompressed
        tagged(c.command(b"C8", b"COMPRESS DEFLATE"), b"C8", b"NO")
        reply = c.command(b"C9", b"SELECT INBOX")
        tagged(reply, b"C9")
        assert b"* 0 EXISTS\r\n" in reply


def test_login_ok_carries_mediated_capabilities(
    route: Route, dovecot_caps: DovecotCaps, new_user: NewUser
) -> None:
    """No CAPABILITY before LOGIN: Dovecot lists the post-login set in the tagged OK."""
    user, password = new_user()
    with route.raw() as c:  # on the STARTTLS leg the proxy answers STARTTLS itself
        reply = c.command(b"L1", login_cmd(user, password))
        assert len(reply) == 1, reply
        ok = tagged(reply, b"L1")
        assert ok.startswith(b"L1 OK [CAPABILITY ")
        assert ok.endswith(b"] Logged in\r\n")
        assert_caps(caps_in(ok), dovecot_caps.post_login, starttls=False)
        # extensions the proxy knows nothing about are passed on
        assert {"SNIPPET=FUZZY", "SAVEDATE", "NOTIFY", "URL-PARTIAL"} <= set(caps_in(ok) or ())
    # AUTHENTICATE's OK too
    with route.raw() as c:
        reply = c.command(b"L2", b"AUTHENTICATE PLAIN " + plain_ir(user, password))
        assert_caps(caps_in(tagged(reply, b"L2")), dovecot_caps.post_login, starttls=False)


@pytest.mark.parametrize("upstream_leg", ["none", "implicit", "starttls"])
def test_plaintext_login_capabilities(
    upstream_leg: str, proxy_pool: ProxyPool, dovecot_caps: DovecotCaps, new_user: NewUser
) -> None:
    """A client on the plain listener that never starts TLS (allowed: no
    --require-tls-for-login) and asks CAPABILITY before LOGIN - what imaplib.IMAP4 does.

    STARTTLS is offered before login only (RFC 9051 6.2.1: it is valid in the
    not-authenticated state only, and the proxy refuses it after login); the post-login
    list Dovecot sends as untagged data *during* LOGIN must not offer it.
    """
    user, password = new_user()
    proxy = proxy_pool.get(upstream_leg)
    with RawClient.connect(proxy.plain_port) as c:
        assert_caps(caps_in(c.greeting), dovecot_caps.pre_login, starttls=True)
        reply = c.command(b"K1", b"CAPABILITY")
        assert_caps(caps_in(reply[0]), dovecot_caps.pre_login, starttls=True)
        reply = c.command(b"K2", login_cmd(user, password))
        tagged(reply, b"K2")
        lists = [got for m in reply if (got := caps_in(m)) is not None]
        assert len(lists) == 1, reply
        assert_caps(lists[0], dovecot_caps.post_login, starttls=False)
        # ... consistent with what the proxy does with STARTTLS now:
        tagged(c.command(b"K3", b"STARTTLS"), b"K3", b"BAD")
        reply = c.command(b"K4", b"CAPABILITY")
        assert_caps(caps_in(reply[0]), dovecot_caps.post_login, starttls=False)


# ============================================================================ mailboxes


def test_list_create_rename_delete_non_ascii(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.imapclient() as client:
        client.login(user, password)
        ((_flags, sep, _root),) = client.list_folders("", "")
        assert sep == b"."
        drafts, nested, odd = "Entwürfe", "台北.日本語", "Q&A \u2013 ÄÖÜ"
        for name in (drafts, nested, odd):
            client.create_folder(name)
        listed = {name for _flags, _sep, name in client.list_folders()}
        assert {"INBOX", drafts, "台北", nested, odd} <= listed
        client.rename_folder(drafts, "Entwürfe alt")
        client.delete_folder(nested)
        listed = {name for _flags, _sep, name in client.list_folders()}
        assert "Entwürfe alt" in listed and drafts not in listed and nested not in listed
        assert client.folder_exists(odd)
        client.select_folder("Entwürfe alt")
        client.logout()
    # On the wire the names are modified UTF-7 (RFC 3501 5.1.3), relayed unchanged.
    with route.raw_login(user, password) as c:
        tagged(c.command(b"W1", b'CREATE "&U,BTFw-.&ZeVnLIqe-"'), b"W1")
        reply = c.command(b"W2", b'LIST "" "*"')
        tagged(reply, b"W2")
        names = {re.sub(rb'^\* LIST \([^)]*\) "\." ', b"", m).rstrip(b"\r\n") for m in reply[:-1]}
        assert names == {
            b"INBOX",
            b'"Entw&APw-rfe alt"',
            b'"Q&-A &IBM- &AMQA1gDc-"',
            b"&U,BTFw-",
            b"&U,BTFw-.&ZeVnLIqe-",
        }, names
        tagged(c.command(b"W3", b'STATUS "&U,BTFw-.&ZeVnLIqe-" (MESSAGES)'), b"W3")
        # a name that is not valid modified UTF-7 goes through and Dovecot judges it
        reply = c.command(b"W4", b'CREATE "bad&name"')
        assert not reply[-1].startswith(b"W4 OK"), reply
        tagged(c.command(b"W5", b"NOOP"), b"W5")


def test_select_examine_and_fetch_items(
    route: Route, new_user: NewUser, dovecot: DovecotServer
) -> None:
    user, password = new_user()
    marker = uuid.uuid4().hex
    raw = multipart_message(marker)
    dovecot.seed_message(user, raw, flags="F")
    items = (
        "(FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE BODY[HEADER] BODY[TEXT] BODY.PEEK[1] "
        "BODY[]<0.100> BINARY[] BINARY.PEEK[2] BINARY.SIZE[2])"
    )

    def examine_and_fetch(conn: imaplib.IMAP4) -> list[object]:
        assert conn.login(user, password)[0] == "OK"
        typ, data = conn.select("INBOX", readonly=True)  # EXAMINE: nothing becomes \Seen
        assert (typ, data) == ("OK", [b"1"])
        typ, fetched = conn.fetch("1", items)
        assert typ == "OK"
        conn.logout()
        return list(fetched)

    with route.imaplib() as conn:
        proxied = examine_and_fetch(conn)
    with direct_imaplib(dovecot) as conn:
        direct = examine_and_fetch(conn)
    assert proxied == direct  # every byte, literals included, as Dovecot sent it
    literals = literals_by_item(proxied)
    head, _, text = raw.partition(b"\r\n\r\n")
    assert literals[b"BODY[HEADER]"] == head + b"\r\n\r\n"
    assert literals[b"BODY[TEXT]"] == text
    assert literals[b"BODY[1]"] + b"\r\n" == TEXT_PART  # the CRLF belongs to the boundary
    assert literals[b"BODY[]<0>"] == raw[:100]
    # literal8 (~{n}): Dovecot's BINARY[] has the base64 part decoded (binary, NULs included)
    assert literals[b"BINARY[]"].startswith(head)
    assert ATTACHMENT in literals[b"BINARY[]"]
    assert literals[b"BINARY[2]"] == ATTACHMENT

    # The content itself, parsed by imapclient through the proxy.
    with route.imapclient() as client:
        client.login(user, password)
        info = client.select_folder("INBOX")
        assert info[b"EXISTS"] == 1 and info[b"READ-WRITE"]
        # (imapclient cannot parse literal8, so no BINARY[] here)
        msg = client.fetch(
            [1],
            ["FLAGS", "ENVELOPE", "BODYSTRUCTURE", "RFC822.SIZE", "BODY.PEEK[1]", "BINARY.SIZE[2]"],
        )
        data = msg[1]
        assert set(data[b"FLAGS"]) - {b"\\Recent"} == {b"\\Flagged"}
        assert data[b"ENVELOPE"].subject == b"Gr=?utf-8?q?=C3=BC=C3=9Fe?= " + marker.encode()
        assert data[b"ENVELOPE"].from_[0].mailbox == b"alice"
        assert data[b"ENVELOPE"].to[0].name == "Bjørn".encode()  # sent as a literal
        assert data[b"BODYSTRUCTURE"].is_multipart
        assert data[b"RFC822.SIZE"] == len(raw)
        assert data[b"BODY[1]"] + b"\r\n" == TEXT_PART
        assert data[b"BINARY.SIZE[2]"] == len(ATTACHMENT)
        # non-PEEK fetch in a read-write mailbox sets \Seen
        client.fetch([1], ["BODY[TEXT]"])
        assert set(client.get_flags([1])[1]) - {b"\\Recent"} == {b"\\Flagged", b"\\Seen"}
        client.logout()


# ============================================================================ APPEND


def test_append_sync_literal(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    msg = multipart_message(uuid.uuid4().hex)
    with route.imaplib() as conn:  # imaplib sends "{n}" and waits for the "+"
        conn.login(user, password)
        date = imaplib.Time2Internaldate(time.time())
        typ, data = conn.append("INBOX", r"(\Seen \Flagged)", date, msg)
        assert typ == "OK", data
        m = re.match(rb"\[APPENDUID \d+ (\d+)\]", data[0] or b"")
        assert m is not None, data
        conn.select("INBOX")
        assert fetch_uid_body(conn, m.group(1)) == msg
        conn.logout()
    with route.imapclient() as client:
        client.login(user, password)
        client.append("INBOX", simple_message("second"), flags=[b"\\Draft"])
        client.select_folder("INBOX", readonly=True)
        assert client.search(["SUBJECT", "second", "DRAFT"]) == [2]
        client.logout()


def fetch_bodies(c: RawClient, tag: bytes, messages: str) -> tuple[list[bytes], list[bytes]]:
    """``FETCH messages (FLAGS BODY.PEEK[])``: every body and every FETCH response."""
    reply = c.command(tag, b"FETCH %s (FLAGS BODY.PEEK[])" % messages.encode())
    tagged(reply, tag)
    bodies = [re.search(rb"BODY\[\] \{\d+\}\r\n", r) for r in reply[:-1]]
    got = [r[b.end() : -3] for r, b in zip(reply[:-1], bodies, strict=True) if b]
    return got, reply[:-1]


def message_count(c: RawClient, tag: bytes, mailbox: bytes = b"INBOX") -> int:
    reply = c.command(tag, b"STATUS %s (MESSAGES)" % mailbox)
    tagged(reply, tag)
    m = re.fullmatch(rb"\* STATUS \S+ \(MESSAGES (\d+)\)\r\n", reply[0])
    assert m is not None, reply
    return int(m.group(1))


def test_append_sync_literals_and_multiappend(route: Route, new_user: NewUser) -> None:
    """APPEND and MULTIAPPEND with synchronising literals: every "+" round relayed."""
    user, password = new_user()
    m1, m2, m3, m4 = (simple_message(f"m{i}", "x" * (100 * i)) for i in range(1, 5))
    with route.raw_login(user, password) as c:
        reply = c.send_literals(b"P1", b"APPEND INBOX {5}", b"hello")
        assert re.match(rb"P1 OK \[APPENDUID \d+ 1\]", tagged(reply, b"P1"))
        # MULTIAPPEND with flags per message
        reply = c.send_literals(
            b"P2",
            b"APPEND INBOX (\\Flagged) {%d}" % len(m1),
            m1 + b" (\\Seen) {%d}" % len(m2),
            m2,
        )
        assert re.match(rb"P2 OK \[APPENDUID \d+ 2:3\]", tagged(reply, b"P2"))
        # MULTIAPPEND without flags: two "+" rounds relayed
        c.send(b"P3 APPEND INBOX {%d}\r\n" % len(m3))
        c.expect_continuation()
        c.send(m3 + b" {%d}\r\n" % len(m4))
        c.expect_continuation()
        c.send(m4 + b"\r\n")
        assert re.match(rb"P3 OK \[APPENDUID \d+ 4:5\]", tagged(c.read_until_tagged(b"P3"), b"P3"))
        # all five arrived intact
        tagged(c.command(b"P4", b"EXAMINE INBOX"), b"P4")
        got, fetched = fetch_bodies(c, b"P5", "1:5")
        assert got == [b"hello", m1, m2, m3, m4]
        assert b"\\Flagged" in fetched[1] and b"\\Seen" in fetched[2]


TRICKY_LINES = (
    b"A1 OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE] fake completion\r\n"
    b"* CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE AUTH=SCRAM-SHA-1-PLUS\r\n"
    b"* BYE [UNAVAILABLE] not really\r\n"
    b"+ go ahead\r\n"
    b"X1 APPEND INBOX {99999999}\r\n"
    b"X2 LOGIN user {5+}\r\n"
    b"DONE\r\n"
    b"X3 STARTTLS\r\n"
)


def tricky_message(subject: str, size: int) -> bytes:
    """Literal content that looks like protocol: it must pass through untouched."""
    head = simple_message(subject, "")
    return head + TRICKY_LINES * (max(size - len(head), 0) // len(TRICKY_LINES) + 1)


@pytest.mark.parametrize("size", [2_000, 300_000], ids=["inline", "streamed"])
def test_literal_content_is_opaque(route: Route, new_user: NewUser, size: int) -> None:
    """Literals (APPEND's and FETCH's, small ones kept in a frame and large streamed ones)
    are relayed byte for byte, never read as commands/responses or mediated."""
    user, password = new_user()
    first_msg, second_msg = tricky_message("sync", size), tricky_message("sync 2", size)
    with route.raw_login(user, password) as c:
        c.send(b"O1 APPEND INBOX {%d}\r\n" % len(first_msg))
        c.expect_continuation()
        c.send(first_msg + b"\r\n")
        tagged(c.read_until_tagged(b"O1"), b"O1")
        # LITERAL+ (sent upstream as {n}; Dovecot's "+" is not passed on)
        reply = c.command(b"O2", b"APPEND INBOX {%d+}\r\n%s" % (len(second_msg), second_msg))
        assert len(reply) == 1, reply
        tagged(reply, b"O2")
        reply = c.command(b"O3", b"APPEND INBOX ~{%d+}\r\n%s" % (7, b"bin\x00ary"))
        assert len(reply) == 1, reply
        tagged(reply, b"O3")
        tagged(c.command(b"O4", b"EXAMINE INBOX"), b"O4")
        reply = c.command(b"O5", b"FETCH 1:3 (BODY.PEEK[])")
        tagged(reply, b"O5")
        expected = [first_msg, second_msg, b"bin\x80ary"]  # Dovecot stores NUL as 0x80
        for n, (msg, want) in enumerate(zip(reply[:-1], expected, strict=True), 1):
            prefix = b"* %d FETCH (BODY[] {%d}\r\n" % (n, len(want))
            assert msg == prefix + want + b")\r\n", msg[:200]
        reply = c.command(b"O6", b"FETCH 3 (BINARY.PEEK[])")
        assert reply[0] == b"* 3 FETCH (BINARY[] ~{7}\r\nbin\x00ary)\r\n"
        tagged(c.command(b"O7", b"NOOP"), b"O7")


def test_append_literal_plus(route: Route, new_user: NewUser) -> None:
    """APPEND / MULTIAPPEND with ``{n+}`` / ``~{n+}``: the client sends each literal without
    waiting; the proxy sends it upstream as ``{n}`` and absorbs Dovecot's ``+``, so the
    client sees only the tagged answer.  A refused APPEND (missing mailbox) gets Dovecot's
    NO, and its literal, sent anyway, is consumed - never run, even when it looks like
    commands.  Everything stored is byte-exact."""
    user, password = new_user()
    m1, m2 = simple_message("m1", "x" * 100), simple_message("m2", "x" * 200)
    tricky_small, tricky_large = tricky_message("plus", 2_000), tricky_message("plus", 300_000)
    with route.raw_login(user, password) as c:
        caps = c.command(b"P0", b"CAPABILITY")
        assert b" LITERAL+" in caps[0], caps
        assert message_count(c, b"P1") == 0
        appends = {
            b"P2": b"APPEND INBOX {5+}\r\nhello",
            # MULTIAPPEND, all in one write
            b"P3": b"APPEND INBOX (\\Flagged) {%d+}\r\n%s (\\Seen) {%d+}\r\n%s"
            % (len(m1), m1, len(m2), m2),
            b"P4": b"APPEND INBOX ~{%d+}\r\n%s" % (7, b"bin\x00ary"),
            # literal content that looks like protocol (kept in a frame, and streamed)
            b"P5": b"APPEND INBOX {%d+}\r\n%s" % (len(tricky_small), tricky_small),
            b"P6": b"APPEND INBOX {%d+}\r\n%s" % (len(tricky_large), tricky_large),
        }
        for tag, text in appends.items():
            reply = c.command(tag, text)
            assert len(reply) == 1, reply  # no "+", nothing from the literal
            assert re.match(rb"%s OK \[APPENDUID \d+ [\d:]+\]" % tag, reply[0]), reply
        # refused: Dovecot says NO [TRYCREATE] to the {n}; the literal is consumed here
        reply = c.command(b"PR", b"APPEND nosuch {%d+}\r\n%s" % (len(tricky_large), tricky_large))
        assert len(reply) == 1 and reply[0].startswith(b"PR NO [TRYCREATE]"), reply
        assert c.nothing_pending(0.1)
        noop = c.command(b"PRn", b"NOOP")  # no answer to literal bytes before it
        assert len(noop) == 1 and noop[0].startswith(b"PRn OK"), noop
        assert message_count(c, b"P8") == 6
        tagged(c.command(b"P9", b"EXAMINE INBOX"), b"P9")
        got, fetched = fetch_bodies(c, b"PA", "1:*")
        # (Dovecot stores NUL as 0x80)
        assert got == [b"hello", m1, m2, b"bin\x80ary", tricky_small, tricky_large]
        assert b"\\Flagged" in fetched[1] and b"\\Seen" in fetched[2]


def test_literal_plus_after_a_sync_literal(route: Route, new_user: NewUser) -> None:
    """MULTIAPPEND whose first literal is synchronising (the client waits for "+") and
    whose second is ``{n+}`` (sent at once; upstream as ``{n}``): both are stored."""
    user, password = new_user()
    m1, m2 = simple_message("m1", "one"), simple_message("m2", "two")
    with route.raw_login(user, password) as c:
        c.send(b"Q1 APPEND INBOX {%d}\r\n" % len(m1))
        c.expect_continuation()
        c.send(m1 + b" {%d+}\r\n%s\r\n" % (len(m2), m2))
        reply = c.read_until_tagged(b"Q1")
        assert len(reply) == 1 and reply[0].startswith(b"Q1 OK"), reply
        assert message_count(c, b"Q2") == 2
        tagged(c.command(b"Q3", b"EXAMINE INBOX"), b"Q3")
        got, _ = fetch_bodies(c, b"Q4", "1:*")
        assert got == [m1, m2]


def test_many_literals_in_one_message(
    route: Route, new_user: NewUser, dovecot: DovecotServer
) -> None:
    """Several 30 KB literals in one command and one response: together past the size
    up to which the proxy keeps literals inside a frame (64 KiB)."""
    user, password = new_user()
    parts = [bytes([65 + i]) * 30_000 for i in range(5)]
    msgs = [simple_message(f"part {i}", part.decode()) for i, part in enumerate(parts)]
    with route.raw_login(user, password) as c:
        # MULTIAPPEND of five synchronising literals: one command, five "+" rounds
        pieces = [b"APPEND INBOX {%d}" % len(msgs[0])]
        pieces += [m + b" {%d}" % len(n) for m, n in itertools.pairwise(msgs)]
        reply = c.send_literals(b"M1", *pieces, msgs[-1])
        assert re.match(rb"M1 OK \[APPENDUID \d+ 1:5\]", tagged(reply, b"M1"))
    # one FETCH response carrying all five bodies, through the proxy and directly
    fetch = "(" + " ".join(f"BODY.PEEK[{n}]" for n in range(1, 6)) + ")"
    boundary = "=-=-b"
    mime = (
        f'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        + "".join(f"--{boundary}\r\n\r\n{p.decode()}\r\n" for p in parts)
        + f"--{boundary}--\r\n"
    ).encode()
    dovecot.seed_message(user, mime)

    def examine_fetch(conn: imaplib.IMAP4) -> list[object]:
        conn.login(user, password)
        conn.select("INBOX", readonly=True)
        typ, data = conn.fetch("6", fetch)
        assert typ == "OK"
        typ, bodies = conn.fetch("1:5", "(BODY.PEEK[TEXT])")
        assert typ == "OK"
        conn.logout()
        return [*data, *bodies]

    with route.imaplib() as conn:
        proxied = examine_fetch(conn)
    with direct_imaplib(dovecot) as conn:
        direct = examine_fetch(conn)
    assert proxied == direct
    got = [part[1] for part in proxied if isinstance(part, tuple)]
    assert got[:5] == parts
    assert got[5:] == [part + b"\r\n" for part in parts]


def test_refused_sync_literal(route: Route, new_user: NewUser) -> None:
    """Dovecot refuses APPEND to a missing mailbox before the literal: tagged NO, no "+"."""
    user, password = new_user()
    with route.raw_login(user, password) as c:
        c.send(b"R1 APPEND Nonexistent {5}\r\n")
        reply = c.read_until_tagged(b"R1")
        assert len(reply) == 1, reply  # no "+ ..." before it
        assert reply[0].startswith(b"R1 NO [TRYCREATE] ")
        # the literal was not sent: the next line is read as a command again
        tagged(c.command(b"R2", b"NOOP"), b"R2")
        # a CREATE and the same APPEND then works
        tagged(c.command(b"R3", b"CREATE Nonexistent"), b"R3")
        c.send(b"R4 APPEND Nonexistent {5}\r\n")
        c.expect_continuation()
        c.send(b"hello\r\n")
        tagged(c.read_until_tagged(b"R4"), b"R4")
        # a literal beyond the proxy's own limit (1 GiB once authenticated) is refused by
        # the proxy, also without "+", and the session goes on
        c.send(b"R5 APPEND INBOX {2000000000}\r\n")
        reply = c.read_until_tagged(b"R5")
        assert len(reply) == 1 and reply[0].startswith(b"R5 NO [TOOBIG]"), reply
        tagged(c.command(b"R6", b"NOOP"), b"R6")


def test_oversized_literal_before_login(route: Route, new_user: NewUser) -> None:
    """Before login the proxy takes literals of at most 64 KiB: NO [TOOBIG], no "+"."""
    user, password = new_user()
    with route.raw() as c:
        c.send(b"B1 LOGIN {100000}\r\n")
        reply = c.read_until_tagged(b"B1")
        assert len(reply) == 1 and reply[0].startswith(b"B1 NO [TOOBIG]"), reply
        c.send(b"B2 LOGIN {%d}\r\n" % len(user))
        c.expect_continuation()
        c.send(user.encode() + b" {%d}\r\n" % len(password))
        c.expect_continuation()
        c.send(password.encode() + b"\r\n")
        tagged(c.read_until_tagged(b"B2"), b"B2")


# ============================================================================ message commands


def seed_numbered(dovecot: DovecotServer, user: str, count: int) -> None:
    """Messages "msg 0".."msg N-1" with UIDs 1..N in that order: APPENDed directly (several
    files seeded into one Maildir at once get their UIDs in file-name order, which is not
    reliably their creation order)."""
    with direct_imaplib(dovecot) as conn:
        conn.login(user, dovecot.users[user])
        for i in range(count):
            assert (
                conn.append("INBOX", "", None, simple_message(f"msg {i}", f"body {i}"))[0] == "OK"
            )
        conn.logout()


def test_search_store_copy_move_expunge(
    route: Route, new_user: NewUser, dovecot: DovecotServer
) -> None:
    user, password = new_user()
    seed_numbered(dovecot, user, 5)
    with route.imapclient() as client:
        client.login(user, password)
        client.create_folder("Archiv")
        client.create_folder("Papierkorb")
        client.use_uid = False  # plain SEARCH / STORE / COPY / MOVE / EXPUNGE
        assert client.select_folder("INBOX")[b"EXISTS"] == 5
        assert client.search(["ALL"]) == [1, 2, 3, 4, 5]
        assert len(client.search(["SUBJECT", "msg", "BODY", "body"])) == 5
        client.add_flags([1, 2], [b"\\Flagged"])
        assert client.search(["FLAGGED"]) == [1, 2]
        client.set_flags([3], [b"\\Answered", b"$Label1"])
        assert set(client.get_flags([3])[3]) - {b"\\Recent"} == {b"\\Answered", b"$Label1"}
        client.copy([1, 2], "Archiv")
        client.add_flags([5], [b"\\Deleted"])
        assert (5, b"EXPUNGE") in client.expunge()[1]
        assert client.search(["ALL"]) == [1, 2, 3, 4]
        assert client.folder_status("Archiv", [b"MESSAGES"])[b"MESSAGES"] == 2
        assert client.noop()[0].startswith(b"NOOP completed")
        client.logout()
    # the same through imaplib (sequence numbers); imapclient's non-UID move() is broken
    # (it looks for imaplib.IMAP4.move), imaplib has no move(): MOVE via xatom
    with route.imaplib() as conn:
        conn.login(user, password)
        conn.select("INBOX")
        typ, data = conn.search(None, "UNFLAGGED")
        assert (typ, data) == ("OK", [b"3 4"])
        typ, data = conn.xatom("MOVE", "4", "Papierkorb")
        assert typ == "OK", data
        assert conn.store("3", "+FLAGS", r"(\Seen)")[0] == "OK"
        assert conn.copy("1:3", "Archiv")[0] == "OK"
        assert conn.store("1", "+FLAGS.SILENT", r"(\Deleted)") == ("OK", [None])
        typ, data = conn.expunge()
        assert (typ, data) == ("OK", [b"4", b"1"])  # imaplib keeps MOVE's "* 4 EXPUNGE" too
        assert conn.search(None, "ALL") == ("OK", [b"1 2"])
        assert conn.select("Archiv")[1] == [b"5"]
        assert conn.select("Papierkorb")[1] == [b"1"]
        conn.logout()


def test_uid_commands(route: Route, new_user: NewUser, dovecot: DovecotServer) -> None:
    user, password = new_user()
    seed_numbered(dovecot, user, 4)
    with route.imaplib() as conn:
        conn.login(user, password)
        assert conn.create("Ziel")[0] == "OK"
        conn.select("INBOX")
        typ, data = conn.uid("SEARCH", "ALL")
        assert (typ, data) == ("OK", [b"1 2 3 4"])
        typ, data = conn.uid("FETCH", "2:3", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK"
        headers = [item[1] for item in data if isinstance(item, tuple)]
        assert headers == [b"Subject: msg 1\r\n\r\n", b"Subject: msg 2\r\n\r\n"]
        typ, data = conn.uid("STORE", "2", "+FLAGS", r"(\Flagged)")
        assert typ == "OK" and b"UID 2" in (data[0] or b"")
        typ, data = conn.uid("COPY", "1:2", "Ziel")
        assert typ == "OK"
        typ, data = conn.uid("MOVE", "3", "Ziel")
        assert typ == "OK"
        typ, data = conn.uid("STORE", "4", "+FLAGS.SILENT", r"(\Deleted)")
        assert typ == "OK"
        typ, data = conn.uid("EXPUNGE", "4")
        assert typ == "OK"
        typ, data = conn.uid("SEARCH", "ALL")
        assert data == [b"1 2"]
        typ, data = conn.uid("SEARCH", "FLAGGED")
        assert data == [b"2"]
        conn.select("Ziel", readonly=True)
        typ, data = conn.uid("FETCH", "1:*", "(FLAGS)")
        assert typ == "OK" and len(data) == 3
        conn.logout()
    with route.imapclient() as client:  # imapclient uses UID commands by default
        client.login(user, password)
        client.select_folder("INBOX")
        assert client.search(["ALL"]) == [1, 2]
        client.add_flags([1], [b"\\Seen"])
        client.copy([1], "Ziel")
        client.move([2], "Ziel")
        client.delete_messages([1])
        client.uid_expunge([1])
        assert client.search(["ALL"]) == []
        assert client.folder_status("Ziel", [b"MESSAGES"])[b"MESSAGES"] == 5
        client.logout()


# ============================================================================ IDLE, NOOP, LOGOUT


def test_idle_sees_append_from_second_session(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.imapclient() as idler, route.imaplib() as other:
        idler.login(user, password)
        idler.select_folder("INBOX")
        idler.idle()
        assert other.login(user, password)[0] == "OK"
        assert other.append("INBOX", None, None, simple_message("while idling"))[0] == "OK"
        responses: list[tuple[object, ...]] = []
        deadline = time.monotonic() + 10
        while (1, b"EXISTS") not in responses and time.monotonic() < deadline:
            responses += idler.idle_check(timeout=1)
        assert (1, b"EXISTS") in responses, responses
        text, _ = idler.idle_done()
        assert text.startswith(b"Idle completed")
        # after DONE the session is an ordinary one again
        assert idler.search(["SUBJECT", "while idling"]) == [1]
        idler.noop()
        idler.logout()
        other.logout()


def test_raw_idle_done(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.raw_login(user, password) as c:
        tagged(c.command(b"I0", b"SELECT INBOX"), b"I0")
        c.send(b"I1 IDLE\r\n")
        assert c.expect_continuation() == b"+ idling\r\n"
        assert c.nothing_pending(0.2)
        c.send(b"DONE\r\n")
        reply = c.read_until_tagged(b"I1")
        assert reply[-1].startswith(b"I1 OK Idle completed")
        # after DONE the next line is a command again
        tagged(c.command(b"I2", b"NOOP"), b"I2")


def test_noop_and_logout(route: Route, new_user: NewUser) -> None:
    user, password = new_user()
    with route.raw_login(user, password) as c:
        port = c.sock.getsockname()[1]
        reply = c.command(b"N1", b"NOOP")
        assert reply[-1].startswith(b"N1 OK NOOP completed")
        reply = c.command(b"N2", b"LOGOUT")
        assert reply[0] == b"* BYE Logging out\r\n"
        assert reply[-1].startswith(b"N2 OK Logout completed")
        # then the proxy closes the connection
        with pytest.raises(EOFError):
            c.read_message()
    wait_for(
        lambda: (
            re.search(rf"peer=127\.0\.0\.1:{port} .*reason=logout", route.proxy.log()) is not None
        ),
        f"no 'reason=logout' session end for port {port} in the proxy log",
    )
    with route.imaplib() as conn:
        conn.login(user, password)
        typ, data = conn.noop()
        assert typ == "OK" and (data[0] or b"").startswith(b"NOOP completed")
        assert conn.logout() == ("BYE", [b"Logging out"])


# ============================================================================ pipelining

_IN_ORDER_COMMANDS = (
    b"NOOP",
    b"CAPABILITY",
    b"SELECT INBOX",
    b"FETCH 1:* (FLAGS)",
    b"STORE 1 +FLAGS (\\Flagged)",
    b"UID FETCH 1:* (UID)",
    b"EXAMINE INBOX",
    b"FETCH 1 (UID RFC822.SIZE)",
    b"FETCH 1 (BODY.PEEK[HEADER])",
    b"UNSELECT",
)


def test_pipelining_fifty_commands(route: Route, new_user: NewUser, dovecot: DovecotServer) -> None:
    user, password = new_user()
    seed_numbered(dovecot, user, 3)
    tags = [b"P%03d" % i for i in range(50)]
    batch = b"".join(
        tag + b" " + _IN_ORDER_COMMANDS[i % len(_IN_ORDER_COMMANDS)] + b"\r\n"
        for i, tag in enumerate(tags)
    )
    with route.raw_login(user, password) as c:
        c.send(batch)  # one write
        completions: list[bytes] = []
        untagged = 0
        while len(completions) < 50:
            msg = c.read_message()
            if msg.startswith(b"* "):
                untagged += 1
                assert b"COMPRESS" not in msg
                continue
            completions.append(msg)
        assert [m.split(b" ", 1)[0] for m in completions] == tags
        assert all(m.split(b" ")[1] == b"OK" for m in completions), completions
        assert untagged >= 5 * 3 + 5 * 7  # CAPABILITY, FETCHes, SELECT/EXAMINE data
        # and commands whose completions Dovecot may reorder: each completes exactly once
        more = [b"Q%03d" % i for i in range(50)]
        mixed = (b"SEARCH ALL", b"STATUS INBOX (MESSAGES)", b'LIST "" INBOX', b"CHECK", b"NOOP")
        c.send(b"".join(t + b" " + mixed[i % 5] + b"\r\n" for i, t in enumerate(more)))
        seen: list[bytes] = []
        while len(seen) < 50:
            msg = c.read_message()
            if not msg.startswith(b"* "):
                seen.append(msg.split(b" ", 2)[0])
                assert msg.split(b" ")[1] in (b"OK", b"BAD"), msg
        assert sorted(seen) == more


# ============================================================================ transcript / log


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(what)
        time.sleep(0.02)


def test_transcript_and_log_never_contain_the_password(
    route: Route, new_user: NewUser, user_pool: UserPool
) -> None:
    user, password = new_user()
    run = uuid.uuid4().hex[:6].upper()  # tags unique in the shared proxy's transcript

    def t(n: int) -> bytes:
        return f"{run}T{n}".encode()

    with route.raw() as c:
        # LOGIN with quoted strings, a failed one, then LOGIN with literals for both args
        tagged(c.command(t(0), login_cmd(user, password + "x")), t(0), b"NO")
        c.send(t(1) + b" LOGIN {%d}\r\n" % len(user))
        c.expect_continuation()
        c.send(user.encode() + b" {%d}\r\n" % len(password))
        c.expect_continuation()
        c.send(password.encode() + b"\r\n")
        tagged(c.read_until_tagged(t(1)), t(1))
        tagged(c.command(t(2), b"SELECT INBOX"), t(2))
        tagged(c.command(t(3), b"LOGOUT"), t(3))
    with route.raw() as c:
        tagged(c.command(t(4), login_cmd(user, password)), t(4))
        tagged(c.command(t(5), b"LOGOUT"), t(5))
    with route.raw() as c:  # AUTHENTICATE: SASL-IR, the two-step form, AUTH=LOGIN
        tagged(c.command(t(6), b"AUTHENTICATE PLAIN " + plain_ir(user, password)), t(6))
    with route.raw() as c:
        c.send(t(7) + b" AUTHENTICATE PLAIN\r\n")
        c.expect_continuation()
        c.send(plain_ir(user, password) + b"\r\n")
        tagged(c.read_until_tagged(t(7)), t(7))
    with route.raw() as c:
        c.send(t(8) + b" AUTHENTICATE LOGIN\r\n")
        c.expect_continuation()
        c.send(base64.b64encode(user.encode()) + b"\r\n")
        c.expect_continuation()
        c.send(base64.b64encode(password.encode()) + b"\r\n")
        tagged(c.read_until_tagged(t(8)), t(8))

    transcript = route.proxy.transcript
    sessions: dict[int, str] = {}

    def all_sessions_seen() -> bool:
        text = transcript()
        for n in (0, 4, 6, 7, 8):
            m = re.search(rf"^\S+ (\S+) C: {run}T{n} ", text, re.M)
            if m is None:
                return False
            sessions[n] = m.group(1)
        return all(f"{sid} -- session end" in text for sid in sessions.values())

    wait_for(all_sessions_seen, "sessions missing from the transcript or not ended")
    text, log = transcript(), route.proxy.log()
    lines = {n: [ln for ln in text.splitlines() if f" {sid} " in ln] for n, sid in sessions.items()}
    # the commands and responses are there, credentials redacted
    first = "\n".join(lines[0])
    assert f"C: {run}T0 LOGIN {user} ***" in first
    assert f"S: {run}T0 NO [AUTHENTICATIONFAILED]" in first
    assert f"C: {run}T1 LOGIN {user} ***" in first  # assembled across its literals
    assert f"C: {run}T2 SELECT INBOX" in first
    assert f"S: {run}T2 OK [READ-WRITE]" in first
    assert "S: * BYE Logging out" in first
    assert f"S: {run}T3 OK Logout completed" in first
    assert f"C: {run}T4 LOGIN {user} ***" in "\n".join(lines[4])
    assert f"C: {run}T6 AUTHENTICATE PLAIN ***" in "\n".join(lines[6])
    assert f"C: {run}T7 AUTHENTICATE PLAIN" in "\n".join(lines[7])
    assert sum(ln.endswith(" C: ***") for ln in lines[8]) == 2  # both AUTH=LOGIN lines
    # ... but never a secret, in any form
    secrets = [
        password,
        plain_ir(user, password).decode(),
        base64.b64encode(password.encode()).decode(),
    ]
    secrets += [pw for _user, pw in user_pool.issued]  # nor any other test's password
    for secret in secrets:
        assert secret not in text, f"secret {secret!r} in the transcript"
        assert secret not in log, f"secret {secret!r} in the proxy log"
    assert f"authenticated as {user}" in log


# ============================================================================ byte-exactness


@dataclass(frozen=True)
class Step:
    send: bytes
    until: bytes  # a tag, b"+" for a continuation request, b"EXISTS" for an IDLE update


def byte_script(user: str, password: str) -> list[Step]:
    m1 = simple_message("appended one", "one")
    m2 = simple_message("appended two", "two two")
    ma, mb = simple_message("multi a", "a"), simple_message("multi b", "b")
    drafts, nested = b'"Entw&APw-rfe"', b'"&U,BTFw-.&ZeVnLIqe-"'

    def cmd(tag: str, text: bytes) -> Step:
        return Step(tag.encode() + b" " + text + b"\r\n", tag.encode())

    return [
        cmd("T01", b"CAPABILITY"),
        cmd("T02", b"NOOP"),
        cmd("T03", b'ID ("name" "imapproxy-tests")'),
        Step(b"T04 LOGIN {%d}\r\n" % len(user), b"+"),
        Step(user.encode() + b' "' + password.encode() + b'"\r\n', b"T04"),
        cmd("T05", b"CAPABILITY"),
        cmd("T06", b"NAMESPACE"),
        cmd("T07", b'LIST "" "*"'),
        cmd("T08", b"CREATE " + drafts),
        cmd("T09", b"CREATE " + nested),
        cmd("T10", b'LIST "" "%"'),
        cmd("T11", b"STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY UNSEEN)"),
        cmd("T12", b"SELECT INBOX"),
        cmd("T13", b"FETCH 1 (FLAGS ENVELOPE BODYSTRUCTURE RFC822.SIZE INTERNALDATE)"),
        cmd("T14", b"FETCH 1 (BODY.PEEK[HEADER] BODY.PEEK[TEXT] BODY.PEEK[1])"),
        cmd("T15", b"FETCH 1 (BODY.PEEK[]<0.100> BINARY.PEEK[2] BINARY.SIZE[2])"),
        Step(b"T16 APPEND INBOX (\\Seen) {%d}\r\n" % len(m1), b"+"),
        Step(m1 + b"\r\n", b"T16"),
        Step(b"T17 APPEND INBOX {%d}\r\n" % len(m2), b"+"),
        Step(m2 + b"\r\n", b"T17"),
        # MULTIAPPEND: two "+" rounds
        Step(b"T18 APPEND %s (\\Flagged) {%d}\r\n" % (drafts, len(ma)), b"+"),
        Step(ma + b" (\\Draft) {%d}\r\n" % len(mb), b"+"),
        Step(mb + b"\r\n", b"T18"),
        cmd("T19", b"APPEND Nonexistent {5}"),  # NO [TRYCREATE], no "+"
        # LITERAL+: direct, Dovecot reads the literal at once; through the proxy it gets
        # {n} and a "+" that the proxy absorbs.  The client sees the same either way.
        Step(b"T19A APPEND INBOX {%d+}\r\n%s\r\n" % (len(m2), m2), b"T19A"),
        Step(b"T19B APPEND Nonexistent {5+}\r\nhello\r\n", b"T19B"),
        # pipelined (commands Dovecot completes in order), one write
        Step(
            b"T20 NOOP\r\nT21 FETCH 1:* (UID FLAGS)\r\nT22 STORE 1 +FLAGS (\\Flagged)\r\n"
            b"T23 UID FETCH 1:* (FLAGS)\r\nT24 CAPABILITY\r\n",
            b"T24",
        ),
        cmd("T25", b"SEARCH ALL"),
        cmd("T26", b"UID SEARCH UNSEEN"),
        cmd("T27", b"COPY 1:2 " + drafts),
        cmd("T28", b"UID MOVE 3 " + drafts),
        cmd("T29", b"STORE 1 +FLAGS.SILENT (\\Deleted)"),
        cmd("T30", b"EXPUNGE"),
        cmd("T31", b"UID STORE 2 +FLAGS (\\Answered)"),
        cmd("T32", b"UID COPY 2 " + nested),
        cmd("T33", b"UID STORE 2 +FLAGS.SILENT (\\Deleted)"),
        cmd("T34", b"UID EXPUNGE 2"),
        Step(b"T35 IDLE\r\n", b"+"),
        Step(b"", b"EXISTS"),  # a second session APPENDs meanwhile
        Step(b"DONE\r\n", b"T35"),
        cmd("T36", b"RENAME " + drafts + b' "Entw&APw-rfe-alt"'),
        cmd("T37", b"DELETE " + nested),
        cmd("T38", b'LIST "" "*"'),
        cmd("T39", b'EXAMINE "Entw&APw-rfe-alt"'),
        cmd("T40", b"FETCH 1:* (UID FLAGS)"),
        cmd("T41", b"UNSELECT"),
        cmd("T42", b"LOGOUT"),
    ]


def run_script(client: RawClient, steps: list[Step], on_idle: Callable[[], None]) -> list[bytes]:
    """Every server message received, in order (the greeting first)."""
    received = [client.greeting]
    for step in steps:
        if step.send:
            client.send(step.send)
        if step.until == b"EXISTS":
            on_idle()
        while True:
            msg = client.read_message()
            received.append(msg)
            if step.until == b"+" and msg.startswith(b"+"):
                break
            if step.until == b"EXISTS" and re.match(rb"\* \d+ EXISTS\r\n", msg):
                break
            if msg.startswith(step.until + b" "):
                break
    with pytest.raises(EOFError):  # after LOGOUT the connection closes
        client.read_message()
    return received


_VARYING = [
    (re.compile(rb"\(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)"), b"(T secs)"),
    (re.compile(rb"UIDVALIDITY \d+"), b"UIDVALIDITY <v>"),
    (re.compile(rb"\[(APPENDUID|COPYUID) \d+ "), rb"[\1 <v> "),
    (re.compile(rb'INTERNALDATE "[^"]+"'), b'INTERNALDATE "<date>"'),
]


def normalise(messages: list[bytes], user: str) -> list[bytes]:
    out = []
    for msg in messages:
        for pattern, repl in _VARYING:
            msg = pattern.sub(repl, msg)
        out.append(msg.replace(user.encode(), b"<user>"))
    return out


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_byte_exact_against_direct_dovecot(
    listener: str,
    dovecot: DovecotServer,
    tls_certs: TlsCerts,
    new_user: NewUser,
    proxy_pool: ProxyPool,
) -> None:
    """The same ~45-command script, through the proxy (upstream none) and straight to
    Dovecot: after normalising timings, UIDVALIDITY and dates the server's bytes are
    identical except the capability lists the proxy mediates.  The "+" continuation
    requests for synchronising literals are Dovecot's own, relayed; those for the
    proxy's own {n} (a client's {n+}) never show."""
    ctx = tls_certs.client_context() if listener == "tls" else None
    results: list[list[bytes]] = []
    for via_proxy in (True, False):
        user, password = new_user()
        dovecot.seed_message(user, multipart_message("byte-exact"))

        def append_elsewhere(user: str = user, password: str = password) -> None:
            with direct_imaplib(dovecot) as other:
                other.login(user, password)
                other.append("INBOX", None, None, simple_message("during idle", "idle"))
                other.logout()

        if via_proxy:
            proxy = proxy_pool.get("none")
            port = proxy.tls_port if listener == "tls" else proxy.plain_port
        else:
            port = dovecot.tls_port if listener == "tls" else dovecot.port
        with RawClient.connect(port, ctx) as client:
            received = run_script(client, byte_script(user, password), append_elsewhere)
        results.append(normalise(received, user))
    proxied, direct = results
    assert len(proxied) == len(direct), (proxied, direct)
    differing = []
    for p, d in zip(proxied, direct, strict=True):
        if p == d:
            continue
        p_caps, d_caps = caps_in(p), caps_in(d)
        assert p_caps is not None and d_caps is not None, f"proxied {p!r} != direct {d!r}"
        assert strip_caps(p) == strip_caps(d), (p, d)
        # only the mediation may differ: COMPRESS=* withheld, STARTTLS per the proxy's
        # policy (whether STARTTLS is right *here* is test_plaintext_login_capabilities')
        assert not [c for c in p_caps if c.upper().startswith("COMPRESS")], p
        assert [c for c in p_caps if c != "STARTTLS"] == mediated(d_caps), (p, d)
        differing.append(d)
    # exactly the capability lists with COMPRESS=DEFLATE differed: LOGIN's, T05's and
    # T24's, after login (LITERAL+ is passed on, so the lists before login are identical)
    assert len(differing) == 3, differing
    assert all(b"COMPRESS=DEFLATE" in d and b" LITERAL+ " in d for d in differing), differing
