"""The policy filter through the real command gate (sans-IO): configuration errors, every
match key and action, and the spellings a rule must not be talked around by.

Commands are fed as client bytes through a decoder and the gate, exactly as the relay does;
the outcome of each is what the relay would do: forward (as sent, or replaced) or refuse
(the reply the client gets)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from imapproxy.configfile import from_mapping
from imapproxy.filters import ChainEntry, FilterChain, OnError, SessionInfo, SessionView
from imapproxy.filters.api import DROP, PASS, ConfigError, Phase, ResponseView
from imapproxy.filters.policy import PolicyFactory, make_policy
from imapproxy.relay.gate import Collect, CommandGate, Forward, Refuse, Wait
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, FrameKind, Limits, Side

LIMITS = Limits()
INFO = SessionInfo("s-1", "10.1.2.3", 40000, "imap@127.0.0.1:1143")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def policy(
    rules: list[dict[str, Any]], clock: Clock | None = None, **options: Any
) -> PolicyFactory:
    return make_policy({"rules": rules, **options}, "filters[0]", clock=clock or Clock())


class Session:
    """One session of a policy behind the real gate."""

    def __init__(
        self,
        factory: PolicyFactory,
        *,
        user: str | None = "alice",
        selected: str | None = None,
        tls: bool = False,
        info: SessionInfo = INFO,
    ) -> None:
        from imapproxy.filters.api import TlsInfo

        self.errors: list[tuple[str, str, BaseException]] = []
        self.waited: list[float] = []
        self.filters = FilterChain([ChainEntry("policy", factory, OnError.CLOSED)]).open(
            info, lambda *a: self.errors.append(a)
        )
        self.view = SessionView(
            info,
            tls=TlsInfo("TLSv1.3") if tls else None,
            phase=Phase.AUTHENTICATED if user else Phase.NOT_AUTHENTICATED,
            user=user,
            selected=selected,
        )
        self.gate = CommandGate(self.filters, self.view, LIMITS, clock=lambda: 0.0)

    def send(self, data: bytes) -> list[str]:
        """Outcomes, one per command: "pass", "replace <raw>", or the refusal's reply."""
        dec = Decoder(Side.CLIENT, LIMITS)
        dec.authenticated = True
        dec.nonsync_as_sync = True
        dec.receive_data(data)
        out: list[str] = []
        while True:
            ev = dec.next_event()
            if ev is NEED_DATA or ev is PAUSED:
                return out
            assert isinstance(ev, Frame)
            d = self.gate.command_part(ev)
            while isinstance(d, Wait):  # (the relay awaits it, then resumes the gate)
                d = self.gate.resume(d, self._await(d.pending.awaitable))
            if isinstance(d, Collect):
                assert dec.continuation()
            elif isinstance(d, Forward):
                out.append("replace " + b"".join(d.segments).decode() if d.replaced else "pass")
            elif isinstance(d, Refuse):
                dec.completed(d.tag, "NO")
                out.append(d.reply.decode().rstrip("\r\n"))
            elif d is None:
                out.append("pass")
            else:
                out.append(repr(d))

    def _await(self, awaitable: Any) -> object:
        """Await a hook's awaitable on a Trio clock that jumps: the time it waited is
        noted in ``waited`` (virtual seconds), none of it spent."""

        async def run() -> object:
            start = trio.current_time()
            outcome = await awaitable
            self.waited.append(trio.current_time() - start)
            return outcome

        return trio.run(run, clock=MockClock(autojump_threshold=0))

    def one(self, line: bytes) -> str:
        [outcome] = self.send(line if line.endswith(b"\n") else line + b"\r\n")
        return outcome

    def respond(self, raw: bytes) -> object:
        frame_kind = FrameKind.STATUS if raw.split(b" ")[1] in (b"OK", b"NO", b"BAD") else (
            FrameKind.DATA)  # fmt: skip
        tag = None if raw.startswith(b"* ") else raw.split(b" ")[0]
        name = raw.split(b" ")[1].decode().upper()
        view = ResponseView(frame_kind, tag, name, raw)
        verdict, _ = self.filters.response(view, self.view)
        return verdict


