"""The policy filter (``use = "policy"``): an access policy in front of a server one may not
be able to configure, that a spelling cannot talk around.

Configuration::

    [[filters]]
    use = "policy"
    default = "allow"                 # or "deny"
    delimiter = "/"                   # the server's hierarchy delimiter (Dovecot Maildir: ".")
    [[filters.rules]]
    name = "interns-no-finance"
    match = { user = "intern*", mailbox = "Finance/*" }
    action = "deny"                   # allow | deny | read-only | hide
    code = "NOPERM"                   # the reply's response code
    text = "not allowed"              # the reply's text: all a client is told
    [[filters.rules]]
    match = { user = "*" }
    rate = "20/s"                     # a token bucket per user (see below)

Evaluation, per command, over the rules that apply to the session (client, listener) and
its state (user, TLS), in order:

* ``allow``, ``deny`` and ``hide`` end it: the first of them that matches decides;
* ``read-only`` and ``rate`` rules restrict and let it go on: a read-only rule refuses
  what would change something and turns SELECT into EXAMINE; a rate rule takes a token,
  and refuses ``NO [LIMIT]`` when there is none;
* no deciding rule matched: ``default`` (``"deny"`` spares CAPABILITY, NOOP, LOGOUT and
  logging in, which a rule may still deny).

Rules match what the command does, parsed and normalised (:mod:`.policy_rules`), and the
filter also watches the answers: a hidden mailbox is dropped from LIST/LSUB (and NOTIFY's)
answers, and a mailbox whose STATUS would be refused is dropped from STATUS answers (LIST
RETURN STATUS, NOTIFY).  Each refusal is a log line (``imapproxy.policy``: session, rule,
command) and the transcript names the rule: the filter's ``name`` is ``policy/<rule>`` for
the verdict it gives.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..wire.errors import ParseError
from ..wire.parser import parse_response
from ..wire.tokens import DataResponse, LiteralRef, Token, string_value
from .api import (
    DROP,
    PASS,
    CommandView,
    ConfigError,
    Filter,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    Verdict,
)
from .policy_rules import (
    ALLOW,
    DENY,
    HIDE,
    MAILBOX_POSITIONS,
    READ_COMMANDS,
    READ_ONLY,
    UNKNOWN,
    URL_COMMANDS,
    Op,
    Rule,
    _got,
    candidates,
    canonical,
    command_ops,
    parse_rule,
)
from .ratelimit import BucketStore

log = logging.getLogger("imapproxy.policy")

_OPTIONS = frozenset({"default", "rules", "delimiter", "max_buckets"})
# Spared by default = "deny" (a session must be able to log in and out).
DEFAULT_EXEMPT = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "LOGIN", "AUTHENTICATE"})
_LOGINS = frozenset({"LOGIN", "AUTHENTICATE"})
_LIST_RESPONSES = frozenset({"LIST", "LSUB", "XLIST"})
_COMPLETIONS = frozenset({"OK", "NO", "BAD"})
_SELECTS = frozenset({"SELECT", "EXAMINE"})
_MAX_SELECTING = 64  # SELECT/EXAMINE in flight at once, per session (pipelined)
_MAX_NAMES = 64  # command names remembered per session (clients choose them: bounded)
DEFAULT_MAX_BUCKETS = 100_000  # rate buckets kept process-wide (~200 B each: ~20 MB)
DEFAULT_DENIED = Reject("not allowed", status="NO", code="NOPERM")


class PolicyFactory:
    """The process-wide part: the rules, and the rate buckets every session shares."""

    def __init__(
        self,
        rules: tuple[Rule, ...],
        *,
        default: str = ALLOW,
        delimiter: str = "/",
        store: BucketStore | None = None,
    ) -> None:
        self.rules = rules
        self.default_deny = default == DENY
        self.delimiter = delimiter
        self.store = store if store is not None else BucketStore(DEFAULT_MAX_BUCKETS)
        self.decided = _decided(rules, self.default_deny)
        self.track_selected = any(r.mailboxes is not None for r in rules)
        # SELECT and EXAMINE are watched (not held) to know which mailbox a pipelined
        # command acts on
        self.wanted = (
            self.decided | {"SELECT", "EXAMINE"}
            if self.track_selected and self.decided is not None
            else self.decided
        )
        wants: set[str] = set()
        if any(r.action == HIDE for r in rules):
            wants |= _LIST_RESPONSES
        if self.default_deny or any(r.action in (DENY, HIDE) for r in rules):
            wants.add("STATUS")
        if self.track_selected:
            wants |= _COMPLETIONS
        self.wants_responses = frozenset(wants)

    def __call__(self, info: SessionInfo) -> PolicyFilter:
        return PolicyFilter(self, info)


class PolicyFilter(Filter):
    __slots__ = (
        "_by_name", "_live", "_selected_key", "_selected_names", "_selecting", "_session_rules",
        "_state", "factory", "info", "name", "wants_commands", "wants_responses",
    )  # fmt: skip

    def __init__(self, factory: PolicyFactory, info: SessionInfo) -> None:
        self.factory = factory
        self.info = info
        self.name = "policy"
        self.wants_commands = factory.wanted
        self.wants_responses = factory.wants_responses
        # (index, rule) of the rules that hold for this client and listener
        self._session_rules = tuple(
            (i, r) for i, r in enumerate(factory.rules) if r.applies_to_session(info)
        )
        self._state: tuple[str | None, bool] | None = None
        self._live: tuple[tuple[int, Rule], ...] = ()
        self._by_name: dict[str, tuple[tuple[int, Rule], ...]] = {}
        self._selecting: dict[bytes, tuple[str, ...]] = {}  # SELECT/EXAMINE in flight
        self._selected_key: str | None = None
        self._selected_names: tuple[str, ...] = ()

    def decided_commands(self) -> frozenset[str] | None:
        return self.factory.decided

    # ------------------------------------------------------------------ state

    def _rules_for(self, name: str, session: SessionView) -> tuple[tuple[int, Rule], ...]:
        """The rules that may match command ``name`` in the session's present state."""
        state = (session.user, session.tls is not None)
        if state != self._state:
            self._state = state
            self._live = tuple(
                (i, r) for i, r in self._session_rules if r.applies_to_state(state[0], state[1])
            )
            self._by_name = {}
        rules = self._by_name.get(name)
        if rules is None:
            rules = tuple(
                (i, r) for i, r in self._live
                if (names := r.command_names()) is None or name in names or r.action == READ_ONLY
            )  # fmt: skip
            if len(self._by_name) < _MAX_NAMES:
                self._by_name[name] = rules
        return rules

    def _selected(self, session: SessionView) -> tuple[str, ...]:
        """The names the selected mailbox may have now: the one the server confirmed and
        those of SELECT/EXAMINE commands still in flight (pipelined)."""
        sel = session.selected
        if sel != self._selected_key:
            self._selected_key = sel
            self._selected_names = () if sel is None else (
                canonical(sel, self.factory.delimiter),)  # fmt: skip
        names = self._selected_names
        if self._selecting:
            names = names + tuple(n for v in self._selecting.values() for n in v)
        return names

    # ------------------------------------------------------------------ commands

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        self.name = "policy"
        if not cmd.complete and cmd.literals and cmd.literals[-1].inline:
            # the relay asks before a small literal comes: decided once the command is whole
            return PASS
        rules = self._rules_for(cmd.name, session)
        factory = self.factory
        if rules or factory.default_deny:
            ops = command_ops(cmd, self._selected(session), factory.delimiter)
            verdict = self._evaluate(cmd, ops, rules, session)
        else:
            ops = None
            verdict = PASS
        if factory.track_selected and cmd.name in _SELECTS and type(verdict) is not Reject:
            if ops is None:
                ops = command_ops(cmd, (), factory.delimiter)
            if len(self._selecting) < _MAX_SELECTING:
                self._selecting[cmd.tag] = ops[0][2]
            else:  # (a client that pipelines this many SELECTs: refused, not forgotten)
                return self._block_selects(cmd)
        return verdict

    def _evaluate(
        self,
        cmd: CommandView,
        ops: tuple[Op, ...],
        rules: tuple[tuple[int, Rule], ...],
        session: SessionView,
    ) -> Verdict:
        size = sum(lit.size for lit in cmd.literals)
        replacement: Replace | None = None
        for index, rule in rules:
            action = rule.action
            if action == ALLOW:
                if rule.matches_allow(ops, size):
                    return replacement or PASS
                continue
            if not rule.matches_restricting(ops, size):
                continue
            if action is None:  # a rate
                user = session.user
                key = (index, "user", user.lower()) if (
                    rule.per == "user" and user is not None
                ) else (index, "client", self.info.client_host)  # fmt: skip
                wait = self.factory.store.take(key, rule.rate)  # type: ignore[arg-type]
                if wait:
                    return self._block(rule, cmd, "over its rate")
                continue
            if action == READ_ONLY:
                # (CLOSE expunges only a mailbox opened read-write: every SELECT that
                # matched a read-only rule went as EXAMINE)
                changes = ops[:1] if ops[0][0] == "CLOSE" else ops
                if any(op[0] not in READ_COMMANDS and rule.op_matches(op) for op in changes):
                    return self._block(rule, cmd, "would change something")
                if ops[0][0] == "SELECT" and rule.op_matches(ops[0]):
                    replacement = Replace(examine(cmd))
                    ops = (("EXAMINE", False, ops[0][2]), *ops[1:])
                continue
            return self._block(rule, cmd, "hidden" if action == HIDE else "denied")
        if self.factory.default_deny and cmd.name not in DEFAULT_EXEMPT:
            self.name = "policy/default"
            log.info("session %s: policy default: %s denied", self.info.id, cmd.full_name)
            return DEFAULT_DENIED
        return replacement or PASS

    def _block(self, rule: Rule, cmd: CommandView, why: str) -> Reject:
        self.name = "policy/" + rule.name
        log.info("session %s: policy rule %s: %s %s", self.info.id, rule.name, cmd.full_name, why)
        return Reject(rule.text, status="NO", code=rule.code)

    def _block_selects(self, cmd: CommandView) -> Reject:
        log.info("session %s: policy: too many SELECTs in flight", self.info.id)
        return Reject("too many commands in flight", status="NO", code="LIMIT")

    # ------------------------------------------------------------------ responses

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        self.name = "policy"
        if resp.tag is not None:
            if self._selecting:
                self._selecting.pop(resp.tag, None)
            return PASS
        name = resp.name
        if name not in _LIST_RESPONSES and name != "STATUS":
            return PASS
        mailbox = self._response_mailbox(resp)
        if mailbox is None:
            return PASS
        if name == "STATUS":
            return PASS if self._visible(("STATUS", False, mailbox), session, status=True) else DROP
        return PASS if self._visible(("LIST", False, mailbox), session, status=False) else DROP

    def _response_mailbox(self, resp: ResponseView) -> tuple[str, ...] | None:
        """The mailbox a LIST/LSUB/STATUS answer names (candidates); UNKNOWN when it
        cannot be read (too long: dropped by any rule that could hide it)."""
        if resp.oversize:
            return (UNKNOWN,)
        try:
            parsed = parse_response(resp.raw)
        except ParseError:
            return (UNKNOWN,)
        if not isinstance(parsed, DataResponse):
            return None
        args = parsed.args
        position = 0 if parsed.name == "STATUS" else 2
        if len(args) <= position:
            return (UNKNOWN,)
        token: Token = args[position]
        if isinstance(token, LiteralRef):
            return (UNKNOWN,)
        value = string_value(token)
        if value is None:
            return (UNKNOWN,)
        return candidates(value, self.factory.delimiter)

    def _visible(self, op: Op, session: SessionView, *, status: bool) -> bool:
        """Whether an answer naming op's mailbox may be shown: LIST answers hide what a
        hide rule hides (the first allow or hide rule that matches decides); STATUS answers
        what STATUS on that mailbox would be refused (deny, hide, default deny).  Nothing
        is counted against a rate."""
        ops = (op,)
        for _, rule in self._rules_for(op[0], session):
            action = rule.action
            if action == ALLOW:
                if rule.matches_allow(ops, 0):
                    return True
            elif (action == HIDE or (status and action == DENY)) and rule.matches_restricting(
                ops, 0
            ):
                return False
        return not (status and self.factory.default_deny)


