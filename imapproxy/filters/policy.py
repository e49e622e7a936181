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
command; no arguments).  The transcript records the verdict with the filter's configured
name (``policy``; the chain's, not the rule's: see the README).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import trio

from ..logsafe import safe
from ..wire.errors import ParseError
from ..wire.parser import parse_response
from ..wire.tokens import DataResponse, LiteralRef, Token, string_value
from .api import (
    DROP,
    PASS,
    CommandView,
    Filter,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    Verdict,
)
from .policy_config import DEFAULT_MAX_BUCKETS, parse_options
from .policy_rules import (
    ALLOW,
    DENY,
    HIDE,
    K_ALLOW,
    K_BLOCK,
    K_RATE,
    K_READ_ONLY,
    NAMED,
    SEEN_FETCH,
    SELECTED,
    SUBTREE,
    UNKNOWN,
    URL_COMMANDS,
    URLS,
    Plan,
    Rule,
    candidates,
    canonical,
    command_urls,
    decided_commands,
    glob_reaches_below,
    named_mailboxes,
    op_shape,
    plan_for,
    sets_seen,
    url_mailboxes,
)
from .ratelimit import BucketStore

log = logging.getLogger("imapproxy.policy")

# Spared by default = "deny" (a session must be able to log in and out).
DEFAULT_EXEMPT = frozenset({"CAPABILITY", "NOOP", "LOGOUT", "STARTTLS", "LOGIN", "AUTHENTICATE"})
_LOGINS = frozenset({"LOGIN", "AUTHENTICATE"})
_LIST_RESPONSES = frozenset({"LIST", "LSUB", "XLIST"})
_COMPLETIONS = frozenset({"OK", "NO", "BAD"})
_SELECTS = frozenset({"SELECT", "EXAMINE"})
_MAX_SELECTING = 64  # SELECT/EXAMINE in flight at once, per session (pipelined)
_MAX_NAMES = 64  # command names remembered per session (clients choose them: bounded)
_MAX_HITS = 256  # mailbox names whose matching rules a session remembers
_NO_HITS: frozenset[int] = frozenset()
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
        self.rule_names = tuple(r.name for r in rules)  # (for the metrics' rule label)
        self.default_deny = default == DENY
        self.delimiter = delimiter
        self.store = store if store is not None else BucketStore(DEFAULT_MAX_BUCKETS)
        self.track_selected = any(r.mailboxes is not None for r in rules)
        self.sizes = any(r.size_over is not None for r in rules)
        # whether a FETCH that sets \Seen can be judged otherwise than any FETCH: only by a
        # rule that names STORE (a rule without command matches both alike)
        self.seen_matters = any(
            r.commands is not None and bool({"STORE", "UID STORE"} & r.commands) for r in rules
        )
        decided = decided_commands(rules, self.default_deny)
        # SELECT and EXAMINE are held too, to know which mailbox a pipelined command acts
        # on (held: a SELECT with a literal is seen whole, before anything after it)
        if self.track_selected and decided is not None:
            decided = decided | _SELECTS
        self.decided = decided
        self.delimiter_checked = False  # (once per process: see _check_delimiter)
        wants: set[str] = set()
        if self.track_selected:  # (LIST answers show the server's delimiter)
            wants |= _LIST_RESPONSES
        if self.default_deny or any(r.action in (DENY, HIDE) for r in rules):
            wants.add("STATUS")
        if self.track_selected:
            wants |= _COMPLETIONS
        self.wants_responses = frozenset(wants)

    def __call__(self, info: SessionInfo) -> PolicyFilter:
        return PolicyFilter(self, info)