DENY_FINANCE = [{"name": "no-finance", "match": {"mailbox": "Finance/*"}, "action": "deny"}]


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rules": [{"action": "dney"}]},
         'filters[0].rules[0].action: expected one of allow, deny, read-only, hide; got "dney"'),
        ({"rules": [{"match": {"usr": "x"}, "action": "deny"}]},
         "filters[0].rules[0].match.usr: unknown key (known: client, command, listener, "
         "mailbox, size_over, tls, user)"),
        ({"rules": [{"match": {"client": "10.0.0.0/33"}, "action": "deny"}]},
         'filters[0].rules[0].match.client: not an address or CIDR: "10.0.0.0/33"'),
        ({"rules": [{"match": {"tls": "yes"}, "action": "deny"}]},
         'filters[0].rules[0].match.tls: expected true or false; got "yes"'),
        ({"rules": [{"match": {"size_over": -1}, "action": "deny"}]},
         "filters[0].rules[0].match.size_over: expected a number of bytes; got -1"),
        ({"rules": [{"rate": "20 per second"}]},
         'filters[0].rules[0].rate: expected "N/s", "N/min" or "N/h" (e.g. "20/s", "10/min"); '
         'got "20 per second"'),
        ({"rules": [{"rate": "2/s", "action": "deny"}]},
         "filters[0].rules[0].rate: a rule has an action or a rate, not both"),
        ({"rules": [{"match": {"user": "x"}}]},
         "filters[0].rules[0].action: required (one of allow, deny, read-only, hide), or a rate"),
        ({"rules": [{"match": {"user": "x"}, "action": "hide"}]},
         "filters[0].rules[0].match: a hide rule names mailboxes (match.mailbox) and no command "
         "or size"),
        ({"rules": [{"action": "deny", "code": "NO PERM"}]},
         'filters[0].rules[0].code: expected a response code such as NOPERM; got "NO PERM"'),
        ({"rules": [{"action": "deny", "text": "a\nb"}]},
         'filters[0].rules[0].text: expected a printable one-line text; got "a\\nb"'),
        ({"rules": [{"action": "deny", "delay": 1}]},
         "filters[0].rules[0].delay: only for a rule with a rate"),
        ({"rules": [{"name": "a", "action": "deny"}, {"name": "a", "action": "allow"}]},
         'filters[0].rules[1].name: "a" is used twice'),
        ({"default": "reject"}, 'filters[0].default: expected one of allow, deny; got "reject"'),
        ({"delimiter": "//"}, 'filters[0].delimiter: expected one character such as "/" or "."; '
         'got "//"'),
        ({"rule": []}, "filters[0].rule: unknown key (known: default, delimiter, mailbox_case, "
         "max_buckets, rules)"),
        ({"mailbox_case": "upper"}, "filters[0].mailbox_case: expected one of sensitive, "
         'insensitive; got "upper"'),
        ({"rules": [{"match": {"command": "UID"}, "action": "deny"}]} , None),
    ],
)  # fmt: skip
def test_options_are_validated_with_the_key_path(
    options: Mapping[str, Any], message: str | None
) -> None:
    if message is None:  # "UID" alone is a command name like any other: accepted
        make_policy(options, "filters[0]")
        return
    with pytest.raises(ConfigError) as exc:
        make_policy(options, "filters[0]")
    assert str(exc.value) == message


def test_config_file_names_the_filter_index() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"filters": [
            {"use": "policy", "name": "first"},
            {"use": "policy", "rules": [{"match": {"user": "x"}, "action": "dney"}]},
        ]})  # fmt: skip
    assert str(exc.value) == (
        'filters[1].rules[0].action: expected one of allow, deny, read-only, hide; got "dney"'
    )
    chain = from_mapping({"filters": [{"use": "policy", "rules": DENY_FINANCE}]}).filters
    assert [e.name for e in chain.entries] == ["policy"]


# ----------------------------------------------------------------------------- match keys


def test_command_any_case_and_uid_variants() -> None:
    s = Session(policy([{"match": {"command": "FETCH"}, "action": "deny"}]))
    for line in (b"a FETCH 1 BODY[]", b"a fetch 1 BODY[]", b"a UID FETCH 1 BODY[]",
                 b"a uid Fetch 1 BODY[]"):  # fmt: skip
        assert s.one(line).startswith("a NO [NOPERM]"), line
    assert s.one(b"a STORE 1 +FLAGS (\\Seen)") == "pass"
    only_uid = Session(policy([{"match": {"command": "uid  fetch"}, "action": "deny"}]))
    assert only_uid.one(b"a FETCH 1 FLAGS") == "pass"
    assert only_uid.one(b"a UID FETCH 1 FLAGS").startswith("a NO [NOPERM]")


