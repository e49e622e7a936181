"""The Dovecot fixture itself, checked with stdlib imaplib directly (no proxy involved)."""

from __future__ import annotations

import imaplib
import re
import socket
import ssl
import time
import uuid

import pytest

from tests.support.certs import TlsCerts, client_ssl_context
from tests.support.dovecot import DovecotServer

pytestmark = pytest.mark.dovecot

TIMEOUT = 10.0


def _caps(conn: imaplib.IMAP4) -> set[str]:
    typ, data = conn.capability()
    assert typ == "OK"
    return set(data[0].decode().upper().split())


def _ctx(dovecot: DovecotServer) -> ssl.SSLContext:
    # Trusts only the test CA; verifies the certificate against "localhost".
    return client_ssl_context(dovecot.ca_path)


def test_plain_login_list_select(dovecot: DovecotServer) -> None:
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        assert conn.welcome.startswith(b"* OK")
        assert "STARTTLS" in conn.capabilities
        typ, _ = conn.login("alice", dovecot.users["alice"])
        assert typ == "OK"
        typ, data = conn.list()
        assert typ == "OK"
        assert any(b"INBOX" in line for line in data if isinstance(line, bytes))
        typ, data = conn.select("INBOX")
        assert typ == "OK"
        assert int(data[0]) >= 0
        conn.logout()