class PolicyFilter(Filter):
    name = "policy"
    __slots__ = (
        "_hits", "_live", "_names", "_patterned", "_plans", "_selected_key", "_selected_names",
        "_selecting", "_session_rules", "_state", "factory", "info", "wants_commands",
        "wants_responses",
    )  # fmt: skip

    def __init__(self, factory: PolicyFactory, info: SessionInfo) -> None:
        self.factory = factory
        self.info = info
        self.wants_commands = factory.decided
        self.wants_responses = factory.wants_responses
        # (index, rule) of the rules that hold for this client and listener
        self._session_rules = tuple(
            (i, r) for i, r in enumerate(factory.rules) if r.applies_to_session(info)
        )
        self._patterned = tuple((i, r) for i, r in self._session_rules
                                if r.mailboxes is not None)  # fmt: skip
        self._state: tuple[str | None, bool] | None = None
        self._live: tuple[tuple[int, Rule], ...] = ()
        self._plans: dict[tuple[str, bool], Plan] = {}
        # mailbox name -> the indexes of the rules whose pattern matches it (bounded)
        self._hits: dict[str, frozenset[int]] = {}
        self._names: dict[bytes, tuple[str, ...]] = {}  # mailbox names decoded (bounded)
        self._selecting: dict[bytes, tuple[str, ...]] = {}  # SELECT/EXAMINE in flight
        self._selected_key: str | None = None
        self._selected_names: tuple[str, ...] = ()

    def decided_commands(self) -> frozenset[str] | None:
        return self.factory.decided

    # ------------------------------------------------------------------ state

    def _plan(self, name: str, uid: bool, session: SessionView) -> Plan:
        """The rules that may match command ``name`` in the session's present state."""
        state = (session.user, session.tls is not None)
        if state != self._state:
            self._state = state
            self._live = tuple(
                (i, r) for i, r in self._session_rules if r.applies_to_state(state[0], state[1])
            )
            self._plans = {}
        key = (name, uid)
        plan = self._plans.get(key)
        if plan is None:
            shape = ((name[1:], NAMED),) if name.startswith("\x00") else op_shape(name)
            plan = plan_for(self._live, shape, uid)
            if len(self._plans) < _MAX_NAMES:
                self._plans[key] = plan
        return plan

    def _hits_of(self, mailbox: str) -> frozenset[int]:
        hits = self._hits.get(mailbox)
        if hits is None:
            if mailbox is UNKNOWN:
                hits = frozenset(i for i, _ in self._patterned)
            elif mailbox.startswith(SUBTREE):
                below, d = mailbox[1:], self.factory.delimiter
                lower = below.lower()
                hits = frozenset(
                    i for i, r in self._patterned if any(
                        glob_reaches_below(g, lower if r.ignore_case else below, d)
                        for g in r.globs)
                )  # fmt: skip
            else:
                hits = frozenset(i for i, r in self._patterned
                                 if r.mailboxes.match(mailbox) is not None)  # type: ignore[union-attr]  # fmt: skip
            if len(self._hits) >= _MAX_HITS:
                self._hits.clear()
            self._hits[mailbox] = hits
        return hits

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
        if not cmd.complete and cmd.literals and cmd.literals[-1].inline:
            # the relay asks before a small literal comes: decided once the command is whole
            return PASS
        name = cmd.name
        factory = self.factory
        seen = name == "FETCH" and factory.seen_matters and sets_seen(cmd)
        plan = self._plan(SEEN_FETCH if seen else name, cmd.uid, session)
        named: tuple[str, ...] | None = None
        verdict: Verdict = PASS
        if plan or factory.default_deny:
            named = named_mailboxes(cmd, factory.delimiter, self._names)
            verdict = self._evaluate(cmd, plan, named, session)
        if factory.track_selected and name in _SELECTS and type(verdict) is not Reject:
            if named is None:
                named = named_mailboxes(cmd, factory.delimiter, self._names)
            if len(self._selecting) < _MAX_SELECTING:
                self._selecting[cmd.tag] = named
            else:  # (a client that pipelines this many SELECTs: refused, not forgotten)
                return self._block_selects(cmd)
        return verdict

    def _operands(
        self, src: int, named: tuple[str, ...], urls: tuple[str, ...], session: SessionView
    ) -> tuple[str, ...]:
        if src == NAMED:
            return named
        if src == SELECTED:
            return self._selected(session)
        return urls if src == URLS else ()

    def _source_hits(
        self, src: int, named: tuple[str, ...], urls: tuple[str, ...], session: SessionView
    ) -> frozenset[int]:
        """The rules whose pattern matches one of the mailboxes at ``src``."""
        boxes = self._operands(src, named, urls, session)
        if len(boxes) == 1:
            return self._hits_of(boxes[0])
        return frozenset().union(*(self._hits_of(m) for m in boxes))

    def _evaluate(
        self,
        cmd: CommandView | None,
        plan: Plan,
        named: tuple[str, ...],
        session: SessionView,
        *,
        answer: str | None = None,
    ) -> Verdict:
        """The verdict of the rules in ``plan`` on a command; or (``cmd`` None) on an
        ``answer`` naming the mailbox ``named``: then only allow, deny and hide rules
        count (only hide for a LIST answer), and nothing is counted or logged."""
        size = (
            sum(lit.size for lit in cmd.literals)
            if cmd is not None and cmd.literals and self.factory.sizes
            else 0
        )
        urls: tuple[str, ...] = ()
        if cmd is not None and (cmd.name == "APPEND" or cmd.name in URL_COMMANDS):
            raw_urls = command_urls(cmd)
            if raw_urls:
                sel = self._selected(session)
                d = self.factory.delimiter
                urls = tuple(m for u in raw_urls for m in url_mailboxes(u, d, sel))
        src_hits: dict[int, frozenset[int]] = {}
        positions = plan.unconditional
        if plan.by_source:
            found: list[int] = []
            for src, by_index in plan.by_source.items():
                if src == URLS and not urls:
                    src_hits[src] = _NO_HITS
                    continue
                hits = self._source_hits(src, named, urls, session)
                src_hits[src] = hits
                for idx in hits:
                    at = by_index.get(idx)
                    if at is not None:
                        found.extend(at)
            if found:
                positions = sorted({*positions, *found})
        entries = plan.entries
        replacement: Replace | None = None
        for pos in positions:
            index, rule, kind, srcs, always, select = entries[pos]
            if answer is not None and (
                kind in (K_RATE, K_READ_ONLY)
                or (kind == K_BLOCK and answer != "STATUS" and rule.action != HIDE)
            ):  # fmt: skip
                continue
            if rule.size_over is not None and size <= rule.size_over:
                continue
            if kind == K_ALLOW:
                if rule.mailboxes is not None:
                    boxes = [m for src in srcs for m in self._operands(src, named, urls, session)
                             if not m.startswith(SUBTREE)]  # fmt: skip
                    if not boxes or not all(
                        m is not UNKNOWN and index in self._hits_of(m) for m in boxes
                    ):
                        continue
                return replacement or PASS
            if rule.mailboxes is None:
                matched = always or bool(urls)
            else:
                matched = False
                for src in srcs:
                    if index in src_hits[src]:
                        matched = True
                        break
            if kind == K_READ_ONLY:
                if matched:
                    return self._block(rule, cmd, "would change something")
                if select and (rule.mailboxes is None or index in src_hits[NAMED]):
                    assert cmd is not None
                    replacement = Replace(examine(cmd), rule=rule.name)
                    log.debug("session %s: policy rule %s: SELECT sent as EXAMINE",
                              self.info.id, rule.name)  # fmt: skip
                continue
            if not matched:
                continue
            if kind == K_RATE:
                assert cmd is not None
                user = session.user
                key = (index, "user", user.lower()) if (
                    rule.per == "user" and user is not None
                ) else (index, "client", self.info.client_host)  # fmt: skip
                if self.factory.store.take(key, rule.rate):  # type: ignore[arg-type]
                    refused = self._block(rule, cmd, "over its rate")
                    if rule.delay and cmd.name in _LOGINS:
                        return self._delay_then(refused, rule.delay)  # type: ignore[return-value]
                    return refused
                continue
            return self._block(rule, cmd, "hidden" if rule.action == HIDE else "denied")
        if self.factory.default_deny and (
            answer == "STATUS" if cmd is None else cmd.name not in DEFAULT_EXEMPT
        ):
            if cmd is not None:
                log.info("session %s: policy default: %s denied", self.info.id, cmd.full_name)
            return DEFAULT_DENIED
        return replacement or PASS

    async def _delay_then(self, verdict: Reject, seconds: float) -> Reject:
        """A refused login is answered only after a while (it slows a guesser down; the
        session's later commands wait too).  Awaited by the relay under
        ``Timeouts.filter_hook``: keep ``delay`` below it."""
        await trio.sleep(seconds)
        return verdict

    def _block(self, rule: Rule, cmd: CommandView | None, why: str) -> Reject:
        if cmd is not None:
            log.info("session %s: policy rule %s: %s %s", self.info.id, rule.name,
                     cmd.full_name, why)  # fmt: skip
        return Reject(rule.text, status="NO", code=rule.code, rule=rule.name)

    def _block_selects(self, cmd: CommandView) -> Reject:
        log.info("session %s: policy: too many SELECTs in flight", self.info.id)
        return Reject("too many commands in flight", status="NO", code="LIMIT")

    # ------------------------------------------------------------------ responses

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
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
        if name != "STATUS" and not self.factory.delimiter_checked:
            self._check_delimiter(resp)
        # shown unless STATUS on it would be refused (STATUS answers) or unless it is
        # hidden (LIST answers: the first allow or hide rule that matches decides)
        plan = self._plan("\x00" + ("STATUS" if name == "STATUS" else "LIST"), False, session)
        verdict = self._evaluate(None, plan, mailbox, session, answer=name)
        return DROP if type(verdict) is Reject else PASS

    def _check_delimiter(self, resp: ResponseView) -> None:
        """Warn once (per process) when the server's hierarchy delimiter is not the one
        the policy was configured with: its patterns would not mean what they say."""
        try:
            parsed = parse_response(resp.raw)
        except ParseError:
            return
        args = parsed.args if isinstance(parsed, DataResponse) else ()
        if len(args) < 2:
            return
        sep = string_value(args[1])
        if sep is None or not sep:
            return  # (NIL: a flat namespace)
        self.factory.delimiter_checked = True
        if sep.decode("utf-8", "replace") != self.factory.delimiter:
            log.warning(
                'policy: the server\'s hierarchy delimiter is "%s", the policy says "%s": '
                "set delimiter in the policy's configuration",
                safe(sep),
                safe(self.factory.delimiter),
            )

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


def examine(cmd: CommandView) -> bytes:
    """SELECT as EXAMINE, same tag and arguments (literals inline, as the client sent them)."""
    head = len(cmd.tag) + 1
    end = head + len("SELECT")
    if cmd.raw[head:end].upper() != b"SELECT":
        raise ValueError("not a SELECT")
    return cmd.raw[:head] + b"EXAMINE" + cmd.raw[end:]


# ----------------------------------------------------------------------------- maker


def make_policy(
    options: Mapping[str, Any], path: str, *, clock: Callable[[], float] = time.monotonic
) -> PolicyFactory:
    """The ``use = "policy"`` maker: options validated (errors name the key path); the
    rate buckets are made here, once per configured policy, with ``clock``."""
    parsed = parse_options(options, path)
    return PolicyFactory(parsed.rules, default=parsed.default, delimiter=parsed.delimiter,
                         store=BucketStore(parsed.max_buckets, clock))  # fmt: skip


__all__ = ["PolicyFactory", "PolicyFilter", "examine", "make_policy"]
