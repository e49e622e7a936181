"""Mailbox mapping: every mailbox argument of every command, every mailbox in responses,
LIST patterns, the names the client could only have guessed, and the encodings."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from imapproxy.filters import DROP, PASS, LiteralInfo, Reject, Replace
from imapproxy.filters.rewrite_names import MailboxMap, MailboxRule, glob_match
from imapproxy.filters.views import MAILBOX_ARGUMENTS
from imapproxy.relay.gate import segment_command
from imapproxy.wire.limits import DEFAULT_LIMITS

from .rewrite_helpers import cmd, data, rewrite, session, tagged

RULES = {
    "delimiter": ".",
    "mailboxes": [
        {"client": "Archive", "server": "INBOX.Archive"},
        {"client": "Sent", "server": "Sent Items", "exact": True},
        {"client": "Entwürfe", "server": "INBOX.Drafts"},
    ],
}


def f():  # type: ignore[no-untyped-def]
    return rewrite(RULES)


# ----------------------------------------------------------------------------- commands

# one example per command that names mailboxes, the mailbox where the command has it
EXAMPLES = {
    "SELECT": b"SELECT {} (CONDSTORE)",
    "EXAMINE": b"EXAMINE {}",
    "CREATE": b"CREATE {}",
    "DELETE": b"DELETE {}",
    "SUBSCRIBE": b"SUBSCRIBE {}",
    "UNSUBSCRIBE": b"UNSUBSCRIBE {}",
    "STATUS": b"STATUS {} (MESSAGES UIDNEXT)",
    "APPEND": b"APPEND {} (\\Seen) {{5}}\r\nhello",
    "COPY": b"UID COPY 1:5 {}",
    "MOVE": b"MOVE 2 {}",
    "GETACL": b"GETACL {}",
    "SETACL": b"SETACL {} bob lrs",
    "DELETEACL": b"DELETEACL {} bob",
    "MYRIGHTS": b"MYRIGHTS {}",
    "LISTRIGHTS": b"LISTRIGHTS {} bob",
    "GETQUOTAROOT": b"GETQUOTAROOT {}",
    "SETMETADATA": b'SETMETADATA {} (/private/comment "x")',
    "GETMETADATA": b"GETMETADATA (DEPTH 1) {} /private/comment",
    "RENAME": b"RENAME {} Other",
    "REPLACE": b"REPLACE 4 {} {{5}}\r\nhello",
}


def test_every_mailbox_command_has_an_example() -> None:
    assert set(EXAMPLES) == set(MAILBOX_ARGUMENTS)


@pytest.mark.parametrize("command", sorted(EXAMPLES))
@pytest.mark.parametrize(
    ("client", "server"),
    [
        (b"Archive", b"INBOX.Archive"),
        (b'"Archive.2020"', b'"INBOX.Archive.2020"'),
        (b"{7}\r\nArchive", b'"INBOX.Archive"'),
        (b"Sent", b'"Sent Items"'),
        (b"Entw&APw-rfe.x", b"INBOX.Drafts.x"),
    ],
)
def test_each_command_each_form(command: str, client: bytes, server: bytes) -> None:
    def fill(name: bytes) -> bytes:
        raw = b"a1 " + EXAMPLES[command] + b"\r\n"
        return raw.replace(b"{}", name, 1).replace(b"{{", b"{").replace(b"}}", b"}")

    assert f().command(cmd(fill(client)), session()) == Replace(fill(server))


def test_unmapped_names_pass_unchanged() -> None:
    for raw in (
        b"a SELECT INBOX\r\n",
        b"a SELECT inbox\r\n",
        b"a SELECT Archives\r\n",
        b"a COPY 1 Sentx\r\n",
        b"a SELECT Sent.child\r\n",
        b"a NOOP\r\n",
    ):
        assert f().command(cmd(raw), session()) is PASS, raw


def test_rename_maps_both_names() -> None:
    got = f().command(cmd(b"a RENAME Archive.2020 Sent\r\n"), session())
    assert got == Replace(b'a RENAME INBOX.Archive.2020 "Sent Items"\r\n')


def test_a_name_that_needs_quoting_or_a_literal() -> None:
    rw = rewrite({"mailboxes": [{"client": "A", "server": 'We "quote" it\\'}]})
    got = rw.command(cmd(b"a SELECT A\r\n"), session())
    assert got == Replace(b'a SELECT "We \\"quote\\" it\\\\"\r\n')
    # UTF-8 session: the server name is written as UTF-8 (quoted strings cannot hold
    # 8-bit in IMAP4rev1: a literal)
    rw = rewrite({"mailboxes": [{"client": "A", "server": "Brouillons/été"}]})
    got = rw.command(cmd(b"a SELECT A\r\n"), session(utf8=True))
    server = "Brouillons/été".encode()
    assert got == Replace(b"a SELECT {%d}\r\n%s\r\n" % (len(server), server))
    got = rw.command(cmd(b"a SELECT A\r\n"), session(utf8=False))
    assert got == Replace(b"a SELECT Brouillons/&AOk-t&AOk-\r\n")


def test_names_the_client_could_only_guess_are_refused() -> None:
    """The server's INBOX.Archive is the client's Archive: spelt by its server name it
    does not exist for the client (and cannot be created)."""
    for raw in (
        b"a SELECT INBOX.Archive\r\n",
        b"a COPY 1 INBOX.Archive.x\r\n",
        b'a STATUS "Sent Items" (MESSAGES)\r\n',
    ):
        got = f().command(cmd(raw), session())
        assert isinstance(got, Reject) and got.code == "NONEXISTENT", raw
    for raw in (b"a CREATE INBOX.Archive\r\n", b'a RENAME Foo "Sent Items"\r\n'):
        got = f().command(cmd(raw), session())
        assert isinstance(got, Reject) and got.code == "CANNOT", raw


def test_streamed_append() -> None:
    """The head of an APPEND whose message streams is replaced when its mailbox is
    renamed (the message streams after it as announced), passed otherwise."""
    big = b"a APPEND Archive (\\Seen) {100000}\r\n"
    got = f().command(cmd(big, streamed=100000), session())
    assert got == Replace(b"a APPEND INBOX.Archive (\\Seen) {100000}\r\n")
    assert segment_command(got.raw, b"a", DEFAULT_LIMITS,  # type: ignore[union-attr]
                           streamed=LiteralInfo(100000, inline=False)) == (got.raw,)  # type: ignore[union-attr]
    assert f().command(cmd(b"a APPEND INBOX {100000}\r\n", streamed=100000), session()) is PASS
    alias = cmd(b"a APPEND INBOX.Archive ~{100000}\r\n", streamed=100000)
    assert f().command(alias, session()) == Reject("Mailbox doesn't exist", code="NONEXISTENT")


def test_a_precheck_before_a_small_literal_passes() -> None:
    """Shown before the client sends a small literal (the relay assembles it): nothing to
    decide yet; the whole command comes next."""
    head = cmd(b"a APPEND Archive (\\Seen) {5}\r\n", complete=False)
    assert head.literals == ()
    assert f().command(head, session()) is PASS


# ----------------------------------------------------------------------------- LIST


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b'a LIST "" Archive.*', b'a LIST "" "INBOX.Archive.*"'),  # (wildcards: quoted)
        (b'a LIST "" "Archive"', b'a LIST "" "INBOX.Archive"'),
        (b'a LSUB "" Archive.%', b'a LSUB "" "INBOX.Archive.%"'),
        (b'a LIST "" Sent', b'a LIST "" "Sent Items"'),
        (b"a LIST Archive. %", b"a LIST INBOX.Archive. %"),
        (b'a LIST "" *', None),  # already matches every server name
        (b'a LIST "" ""', None),
        (b'a LIST "" %', b'a LIST "" (% "INBOX.Archive" "INBOX.Drafts") RETURN (CHILDREN)'),
        (b'a LIST "" A%', b'a LIST "" (A% "INBOX.Archive") RETURN (CHILDREN)'),
        (
            b'a LIST "" %.2020',
            b'a LIST "" (%.2020 "INBOX.Archive.*" "INBOX.Drafts.*") RETURN (CHILDREN)',
        ),
        (
            b'a LIST (SUBSCRIBED) "" (Archive.% Sent) RETURN (CHILDREN)',
            b'a LIST (SUBSCRIBED) "" ("INBOX.Archive.%" "Sent Items") RETURN (CHILDREN)',
        ),
    ],
)
def test_list_patterns(raw: bytes, want: bytes | None) -> None:
    got = f().command(cmd(raw + b"\r\n"), session())
    assert got == (PASS if want is None else Replace(want + b"\r\n"))


def test_extended_syntax_asks_for_what_a_basic_list_returns() -> None:
    caps = frozenset({"LIST-EXTENDED", "SPECIAL-USE"})
    got = f().command(cmd(b'a LIST "" %\r\n'), session(caps=caps))
    assert got == Replace(
        b'a LIST "" (% "INBOX.Archive" "INBOX.Drafts") RETURN (CHILDREN SPECIAL-USE)\r\n'
    )
    # the client's own RETURN options are left as they are
    got = f().command(cmd(b'a LIST "" % RETURN (SUBSCRIBED)\r\n'), session(caps=caps))
    assert got == Replace(b'a LIST "" (% "INBOX.Archive" "INBOX.Drafts") RETURN (SUBSCRIBED)\r\n')


def test_no_extra_patterns_without_list_extended() -> None:
    got = f().command(cmd(b'a LIST "" %\r\n'), session(caps=frozenset()))
    assert got is PASS


def test_list_answers_only_what_the_client_pattern_matches() -> None:
    rw = f()
    s = session()
    rw.command(cmd(b'a LIST "" %\r\n'), s)
    top = rw.response(data(b'* LIST (\\HasChildren) "." INBOX.Archive\r\n'), s)
    assert top == Replace(b'* LIST (\\HasChildren) "." Archive\r\n')
    # brought by the extra pattern INBOX.Archive.* on a LIST "" % ... left out
    assert rw.response(data(b'* LIST () "." INBOX.Archive.2020\r\n'), s) is DROP
    assert rw.response(data(b'* LIST () "." INBOX\r\n'), s) is PASS
    rw.response(tagged(b"a"), s)
    # unsolicited (no LIST in progress): mapped, not filtered
    got = rw.response(data(b'* LIST () "." INBOX.Archive.2020\r\n'), s)
    assert got == Replace(b'* LIST () "." Archive.2020\r\n')


def test_list_lines_that_would_show_server_names() -> None:
    rw = f()
    s = session()
    rw.command(cmd(b'a LIST "" "INBOX*"\r\n'), s)
    # the server's INBOX.Archive is the client's Archive, which "INBOX*" does not match
    assert rw.response(data(b'* LIST () "." INBOX.Archive\r\n'), s) is DROP
    # a server mailbox called Archive is shadowed (the client's Archive is elsewhere)
    rw.response(tagged(b"a"), s)
    assert rw.response(data(b'* LIST () "." Archive.x\r\n'), s) is DROP


def test_list_extended_oldname_and_childinfo() -> None:
    got = f().response(
        data(
            b'* LIST () "." "Sent Items" ("OLDNAME" ("INBOX.Archive.old") '
            b'"CHILDINFO" ("SUBSCRIBED"))\r\n'
        ),
        session(),
    )
    assert got == Replace(
        b'* LIST () "." "Sent" ("OLDNAME" ("Archive.old") "CHILDINFO" ("SUBSCRIBED"))\r\n'
    )


def test_the_delimiter_is_learnt_from_list() -> None:
    rw = rewrite({"mailboxes": [{"client": "Archive", "server": "INBOX/Archive"}]})
    s = session()
    # unknown: "." and "/" both end a prefix
    assert rw.command(cmd(b"a SELECT Archive.x\r\n"), s) == Replace(b"a SELECT INBOX/Archive.x\r\n")
    rw.response(data(b'* LIST (\\Noselect) "/" ""\r\n'), s)
    assert rw.mailboxes is not None and rw.mailboxes.delimiter == "/"
    assert rw.command(cmd(b"a SELECT Archive.x\r\n"), s) is PASS
    assert rw.command(cmd(b"a SELECT Archive/x\r\n"), s) == Replace(b"a SELECT INBOX/Archive/x\r\n")


def test_literal_names_in_responses() -> None:
    got = f().response(data(b'* LIST () "." {17}\r\nINBOX.Archive.a"b\r\n'), session())
    assert got == Replace(b'* LIST () "." "Archive.a\\"b"\r\n')


# ----------------------------------------------------------------------------- others


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b'* STATUS "Sent Items" (MESSAGES 2)', b'* STATUS "Sent" (MESSAGES 2)'),
        (b"* STATUS INBOX.Archive.x (UIDNEXT 4)", b"* STATUS Archive.x (UIDNEXT 4)"),
        (
            b"* ACL INBOX.Archive alice lrswipkxtecda bob lr",
            b"* ACL Archive alice lrswipkxtecda bob lr",
        ),
        (b'* MYRIGHTS "Sent Items" lrs', b'* MYRIGHTS "Sent" lrs'),
        (b"* LISTRIGHTS INBOX.Drafts bob lr s w", b"* LISTRIGHTS Entw&APw-rfe bob lr s w"),
        (
            b'* METADATA INBOX.Archive (/private/comment "hi")',
            b'* METADATA Archive (/private/comment "hi")',
        ),
        (b"* QUOTAROOT INBOX.Archive User", b"* QUOTAROOT Archive User"),
        (
            b'* NAMESPACE (("" ".")) NIL (("INBOX.Archive." "."))',
            b'* NAMESPACE (("" ".")) NIL (("Archive." "."))',
        ),
    ],
)
def test_responses(raw: bytes, want: bytes) -> None:
    assert f().response(data(raw + b"\r\n"), session()) == Replace(want + b"\r\n")


def test_responses_that_need_nothing_pass() -> None:
    for raw in (
        b'* METADATA "" (/shared/comment "x")',
        b"* STATUS INBOX (MESSAGES 1)",
        b'* NAMESPACE (("" ".")) NIL NIL',
        b"* 3 EXISTS",
        b"* ACL Other bob l",
    ):
        assert f().response(data(raw + b"\r\n"), session()) is PASS, raw


def test_utf8_session_names() -> None:
    got = f().response(data(b'* LIST () "." "INBOX.Drafts"\r\n'), session(utf8=True))
    assert got == Replace('* LIST () "." {9}\r\nEntwürfe\r\n'.encode())
    got = f().command(cmd("a SELECT {9}\r\nEntwürfe\r\n".encode()), session(utf8=True))
    assert got == Replace(b'a SELECT "INBOX.Drafts"\r\n')


def test_status_lines_of_a_list_status_follow_their_list_line() -> None:
    rw = f()
    s = session()
    rw.command(cmd(b'a LIST "" % RETURN (STATUS (MESSAGES))\r\n'), s)
    rw.command(cmd(b"b STATUS Archive.2020 (MESSAGES)\r\n"), s)
    assert rw.response(data(b"* STATUS INBOX.Archive.2020 (MESSAGES 1)\r\n"), s) != DROP
    rw.response(tagged(b"b"), s)
    assert rw.response(data(b"* STATUS INBOX.Archive.2020 (MESSAGES 1)\r\n"), s) is DROP


# ----------------------------------------------------------------------------- names


def _reference(pattern: str, name: str, delim: str) -> bool:
    rx = "".join(
        ".*" if c == "*" else f"[^{re.escape(delim)}]*" if c == "%" else re.escape(c)
        for c in pattern
    )
    return re.fullmatch(rx, name, re.DOTALL) is not None


@given(st.text("ab.*%", max_size=7), st.text("ab.", max_size=7))
def test_glob_matches_like_a_regular_expression(pattern: str, name: str) -> None:
    assert glob_match(pattern, name, ".") == _reference(pattern, name, ".")


@given(st.text("AXI.", max_size=8))
def test_every_name_the_client_sees_leads_back_to_its_mailbox(name: str) -> None:
    m = MailboxMap(
        [MailboxRule("A", "I.A"), MailboxRule("X", "A", exact=True), MailboxRule("A.X", "X.X")]
    )
    if not m.shadowed(name, "."):
        assert m.to_server(m.to_client(name, "."), ".") == name
    if not m.alias(name, "."):
        assert m.to_client(m.to_server(name, "."), ".") == name


def test_replacements_are_one_command_the_relay_can_send_in_segments() -> None:
    """A server name that needs a literal: the replacement keeps the tag, holds the
    literal inline, and the relay's segmentation accepts it (each literal after the
    server's +)."""
    rw = rewrite({"mailboxes": [{"client": "A", "server": "Brouillons/été"}]})
    got = rw.command(cmd(b'tag7 RENAME A "A/x"\r\n'), session(utf8=True))
    assert isinstance(got, Replace)
    segments = segment_command(got.raw, b"tag7", DEFAULT_LIMITS)
    server = "Brouillons/été".encode()
    assert segments == (
        b"tag7 RENAME {%d}\r\n" % len(server),
        server + b" {%d}\r\n" % (len(server) + 2),
        server + b"/x\r\n",
    )


def test_the_delimiter_is_learnt_from_namespace() -> None:
    rw = rewrite({"mailboxes": [{"client": "Team", "server": "shared/team"}]})
    s = session()
    got = rw.response(data(b'* NAMESPACE (("" "/")) NIL (("shared/team/" "/"))\r\n'), s)
    assert got == Replace(b'* NAMESPACE (("" "/")) NIL (("Team/" "/"))\r\n')
    assert rw.mailboxes is not None and rw.mailboxes.delimiter == "/"
    assert rw.command(cmd(b"a SELECT Team.x\r\n"), s) is PASS
    assert rw.command(cmd(b"a SELECT Team/x\r\n"), s) == Replace(b"a SELECT shared/team/x\r\n")