def examine(cmd: CommandView) -> bytes:
    """SELECT as EXAMINE, same tag and arguments (literals inline, as the client sent them)."""
    head = len(cmd.tag) + 1
    end = head + len("SELECT")
    if cmd.raw[head:end].upper() != b"SELECT":
        raise ValueError("not a SELECT")
    return cmd.raw[:head] + b"EXAMINE" + cmd.raw[end:]


def _decided(rules: tuple[Rule, ...], default_deny: bool) -> frozenset[str] | None:
    """The commands a policy may decide about (the relay holds only those back); None:
    every command.  A mailbox-only rule decides the commands that name mailboxes (a
    command on the selected mailbox was decided when it was selected), unless an allow
    rule names commands (then SELECT may pass where FETCH must not)."""
    if default_deny:
        return None
    names: set[str] = set()
    allow_by_command = any(r.action == ALLOW and r.commands is not None for r in rules)
    for rule in rules:
        if rule.action == ALLOW:
            continue  # it refuses nothing; the rules after it decide what they name
        command_names = rule.command_names()
        if command_names is not None:
            names |= command_names
            continue
        if (
            rule.mailboxes is None
            or rule.size_over is not None
            or rule.action in (None, READ_ONLY)
            or allow_by_command
        ):
            return None
        names |= MAILBOX_POSITIONS.keys() | URL_COMMANDS | {"APPEND"}
    return frozenset(names)