def test_starttls_verifies_against_test_ca(dovecot: DovecotServer) -> None:
    # imaplib sends the SNI/hostname of the connect target: connect by name.
    with imaplib.IMAP4("localhost", dovecot.port, timeout=TIMEOUT) as conn:
        typ, _ = conn.starttls(ssl_context=_ctx(dovecot))
        assert typ == "OK"
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        assert sock.version() in {"TLSv1.2", "TLSv1.3"}
        peer = sock.getpeercert()
        assert ("DNS", "localhost") in peer["subjectAltName"]
        assert conn.login("bob", dovecot.users["bob"])[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()


def test_implicit_tls_verifies_against_test_ca(dovecot: DovecotServer) -> None:
    with imaplib.IMAP4_SSL(
        "localhost", dovecot.tls_port, ssl_context=_ctx(dovecot), timeout=TIMEOUT
    ) as conn:
        assert conn.welcome.startswith(b"* OK")
        assert isinstance(conn.sock, ssl.SSLSocket)
        assert conn.login("alice", dovecot.users["alice"])[0] == "OK"
        assert conn.select("INBOX")[0] == "OK"
        conn.logout()


def test_certificate_has_ip_sans(tls_certs: TlsCerts, dovecot: DovecotServer) -> None:
    ctx = tls_certs.client_context()
    for host in ("127.0.0.1", "localhost"):
        with imaplib.IMAP4_SSL(host, dovecot.tls_port, ssl_context=ctx, timeout=TIMEOUT) as conn:
            sans = conn.sock.getpeercert()["subjectAltName"]  # type: ignore[union-attr]
            conn.logout()
        assert ("IP Address", "127.0.0.1") in sans
        assert ("IP Address", "0:0:0:0:0:0:0:1") in sans or ("IP Address", "::1") in sans


def test_untrusted_ca_is_rejected(dovecot: DovecotServer) -> None:
    # A context with no trust anchors (not even the system store) must fail verification:
    # proves the positive tests really verify.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(ssl.SSLCertVerificationError):
        imaplib.IMAP4_SSL("localhost", dovecot.tls_port, ssl_context=ctx, timeout=TIMEOUT)


def test_seeded_message_is_fetchable(dovecot: DovecotServer) -> None:
    marker = uuid.uuid4().hex
    raw = (
        f"From: seed@example.org\r\n"
        f"To: bob@example.org\r\n"
        f"Subject: seeded {marker}\r\n"
        f"Message-ID: <{marker}@example.org>\r\n"
        f"\r\n"
        f"body {marker}\r\n"
    ).encode()
    dovecot.seed_message("bob", raw, flags="FS")

    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        conn.login("bob", dovecot.users["bob"])
        conn.select("INBOX", readonly=True)
        typ, data = conn.uid("SEARCH", "HEADER", "Message-ID", marker)
        assert typ == "OK"
        uids = data[0].split()
        assert len(uids) == 1
        typ, data = conn.uid("FETCH", uids[0], "(FLAGS BODY.PEEK[])")
        assert typ == "OK"
        meta, body = data[0]  # type: ignore[misc]
        assert body == raw
        assert b"\\Seen" in meta
        assert b"\\Flagged" in meta
        conn.logout()


def test_seeded_message_in_other_mailbox(dovecot: DovecotServer) -> None:
    box = f"Seed{uuid.uuid4().hex[:8]}"
    dovecot.seed_message("alice", b"Subject: a\r\n\r\nx\r\n", mailbox=box)
    dovecot.seed_message("alice", b"Subject: b\r\n\r\ny\r\n", mailbox=box)
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        conn.login("alice", dovecot.users["alice"])
        typ, data = conn.select(box, readonly=True)
        assert typ == "OK"
        assert int(data[0]) == 2
        conn.logout()


def _raw_login(dovecot: DovecotServer, user: str) -> tuple[bytes, bytes]:
    """Greeting and tagged LOGIN reply, with no CAPABILITY command sent first."""
    with socket.create_connection((dovecot.host, dovecot.port), timeout=TIMEOUT) as sock:
        stream = sock.makefile("rwb")
        greeting = stream.readline()
        stream.write(f'a1 LOGIN {user} "{dovecot.users[user]}"\r\n'.encode())
        stream.flush()
        reply = stream.readline()
        while reply.startswith(b"* "):
            reply = stream.readline()
        stream.write(b"a2 LOGOUT\r\n")
        stream.flush()
        return greeting, reply


def _code_caps(line: bytes) -> set[str]:
    match = re.search(rb"\[CAPABILITY ([^\]]*)\]", line)
    assert match is not None, line
    return set(match.group(1).decode().upper().split())


def test_capabilities(dovecot: DovecotServer) -> None:
    # Route 1 and 3: the greeting's code and the tagged OK of LOGIN. Dovecot only puts
    # the post-login set into the LOGIN reply when the client has not sent CAPABILITY.
    greeting, reply = _raw_login(dovecot, "alice")
    assert greeting.startswith(b"* OK ")
    pre = _code_caps(greeting)
    assert {"IMAP4REV1", "IDLE", "LITERAL+", "STARTTLS", "AUTH=PLAIN"} <= pre
    assert "COMPRESS=DEFLATE" not in pre  # Dovecot only offers it after login
    assert reply.startswith(b"a1 OK ")
    post = _code_caps(reply)
    assert {"COMPRESS=DEFLATE", "IDLE", "LITERAL+", "MOVE", "UIDPLUS"} <= post
    assert "STARTTLS" not in post

    # Route 2: untagged CAPABILITY, before and after login.
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        assert {"IDLE", "LITERAL+", "STARTTLS"} <= _caps(conn)
        assert conn.login("alice", dovecot.users["alice"])[0] == "OK"
        assert _caps(conn) >= {"COMPRESS=DEFLATE", "IDLE", "LITERAL+", "MOVE", "UIDPLUS"}
        conn.logout()


def _failed_login(dovecot: DovecotServer, user: str) -> float:
    start = time.monotonic()
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            conn.login(user, "wrong-password")
        conn.logout()
    return time.monotonic() - start


def test_failed_login_has_no_penalty(dovecot: DovecotServer) -> None:
    start = time.monotonic()
    _failed_login(dovecot, "alice")
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        assert conn.login("alice", dovecot.users["alice"])[0] == "OK"
        conn.logout()
    elapsed = time.monotonic() - start
    # Dovecot's default auth_failure_delay is 2 s
    assert elapsed < 1.9, f"logins took {elapsed:.2f}s: Dovecot's auth penalty is active"


def test_repeated_failures_do_not_escalate(dovecot: DovecotServer) -> None:
    # With anvil's penalty the 2nd failure from an address waits ~4 s, the 3rd longer.
    for _ in range(3):
        elapsed = _failed_login(dovecot, "bob")
        assert elapsed < 1.9, f"failed login took {elapsed:.2f}s: auth penalty is active"


def test_added_user_can_log_in(dovecot: DovecotServer) -> None:
    user = f"u{uuid.uuid4().hex[:10]}"
    dovecot.add_user(user, "secret")
    dovecot.seed_message(user, b"Subject: hello\r\n\r\nhi\r\n")
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as conn:
        assert conn.login(user, "secret")[0] == "OK"
        typ, data = conn.select("INBOX")
        assert typ == "OK"
        assert int(data[0]) == 1
        conn.logout()