def test_user_glob_is_case_insensitive_and_needs_a_login() -> None:
    factory = policy([{"match": {"user": "intern*"}, "action": "deny"}])
    assert Session(factory, user="intern7").one(b'a LIST "" *').startswith("a NO")
    assert Session(factory, user="Intern7").one(b'a LIST "" *').startswith("a NO")
    assert Session(factory, user="alice").one(b'a LIST "" *') == "pass"
    # before login only rules without a user apply
    assert Session(factory, user=None).one(b"a LOGIN intern7 pw") == "pass"


def test_client_tls_and_listener() -> None:
    rules = [
        {"name": "net", "match": {"client": ["10.0.0.0/8"], "command": "DELETE"},
         "action": "deny"},
        {"name": "plain", "match": {"tls": False, "command": "RENAME"}, "action": "deny"},
        {"name": "lst", "match": {"listener": "127.0.0.1:1143", "command": "CREATE"},
         "action": "deny"},
    ]  # fmt: skip
    s = Session(policy(rules))
    assert s.one(b"a DELETE x").startswith("a NO")
    assert s.one(b"a RENAME x y").startswith("a NO")
    assert s.one(b"a CREATE x").startswith("a NO")
    other = SessionInfo("s-2", "::ffff:192.168.1.1", 1, "imaps@127.0.0.1:1993")
    t = Session(policy(rules), tls=True, info=other)
    assert [t.one(b"a DELETE x"), t.one(b"a RENAME x y"), t.one(b"a CREATE x")] == ["pass"] * 3
    mapped = SessionInfo("s-3", "::ffff:10.9.9.9", 1, "imap@127.0.0.1:1143")
    assert Session(policy(rules), info=mapped).one(b"a DELETE x").startswith("a NO")
    by_kind = policy([{"match": {"listener": "imaps", "command": "CREATE"}, "action": "deny"}])
    assert Session(by_kind, info=other).one(b"a CREATE x").startswith("a NO")
    assert Session(by_kind).one(b"a CREATE x") == "pass"


def test_size_over_counts_every_literal_streamed_or_held() -> None:
    s = Session(policy([{"match": {"command": "APPEND", "size_over": 1000}, "action": "deny",
                         "code": "TOOBIG", "text": "too big"}]))  # fmt: skip
    assert s.one(b"a APPEND INBOX {10}\r\n0123456789") == "pass"
    assert s.one(b"a APPEND INBOX {5000000}") == "a NO [TOOBIG] too big"
    assert s.send(
        b"a APPEND INBOX {600}\r\n" + b"x" * 600 + b" {600}\r\n" + b"y" * 600 + b"\r\n"
    ) == ["a NO [TOOBIG] too big"]


# ----------------------------------------------------------------------------- actions


def test_first_match_wins_and_the_reply_says_only_the_rule_text() -> None:
    rules = [
        {"name": "boss", "match": {"user": "boss"}, "action": "allow"},
        {"name": "secret-rule-name", "match": {"mailbox": "Finance/*"}, "action": "deny",
         "code": "NOPERM", "text": "no"},
    ]  # fmt: skip
    assert Session(policy(rules), user="boss").one(b"a SELECT Finance/2024") == "pass"
    reply = Session(policy(rules)).one(b"a SELECT Finance/2024")
    assert reply == "a NO [NOPERM] no"


def test_default_deny_spares_login_and_logout() -> None:
    factory = policy([{"match": {"command": ["SELECT", "FETCH"]}, "action": "allow"}],
                     default="deny")  # fmt: skip
    s = Session(factory)
    assert s.one(b"a SELECT INBOX") == "pass"
    assert s.one(b"a DELETE INBOX") == "a NO [NOPERM] not allowed"
    assert [s.one(b"a CAPABILITY"), s.one(b"a NOOP"), s.one(b"a LOGOUT")] == ["pass"] * 3
    assert Session(factory, user=None).one(b"a LOGIN u p") == "pass"


