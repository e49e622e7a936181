"""The capability stage as a filter: mediation by session state, logins refused before TLS."""

from __future__ import annotations

from imapproxy.filters import (
    PASS,
    CommandView,
    Phase,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    TlsInfo,
)
from imapproxy.filters.capabilities import CapabilityFilter
from imapproxy.wire import FrameKind

PLAIN = SessionInfo("s", "127.0.0.1", 1, "imap@x", starttls=True)
CAPS = b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN AUTH=SCRAM-SHA-256-PLUS COMPRESS=DEFLATE\r\n"


def data(raw: bytes = CAPS) -> ResponseView:
    return ResponseView(FrameKind.DATA, None, "CAPABILITY", raw)


def login(tag: bytes = b"a1") -> CommandView:
    return CommandView(tag, "LOGIN", False, (), tag + b" LOGIN a b\r\n", sensitive=True)


def test_mediation_follows_the_session() -> None:
    f = CapabilityFilter(PLAIN, require_tls_for_login=False)
    s = SessionView(PLAIN)
    assert f.response(data(), s) == Replace(
        b"* CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN\r\n"
    )
    s.tls = TlsInfo("TLSv1.3")  # after STARTTLS: no STARTTLS any more
    assert f.response(data(), s) == Replace(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
    # a response that needs no change passes as it is (no copy)
    assert f.response(data(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n"), s) is PASS


def test_no_starttls_while_a_login_is_in_progress_or_after_it() -> None:
    f = CapabilityFilter(PLAIN, require_tls_for_login=False)
    s = SessionView(PLAIN)
    assert f.command(login(), s) is PASS
    ok = b"a1 OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] in\r\n"
    s.phase = Phase.AUTHENTICATED  # the relay moved on when the server said OK
    verdict = f.response(ResponseView(FrameKind.STATUS, b"a1", "OK", ok), s)
    assert verdict == Replace(b"a1 OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] in\r\n")
    # a refused login: STARTTLS is possible again
    f2 = CapabilityFilter(PLAIN, require_tls_for_login=False)
    s2 = SessionView(PLAIN)
    f2.command(login(b"b"), s2)
    assert f2.response(data(), s2) == Replace(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n")
    f2.response(ResponseView(FrameKind.STATUS, b"b", "NO", b"b NO bad\r\n"), s2)
    assert b"STARTTLS" in f2.response(data(), s2).raw  # type: ignore[union-attr]


def test_tls_required_for_login() -> None:
    f = CapabilityFilter(PLAIN, require_tls_for_login=True)
    s = SessionView(PLAIN)
    refused = f.command(login(), s)
    assert isinstance(refused, Reject) and refused.code == "PRIVACYREQUIRED"
    assert f.response(data(), s) == Replace(
        b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED\r\n"
    )
    s.tls = TlsInfo("TLSv1.3")
    assert f.command(login(), s) is PASS
    compress = CommandView(b"c", "COMPRESS", False, (), b"c COMPRESS DEFLATE\r\n")
    assert isinstance(f.command(compress, s), Reject)


def test_the_chain_offers_only_what_the_stage_wants() -> None:
    from imapproxy.filters import ChainEntry, FilterChain

    chain = FilterChain(
        [ChainEntry("capabilities", lambda i: CapabilityFilter(i, require_tls_for_login=False))]
    ).open(PLAIN, lambda *a: None)
    assert chain.wants_response(FrameKind.DATA, "CAPABILITY", CAPS)
    assert chain.wants_response(FrameKind.STATUS, "OK", b"a OK [CAPABILITY IMAP4rev1] x\r\n")
    assert chain.wants_response(FrameKind.GREETING, "OK", b"* OK [CAPABILITY X] hi\r\n")
    assert not chain.wants_response(FrameKind.STATUS, "OK", b"a OK done\r\n")
    assert not chain.wants_response(FrameKind.STATUS, "OK", b"a OK [READ-WRITE] x\r\n")
    assert not chain.wants_response(FrameKind.DATA, "FETCH", b"* 1 FETCH (FLAGS ())\r\n")
    assert chain.wants_command("LOGIN") and not chain.wants_command("FETCH")
    assert chain.decides_command("COMPRESS") and not chain.decides_command("NOOP")