# ----------------------------------------------------------------------------- maker


def make_policy(
    options: Mapping[str, Any], path: str, *, clock: Callable[[], float] = time.monotonic
) -> PolicyFactory:
    """The ``use = "policy"`` maker: options validated (errors name the key path)."""
    for key in options:
        if key not in _OPTIONS:
            known = ", ".join(sorted(_OPTIONS))
            raise ConfigError(f"{path}.{key}", f"unknown key (known: {known})")
    default = options.get("default", ALLOW)
    if default not in (ALLOW, DENY):
        raise ConfigError(f"{path}.default", f"expected one of allow, deny; got {_got(default)}")
    delimiter = options.get("delimiter", "/")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in "*%":
        raise ConfigError(f"{path}.delimiter", f"expected one character such as \"/\" or \".\"; "
                          f"got {_got(delimiter)}")  # fmt: skip
    max_buckets = options.get("max_buckets", DEFAULT_MAX_BUCKETS)
    if isinstance(max_buckets, bool) or not isinstance(max_buckets, int) or max_buckets < 1:
        raise ConfigError(
            f"{path}.max_buckets", f"expected a positive integer; got {_got(max_buckets)}"
        )
    tables = options.get("rules", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}.rules", "expected an array of tables ([[filters.rules]])")
    rules = tuple(parse_rule(t, f"{path}.rules[{i}]", i, delimiter) for i, t in enumerate(tables))
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{path}.rules[{i}].name", f"{_got(rule.name)} is used twice")
        seen.add(rule.name)
    return PolicyFactory(rules, default=default, delimiter=delimiter,
                         store=BucketStore(max_buckets, clock))  # fmt: skip


__all__ = ["PolicyFactory", "PolicyFilter", "examine", "make_policy"]