@pytest.mark.parametrize(
    "line",
    [b"a APPEND INBOX {3}\r\nabc", b"a STORE 1 +FLAGS (\\Seen)", b"a UID STORE 1 FLAGS ()",
     b"a COPY 1 Other", b"a MOVE 1 Other", b"a UID MOVE 1 Other", b"a EXPUNGE",
     b"a UID EXPUNGE 1", b"a CREATE x", b"a DELETE x", b"a RENAME x y", b"a SUBSCRIBE x",
     b"a UNSUBSCRIBE x", b"a SETACL x bob lr", b"a DELETEACL x bob",
     b"a SETMETADATA x (/private/comment \"c\")", b"a SETQUOTA \"\" (STORAGE 1)",
     b"a XUNKNOWN x", b"a REPLACE 1 INBOX {3}\r\nabc"],
)  # fmt: skip
def test_read_only_refuses_every_change(line: bytes) -> None:
    s = Session(policy([{"name": "audit", "match": {"user": "auditor"}, "action": "read-only"}]),
                user="auditor", selected="INBOX")  # fmt: skip
    assert s.one(line) == "a NO [NOPERM] read-only access"


@pytest.mark.parametrize(
    ("line", "sent"),
    [(b"a SELECT INBOX", b"a EXAMINE INBOX\r\n"),
     (b"a select \"INBOX\" (CONDSTORE)", b"a EXAMINE \"INBOX\" (CONDSTORE)\r\n"),
     (b"a Select {5}\r\nINBOX", b"a EXAMINE {5}\r\nINBOX\r\n"),
     (b"a SELECT {5+}\r\nINBOX", b"a EXAMINE {5}\r\nINBOX\r\n")],
)  # fmt: skip
def test_read_only_turns_select_into_examine(line: bytes, sent: bytes) -> None:
    s = Session(policy([{"match": {"user": "auditor"}, "action": "read-only"}]), user="auditor")
    assert s.one(line) == "replace " + sent.decode()
    reads = (b"a EXAMINE INBOX", b"a FETCH 1 BODY[]", b"a UID SEARCH ALL",
             b"a STATUS INBOX (MESSAGES)", b'a LIST "" *', b"a CLOSE", b"a LOGOUT")  # fmt: skip
    for ok in reads:
        assert s.one(ok) == "pass", ok


def test_the_examine_is_logged_with_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    from imapproxy.filters.api import Replace
    from imapproxy.filters.views import command_view

    s = Session(policy([{"name": "audit", "match": {"user": "a*"}, "action": "read-only"}]))
    dec = Decoder(Side.CLIENT, LIMITS)
    dec.authenticated = True
    dec.receive_data(b"a SELECT INBOX\r\n")
    ev = dec.next_event()
    assert isinstance(ev, Frame)
    with caplog.at_level(logging.DEBUG, logger="imapproxy.policy"):
        verdict, by = s.filters.command(command_view(ev.raw, ev), s.view)
    assert verdict == Replace(b"a EXAMINE INBOX\r\n", rule="audit") and by == "policy"
    assert [r.getMessage() for r in caplog.records] == [
        "session s-1: policy rule audit: SELECT sent as EXAMINE"
    ]


def test_read_only_on_some_mailboxes_only() -> None:
    rules = [{"match": {"mailbox": "Shared/*"}, "action": "read-only"}]
    s = Session(policy(rules), selected="Shared/team")
    assert s.one(b"a STORE 1 +FLAGS (\\Deleted)").startswith("a NO")
    assert s.one(b"a MOVE 1 INBOX").startswith("a NO")  # expunges from Shared/team
    assert s.one(b"a COPY 1 INBOX") == "pass"  # reads Shared/team, changes INBOX
    t = Session(policy(rules), selected="INBOX")
    assert t.one(b"a COPY 1 Shared/team").startswith("a NO")
    assert t.one(b"a STORE 1 +FLAGS (\\Deleted)") == "pass"
    assert t.one(b"a SELECT Shared/team") == "replace a EXAMINE Shared/team\r\n"
    assert t.one(b"a SELECT Other") == "pass"


