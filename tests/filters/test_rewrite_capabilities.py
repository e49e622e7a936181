"""Capability add/remove in every place a list appears, and the relay's capability stage
keeping precedence over it."""

from __future__ import annotations

from imapproxy.filters import PASS, ChainEntry, FilterChain, Replace, ResponseView, SessionInfo
from imapproxy.filters.capabilities import CapabilityFilter
from imapproxy.filters.rewrite import CapabilityEdit, RewriteConfig, RewriteFilter
from imapproxy.wire import FrameKind

from .rewrite_helpers import data, rewrite, session, tagged

OPTIONS = {"capabilities": {"add": ["ID", "X-NEW"], "remove": ["QUOTA", "x-old*"]}}


def test_data_list() -> None:
    f = rewrite(OPTIONS)
    got = f.response(data(b"* CAPABILITY IMAP4rev1 QUOTA X-OLD-ONE X-OLDER IDLE\r\n"), session())
    assert got == Replace(b"* CAPABILITY IMAP4rev1 IDLE ID X-NEW\r\n")


def test_already_present_is_not_added_twice_and_nothing_to_do_passes() -> None:
    f = rewrite(OPTIONS)
    got = f.response(data(b"* CAPABILITY IMAP4rev1 id QUOTA\r\n"), session())
    assert got == Replace(b"* CAPABILITY IMAP4rev1 id X-NEW\r\n")
    assert f.response(data(b"* CAPABILITY IMAP4rev1 ID X-NEW\r\n"), session()) is PASS


def test_greeting_and_tagged_codes_keep_every_other_byte() -> None:
    f = rewrite(OPTIONS)
    greeting = b"* OK [CAPABILITY IMAP4rev1 QUOTA LITERAL+] Dovecot ready.\r\n"
    view = ResponseView(FrameKind.GREETING, None, "OK", greeting)
    assert f.response(view, session()) == Replace(
        b"* OK [CAPABILITY IMAP4rev1 LITERAL+ ID X-NEW] Dovecot ready.\r\n"
    )
    ok = tagged(b"a1", "OK", b"[CAPABILITY IMAP4rev1 QUOTA SORT] Logged in")
    assert f.response(ok, session()) == Replace(
        b"a1 OK [CAPABILITY IMAP4rev1 SORT ID X-NEW] Logged in\r\n"
    )
    assert f.response(tagged(b"a2", "OK", b"[READ-WRITE] done"), session()) is PASS


def test_filter_wants_only_capability_responses() -> None:
    f = rewrite(OPTIONS)
    assert f.wants_commands == frozenset()
    assert f.wants_responses == frozenset({"CAPABILITY"})
    assert f.wants_codes == frozenset({"CAPABILITY"})


def _chain_with_stage(edit: CapabilityEdit, info: SessionInfo):  # type: ignore[no-untyped-def]
    errors: list[object] = []
    chain = FilterChain(
        [
            ChainEntry("capabilities", lambda i: CapabilityFilter(i, require_tls_for_login=False)),
            ChainEntry("rewrite", lambda i: RewriteFilter(RewriteConfig(capabilities=edit))),
        ]
    )
    return chain.open(info, lambda *e: errors.append(e)), errors


def test_the_stage_wins_over_a_rewrite_that_adds_what_the_proxy_removed() -> None:
    """Built directly (the config refuses it): a rewrite adding COMPRESS, STARTTLS and a
    channel-binding mechanism, and removing LOGINDISABLED, changes nothing of that: the
    stage runs after it on responses."""
    edit = CapabilityEdit(
        ["COMPRESS=DEFLATE", "STARTTLS", "AUTH=SCRAM-SHA-1-PLUS", "ID"], ["IDLE"], auth=None
    )
    info = SessionInfo("s", "127.0.0.1", 1, "imaps@x", starttls=False)
    filters, errors = _chain_with_stage(edit, info)
    verdict, _ = filters.response(data(b"* CAPABILITY IMAP4rev1 IDLE\r\n"), session())
    assert verdict == Replace(b"* CAPABILITY IMAP4rev1 ID\r\n")
    greeting = ResponseView(
        FrameKind.GREETING, None, "OK", b"* OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE] hi\r\n"
    )
    verdict, _ = filters.response(greeting, session())
    assert verdict == Replace(b"* OK [CAPABILITY IMAP4rev1 ID] hi\r\n")
    assert not errors


def test_the_stage_still_offers_starttls_where_it_can() -> None:
    edit = CapabilityEdit([], ["STARTTLS"], auth=None)  # (refused by the config, too)
    info = SessionInfo("s", "127.0.0.1", 1, "imap@x", starttls=True)
    filters, _ = _chain_with_stage(edit, info)
    line = b"* CAPABILITY IMAP4rev1 STARTTLS\r\n"
    verdict, _ = filters.response(data(line), session())
    assert verdict in (PASS, Replace(line))


def test_user_mapping_withholds_mechanisms_that_cannot_carry_a_mapped_name() -> None:
    f = rewrite({"users": {"add_domain": "example.com"}})
    caps = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN AUTH=CRAM-MD5 AUTH=SCRAM-SHA-256\r\n"
    assert f.response(data(caps), session()) == Replace(
        b"* CAPABILITY IMAP4rev1 AUTH=PLAIN AUTH=LOGIN\r\n"
    )


def test_user_mapping_and_capability_edits_together() -> None:
    f = rewrite({**OPTIONS, "users": {"strip_domain": True}})
    caps = b"* CAPABILITY IMAP4rev1 QUOTA AUTH=PLAIN AUTH=XOAUTH2\r\n"
    assert f.response(data(caps), session()) == Replace(
        b"* CAPABILITY IMAP4rev1 AUTH=PLAIN ID X-NEW\r\n"
    )