def test_hide_refuses_access_and_drops_answers() -> None:
    rules = [{"name": "hide-hr", "match": {"user": "intern*", "mailbox": ["HR", "HR/*"]},
              "action": "hide"}]  # fmt: skip
    s = Session(policy(rules), user="intern1")
    for line in (b"a SELECT HR", b"a EXAMINE HR/x", b"a STATUS HR/2024 (MESSAGES)",
                 b"a CREATE HR/new", b"a RENAME Old HR/x", b"a COPY 1 HR"):  # fmt: skip
        assert s.one(line) == "a NO [NONEXISTENT] Mailbox doesn't exist", line
    assert s.one(b"a SELECT hr") == "pass"  # (names are case-sensitive, but for INBOX)
    assert s.respond(b'* LIST (\\HasNoChildren) "/" HR\r\n') is DROP
    assert s.respond(b'* LIST (\\HasNoChildren) "/" {5}\r\nHR/xy\r\n') is DROP
    assert s.respond(b'* LSUB () "/" "HR/2024"\r\n') is DROP
    assert s.respond(b"* STATUS HR (MESSAGES 3)\r\n") is DROP
    assert s.respond(b'* LIST (\\HasNoChildren) "/" INBOX\r\n') is PASS
    assert s.respond(b"* STATUS INBOX (MESSAGES 3)\r\n") is PASS
    boss = Session(policy(rules), user="boss")
    assert boss.respond(b'* LIST () "/" HR\r\n') is PASS and boss.one(b"a SELECT HR") == "pass"


def test_status_answers_of_denied_mailboxes_are_dropped() -> None:
    """LIST ... RETURN (STATUS) and NOTIFY answer STATUS without a STATUS command."""
    s = Session(policy(DENY_FINANCE))
    assert s.respond(b"* STATUS Finance/2024 (MESSAGES 3)\r\n") is DROP
    assert s.respond(b'* LIST () "/" Finance/2024\r\n') is PASS  # deny is not hide
    assert s.respond(b"* STATUS Other (MESSAGES 3)\r\n") is PASS


def test_rate_per_user_shared_by_sessions_with_time_controlled() -> None:
    clock = Clock()
    factory = policy([{"name": "slow", "match": {"user": "*"}, "rate": "2/s"}], clock)
    a, b = Session(factory), Session(factory)
    c = Session(factory, user="Bob")
    assert a.one(b"a NOOP") == "pass" and b.one(b"a NOOP") == "pass"
    assert a.one(b"a NOOP") == "a NO [LIMIT] too many commands, slow down"
    assert c.one(b"a NOOP") == "pass"  # another user: another bucket
    clock.now += 0.5  # one token back (2 per second)
    assert b.one(b"a NOOP") == "pass"
    assert a.one(b"a NOOP").startswith("a NO [LIMIT]")
    clock.now += 10  # never more than the burst
    assert [a.one(b"a NOOP") for _ in range(3)] == ["pass", "pass", "a NO [LIMIT] too many "
                                                    "commands, slow down"]  # fmt: skip
    # the same user in another case is the same bucket
    assert Session(factory, user="ALICE").one(b"a NOOP").startswith("a NO [LIMIT]")


def test_login_rate_per_client_address() -> None:
    clock = Clock()
    factory = policy([{"name": "logins", "match": {"command": ["LOGIN", "AUTHENTICATE"]},
                       "rate": "2/min", "text": "slow down"}], clock)  # fmt: skip
    here = Session(factory, user=None)
    assert here.one(b"a LOGIN u p") == "pass"
    assert here.one(b"a AUTHENTICATE PLAIN AHUAcA==") == "pass"
    # a new connection from the same address shares the bucket; the refusal waits
    again = Session(factory, user=None)
    assert again.one(b"a LOGIN u p") == "a NO [LIMIT] slow down"
    assert again.waited == [pytest.approx(1.0)]  # (the default delay of a login rule)
    assert here.waited == []
    other = SessionInfo("s-9", "10.9.9.9", 1, INFO.listener)
    assert Session(factory, user=None, info=other).one(b"a LOGIN u p") == "pass"
    clock.now += 30
    assert here.one(b"a LOGIN u p") == "pass"
    slower = policy([{"match": {"command": "LOGIN"}, "rate": "1/h", "delay": 2.5}], clock)
    s = Session(slower, user=None)
    assert s.one(b"a LOGIN u p") == "pass" and s.waited == []
    assert s.one(b"b LOGIN u p").startswith("b NO [LIMIT]") and s.waited == [2.5]
    # commands other than logins are refused at once
    cmds = Session(policy([{"match": {"command": "NOOP"}, "rate": "1/h", "per": "client"}]))
    assert cmds.one(b"a NOOP") == "pass" and cmds.one(b"a NOOP").startswith("a NO")
    assert cmds.waited == []


# ----------------------------------------------------------------------------- bypasses


@pytest.mark.parametrize(
    "line",
    [b"a SELECT Finance/2024", b"a Select Finance/2024", b'a SELECT "Finance/2024"',
     b"a SELECT {12}\r\nFinance/2024", b"a SELECT {12+}\r\nFinance/2024",
     b"a SELECT Finance//2024", b"a SELECT Finance/2024/", b"a SELECT Finance",
     b"a EXAMINE Finance/2024", b"a STATUS Finance (MESSAGES)",
     b"a DELETE Finance/2024", b"a RENAME Finance/2024 Other", b"a RENAME Other Finance/x",
     b"a COPY 1 Finance/2024", b"a UID COPY 1 Finance/2024", b"a MOVE 1 Finance/2024",
     b"a APPEND Finance/2024 {3}\r\nabc", b"a APPEND Finance/2024 {5000000}",
     b"a GETACL Finance", b"a SETACL Finance bob lr", b"a DELETEACL Finance bob",
     b"a MYRIGHTS Finance", b"a LISTRIGHTS Finance bob", b"a GETQUOTAROOT Finance",
     b"a SETMETADATA Finance (/private/comment NIL)", b"a GETMETADATA (DEPTH 1) Finance (/x)",
     b"a SUBSCRIBE Finance/2024", b"a UNSUBSCRIBE Finance/2024",
     b'a APPEND INBOX CATENATE (URL "/Finance/2024;UIDVALIDITY=1/;UID=1")',
     b'a APPEND INBOX CATENATE (URL "imap://u@h/Finance%2F2024/;UID=1")'],
)  # fmt: skip
def test_mailbox_spellings(line: bytes) -> None:
    s = Session(policy(DENY_FINANCE, delimiter="/"))
    assert s.one(line) == "a NO [NOPERM] not allowed", line


def test_names_other_than_inbox_are_case_sensitive_and_escapes_are_refused() -> None:
    s = Session(policy(DENY_FINANCE, delimiter="/"))
    assert s.one(b"a select finance/2024") == "pass"
    # a backslash before a character that needs none: refused, never guessed
    assert s.one(b'a SELECT "Fin\\ance/2024"').startswith("a BAD [CLIENTBUG]")
    assert s.one(b'a SELECT "Finance\\/2024"').startswith("a BAD [CLIENTBUG]")


def test_inbox_in_any_case_and_as_a_parent() -> None:
    s = Session(policy([{"match": {"mailbox": "INBOX/*"}, "action": "deny"}]))
    for line in (b"a SELECT inbox", b'a SELECT "InBoX"', b"a SELECT {5}\r\niNbOx",
                 b"a SELECT inbox/sub", b"a DELETE Inbox/Sub"):  # fmt: skip
        assert s.one(line).startswith("a NO"), line
    assert s.one(b"a SELECT inboxes") == "pass"


def test_modified_utf7_and_utf8_spell_the_same_name() -> None:
    rules = [{"match": {"mailbox": "Finänce*"}, "action": "deny"}]
    for utf8 in (False, True):  # whatever the session thinks ENABLE did (pipelining)
        s = Session(policy(rules))
        s.view.utf8 = utf8
        assert s.one(b"a SELECT Fin&AOQ-nce").startswith("a NO"), utf8
        assert s.one('a SELECT "Finänce"'.encode()).startswith("a NO"), utf8
        assert s.one(b"a SELECT {8}\r\n" + "Finänce".encode()).startswith("a NO"), utf8
        assert s.one(b"a SELECT Finance") == "pass"
    # after ENABLE UTF8=ACCEPT "&" is just a character: a name that is also valid
    # modified UTF-7 is matched by both readings
    literal = policy([{"match": {"mailbox": "Lab&AOQ-x"}, "action": "deny"}])
    assert Session(literal).one(b"a SELECT Lab&AOQ-x").startswith("a NO")
    assert Session(literal).one("a SELECT Labäx".encode()) == "pass"
    # an allow rule matches only when every reading of the name matches
    allow = policy([{"match": {"mailbox": "Fin&AOQ-nce"}, "action": "allow"}], default="deny")
    assert Session(allow).one(b"a SELECT Fin&AOQ-nce").startswith("a NO")


def test_a_server_whose_mailbox_names_ignore_case() -> None:
    rules = [{"match": {"mailbox": "Finance/*"}, "action": "deny"}]
    s = Session(policy(rules, mailbox_case="insensitive"))
    for line in (b"a SELECT finance", b"a SELECT FINANCE/2024", b"a RENAME FINANCE X",
                 b"a RENAME fINANCE/x Y"):  # fmt: skip
        assert s.one(line).startswith("a NO"), line
    assert s.one(b"a SELECT Fin") == "pass"
    assert Session(policy(rules)).one(b"a SELECT finance") == "pass"  # (the default)


def test_dot_delimiter() -> None:
    s = Session(policy([{"match": {"mailbox": "Finance.*"}, "action": "deny"}], delimiter="."))
    for line in (b"a SELECT Finance", b"a SELECT Finance.2024", b"a SELECT Finance..2024",
                 b"a SELECT Finance.2024."):  # fmt: skip
        assert s.one(line).startswith("a NO"), line
    assert s.one(b"a SELECT Finance/2024") == "pass"  # "/" is a character there


def test_rename_of_a_parent_moves_what_a_rule_covers_below_it() -> None:
    rules = [{"match": {"mailbox": ["Corp/Secret/*", "Team/%/Private"]}, "action": "deny"}]
    s = Session(policy(rules))
    for line in (b"a RENAME Corp Corp2", b"a RENAME Corp/Secret X", b"a RENAME Team X",
                 b"a RENAME Team/Sub X", b"a RENAME X Corp/Secret/y"):  # fmt: skip
        assert s.one(line).startswith("a NO"), line
    assert s.one(b"a RENAME Other Corp2") == "pass"
    assert s.one(b"a RENAME Team/Sub/Private2 X") == "pass"
    assert s.one(b"a RENAME Team/A/B X") == "pass"  # ("%" is one level)
    assert s.one(b"a DELETE Corp") == "pass"  # (DELETE leaves the mailboxes below)
    hide = policy([{"match": {"mailbox": "HR/*"}, "action": "hide"}])
    assert Session(hide).one(b"a RENAME HR X").startswith("a NO [NONEXISTENT]")


def test_move_and_copy_then_expunge_and_close() -> None:
    rules = [{"name": "keep-archive", "match": {"command": "EXPUNGE", "mailbox": "Archive"},
              "action": "deny"}]  # fmt: skip
    s = Session(policy(rules), selected="Archive")
    for line in (b"a EXPUNGE", b"a UID EXPUNGE 1:*", b"a MOVE 1 INBOX", b"a UID MOVE 1 INBOX",
                 b"a CLOSE"):  # fmt: skip
        assert s.one(line).startswith("a NO"), line
    assert s.one(b"a COPY 1 INBOX") == "pass" and s.one(b"a UNSELECT") == "pass"
    assert Session(policy(rules), selected="INBOX").one(b"a MOVE 1 Archive") == "pass"
    no_copy_in = policy([{"match": {"command": "COPY", "mailbox": "Archive"}, "action": "deny"}])
    assert Session(no_copy_in, selected="INBOX").one(b"a MOVE 1 Archive").startswith("a NO")


def test_a_fetch_that_sets_seen_is_a_store() -> None:
    rules = [{"match": {"command": "STORE", "mailbox": "INBOX"}, "action": "deny"}]
    s = Session(policy(rules), selected="INBOX")
    seen = (b"a FETCH 1 BODY[]", b"a UID FETCH 1 (FLAGS BODY[TEXT]<0.10>)",
            b"a FETCH 1 rfc822", b"a FETCH 1:* (BINARY[1])", b"a FETCH 1 RFC822.TEXT")  # fmt: skip
    for line in seen:
        assert s.one(line).startswith("a NO"), line
    for line in (b"a FETCH 1 BODY.PEEK[]", b"a FETCH 1 (RFC822.HEADER RFC822.SIZE BODY)",
                 b"a FETCH 1 FULL", b"a UID FETCH 1 BINARY.PEEK[1]"):  # fmt: skip
        assert s.one(line) == "pass", line
    # under read-only, where SELECT went as EXAMINE, a FETCH sets nothing: it passes
    ro = Session(policy([{"match": {"mailbox": "INBOX"}, "action": "read-only"}]),
                 selected="INBOX")  # fmt: skip
    assert ro.one(b"a FETCH 1 BODY[]") == "pass"


def test_pipelined_select_then_change_in_one_write() -> None:
    rules = [{"match": {"command": ["EXPUNGE", "STORE"], "mailbox": "Archive"}, "action": "deny"}]
    s = Session(policy(rules), selected="INBOX")
    out = s.send(b"a SELECT Archive\r\nb STORE 1:* +FLAGS (\\Deleted)\r\nc EXPUNGE\r\n")
    assert out[0] == "pass" and out[1].startswith("b NO") and out[2].startswith("c NO")
    # a SELECT with a literal is held whole too, before what follows it is decided
    t = Session(policy(rules), selected="INBOX")
    out = t.send(b"a SELECT {7}\r\nArchive\r\nb EXPUNGE\r\n")
    assert out[0] == "pass" and out[1].startswith("b NO"), out
    # once the server answered the SELECT, only the confirmed mailbox counts
    s.respond(b"a NO no such mailbox\r\n")
    s.view.selected = None
    assert s.one(b"d EXPUNGE") == "pass"


def test_unparsable_arguments_are_refused_by_the_relay_not_guessed() -> None:
    s = Session(policy(DENY_FINANCE))
    assert s.one(b'a SELECT "Finance/2024').startswith("a BAD [CLIENTBUG]")
    assert s.one(b"a SELECT Finance/2024 (").startswith("a BAD [CLIENTBUG]")


def test_only_what_can_be_decided_is_held_back() -> None:
    assert policy(DENY_FINANCE).decided is not None
    decided = policy(DENY_FINANCE).decided
    assert decided is not None
    assert {"SELECT", "COPY", "MOVE", "APPEND", "RENAME", "GETACL"} <= decided
    assert not {"FETCH", "STORE", "SEARCH", "NOOP", "LOGIN"} & decided
    assert "FETCH" in policy([{"match": {"command": "STORE"}, "action": "deny"}]).decided
    expunge = policy([{"match": {"command": "UID EXPUNGE"}, "action": "deny"}]).decided
    assert expunge == {"EXPUNGE", "MOVE", "CLOSE", "REPLACE"}
    assert policy([{"match": {"user": "x"}, "action": "deny"}]).decided is None
    assert policy([], default="deny").decided is None
    assert policy([{"match": {"user": "a"}, "action": "read-only"}]).decided is None
    # an allow rule naming commands: SELECT may pass where FETCH must not
    mixed = [{"match": {"command": "SELECT"}, "action": "allow"}, *DENY_FINANCE]
    assert policy(mixed).decided is None


def test_blocks_are_logged_and_name_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    s = Session(policy(DENY_FINANCE))
    decision = None
    with caplog.at_level(logging.INFO, logger="imapproxy.policy"):
        dec = Decoder(Side.CLIENT, LIMITS)
        dec.authenticated = True
        dec.receive_data(b"a SELECT Finance/x\r\n")
        ev = dec.next_event()
        assert isinstance(ev, Frame)
        decision = s.gate.command_part(ev)
    # (the verdict is the chain's filter's: "policy"; the rule is named in the log)
    assert isinstance(decision, Refuse) and decision.by == "policy"
    [record] = [r for r in caplog.records if r.name == "imapproxy.policy"]
    assert record.getMessage() == "session s-1: policy rule no-finance: SELECT denied"
    assert "alice" not in record.getMessage()


def test_bucket_store_stays_bounded() -> None:
    from imapproxy.filters.ratelimit import BucketStore, parse_rate

    clock = Clock()
    store = BucketStore(max_buckets=100, clock=clock)
    rate = parse_rate("1/min")
    for i in range(1000):
        store.take(("k", i), rate)
    assert len(store) == 100
    clock.now += 3600  # every bucket refilled: they go as new keys come
    for i in range(50):
        store.take(("n", i), rate)
    assert len(store) <= 100
    assert parse_rate("10/min").per_second == pytest.approx(1 / 6)
    assert parse_rate("5/10s").seconds == 10


def test_a_delimiter_other_than_the_servers_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    factory = policy(DENY_FINANCE)  # delimiter "/"
    with caplog.at_level(logging.WARNING, logger="imapproxy.policy"):
        for _ in range(2):
            s = Session(factory)
            assert s.respond(b'* LIST (\\HasNoChildren) "." INBOX\r\n') is PASS
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        'policy: the server\'s hierarchy delimiter is ".", the policy says "/": set '
        "delimiter in the policy's configuration"
    ]
    right = policy(DENY_FINANCE, delimiter=".")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="imapproxy.policy"):
        Session(right).respond(b'* LIST (\\HasNoChildren) "." INBOX\r\n')
    assert not caplog.records
