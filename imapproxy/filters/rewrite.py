"""``use = "rewrite"``: rewrite what client and server see, without either noticing.

Three independent parts, each optional::

    [[filters]]
    use = "rewrite"
    delimiter = "."                  # the server's hierarchy delimiter (default: learnt)
    [filters.capabilities]
    add = ["ID"]
    remove = ["QUOTA", "ACL", "X-*"] # a trailing * matches any ending
    [filters.users]
    add_domain = "example.com"       # or strip_domain = true, or table = { alice = "a.smith" },
                                     # or regex = { match = "(.*)@old", replace = "\\1@new" }
    [[filters.mailboxes]]
    client = "Archive"               # prefix: Archive/... <-> INBOX.Archive/...
    server = "INBOX.Archive"
    [[filters.mailboxes]]
    client = "Sent"                  # exact: that one mailbox
    server = "Sent Items"
    exact = true

* Capabilities: the lists are changed wherever they appear (greeting, ``* CAPABILITY``,
  ``OK [CAPABILITY ...]``).  The relay's capability stage runs first for commands and so
  last for responses: what it decides (STARTTLS, LOGINDISABLED, no COMPRESS, no
  ``AUTH=...-PLUS``) always wins; adding or removing those is a configuration error.
* Users: :mod:`.rewrite_users`.  Mailboxes: :mod:`.rewrite_mailboxes`,
  :mod:`.rewrite_names`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from ..capabilities import listed_capabilities, with_code_list
from ..logsafe import safe
from ..wire.events import FrameKind
from .api import (
    PASS,
    ClientLineView,
    CommandView,
    ConfigError,
    Filter,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    Verdict,
)
from .registry import check_options
from .rewrite_mailboxes import MAILBOX_COMMANDS, MAILBOX_RESPONSES, MailboxRewriter
from .rewrite_names import WILDCARDS, MailboxMap, MailboxRule
from .rewrite_users import MAPPABLE_MECHANISMS, LoginRewriter, UserMap

log = logging.getLogger("imapproxy.session")
_CAPABILITY = re.compile(r"[A-Za-z0-9][!-~]*\Z")
_CODE_LIST = re.compile(rb"\[CAPABILITY( [^\]\r\n]*)?\]", re.IGNORECASE)
_LOGINS = frozenset({"LOGIN", "AUTHENTICATE"})
_COMPLETIONS = frozenset({"OK", "NO", "BAD"})


class CapabilityEdit:
    """Remove, then add (each name once, case-insensitively, at the end of the list)."""

    __slots__ = ("add", "auth", "remove")

    def __init__(self, add: list[str], remove: list[str], *, auth: frozenset[str] | None) -> None:
        self.add = [a.encode("ascii") for a in add]
        self.remove = [r.upper().encode("ascii") for r in remove]
        self.auth = auth  # the SASL mechanisms that may be offered (None: all)

    def _removed(self, cap: bytes) -> bool:
        upper = cap.upper()
        if (
            self.auth is not None
            and upper.startswith(b"AUTH=")
            and upper[5:].decode("ascii", "replace") not in self.auth
        ):
            return True
        return any(
            upper == r or (r.endswith(b"*") and upper.startswith(r[:-1])) for r in self.remove
        )

    def with_auth(self, auth: frozenset[str]) -> CapabilityEdit:
        edit = CapabilityEdit([], [], auth=auth)
        edit.add, edit.remove = self.add, self.remove
        return edit

    def apply(self, caps: list[bytes]) -> list[bytes]:
        out = [c for c in caps if not self._removed(c)]
        present = {c.upper() for c in out}
        for a in self.add:
            if a.upper() not in present:
                out.append(a)
                present.add(a.upper())
        return out

    def response(self, resp: ResponseView) -> Verdict:
        raw = resp.raw
        if resp.kind is FrameKind.DATA:
            if resp.name != "CAPABILITY" or resp.oversize:
                return PASS
            caps = listed_capabilities(raw)
            new = self.apply(caps)
            if new == caps:
                return PASS
            body = raw.rstrip(b"\r\n")
            head = raw[: len(b"* CAPABILITY")]
            return Replace(head + b"".join(b" " + c for c in new) + raw[len(body) :])
        if resp.kind is FrameKind.STATUS or resp.kind is FrameKind.GREETING:
            m = _CODE_LIST.search(raw) if b"[" in raw else None
            if m is None:
                return PASS
            caps = (m.group(1) or b"").split()
            new = self.apply(caps)
            return PASS if new == caps else Replace(with_code_list(raw, new))
        return PASS


class RewriteConfig:
    """The validated options, shared by every session's filter."""

    __slots__ = ("capabilities", "delimiter", "mailboxes", "users")

    def __init__(
        self,
        *,
        capabilities: CapabilityEdit | None = None,
        users: UserMap | None = None,
        mailboxes: MailboxMap | None = None,
        delimiter: str | None = None,
    ) -> None:
        self.users = users
        self.mailboxes = mailboxes if mailboxes else None
        self.delimiter = delimiter
        if users is not None:  # other mechanisms cannot carry a mapped name
            capabilities = (capabilities or CapabilityEdit([], [], auth=None)).with_auth(
                MAPPABLE_MECHANISMS
            )
        self.capabilities = capabilities


class RewriteFilter(Filter):
    __slots__ = ("config", "logins", "mailboxes", "wants_codes", "wants_commands",
                 "wants_responses")  # fmt: skip

    name = "rewrite"

    def __init__(self, config: RewriteConfig) -> None:
        self.config = config
        self.logins = LoginRewriter(config.users) if config.users is not None else None
        self.mailboxes = (
            MailboxRewriter(config.mailboxes, config.delimiter)
            if config.mailboxes is not None
            else None
        )
        commands: set[str] = set()
        responses: set[str] = set()
        if self.logins is not None:
            commands |= _LOGINS
            responses |= _COMPLETIONS
        if self.mailboxes is not None:
            commands |= MAILBOX_COMMANDS
            responses |= MAILBOX_RESPONSES | _COMPLETIONS
        if config.capabilities is not None:
            responses.add("CAPABILITY")
        self.wants_commands = frozenset(commands)
        self.wants_responses = frozenset(responses)
        self.wants_codes = frozenset({"CAPABILITY"} if config.capabilities else ())

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.name in _LOGINS:
            return PASS if self.logins is None else self.logins.command(cmd, session)
        if self.mailboxes is not None and cmd.name in MAILBOX_COMMANDS:
            return self.mailboxes.command(cmd, session)
        return PASS

    def client_line(self, line: ClientLineView, session: SessionView) -> Verdict:
        return PASS if self.logins is None else self.logins.client_line(line, session)

    def authenticated(self, session: SessionView) -> None:
        if session.upstream_user is not None and session.upstream_user != session.user:
            log.info(
                "session %s: user %s is %s upstream",
                session.info.id,
                safe(session.user),
                safe(session.upstream_user),
            )

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        if resp.tag is not None and resp.kind is FrameKind.STATUS:
            if self.mailboxes is not None:
                self.mailboxes.completed(resp.tag)
            if self.logins is not None:
                self.logins.completed(resp.tag, resp.name, session)
        if resp.kind is FrameKind.DATA and resp.name != "CAPABILITY":
            if self.mailboxes is None:
                return PASS
            return self.mailboxes.response(resp, session)
        caps = self.config.capabilities
        return PASS if caps is None else caps.response(resp)


class RewriteFactory:
    __slots__ = ("config",)

    def __init__(self, config: RewriteConfig) -> None:
        self.config = config

    def __call__(self, info: SessionInfo) -> RewriteFilter:
        return RewriteFilter(self.config)


# ----------------------------------------------------------------------------- options


def _relay_owned(cap: str) -> bool:
    """What the relay's capability stage decides: a rewrite cannot change it."""
    upper = cap.upper()
    return (
        upper in ("STARTTLS", "LOGINDISABLED")
        or upper.startswith("COMPRESS")
        or (upper.startswith("AUTH=") and upper.endswith("-PLUS"))
    )


def make_rewrite(options: Mapping[str, Any], path: str) -> RewriteFactory:
    """The ``rewrite`` filter's maker: options validated, every mistake naming its key."""
    check_options(
        options, path, {"capabilities": dict, "users": dict, "mailboxes": list, "delimiter": str}
    )
    delimiter = options.get("delimiter")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in WILDCARDS + '"\\'):
        raise ConfigError(f"{path}.delimiter", f"expected one character; got {delimiter!r}")
    caps = options.get("capabilities")
    users = options.get("users")
    boxes = options.get("mailboxes")
    config = RewriteConfig(
        capabilities=_capabilities(caps, f"{path}.capabilities") if caps is not None else None,
        users=_users(users, f"{path}.users") if users is not None else None,
        mailboxes=_mailboxes(boxes, f"{path}.mailboxes", delimiter) if boxes is not None else None,
        delimiter=delimiter,
    )
    return RewriteFactory(config)


def _capabilities(options: Mapping[str, Any], path: str) -> CapabilityEdit:
    check_options(options, path, {"add": list, "remove": list})
    lists: dict[str, list[str]] = {}
    for key in ("add", "remove"):
        values = options.get(key, [])
        for i, value in enumerate(values):
            where = f"{path}.{key}[{i}]"
            ok = isinstance(value, str) and _CAPABILITY.match(value) and "]" not in value
            if not ok:
                raise ConfigError(where, f"expected a capability name; got {value!r}")
            if key == "add" and "*" in value:
                raise ConfigError(where, "a capability to add cannot hold '*'")
            if _relay_owned(value.rstrip("*")):
                raise ConfigError(
                    where,
                    f"{value} is decided by the proxy itself (STARTTLS, LOGINDISABLED, "
                    "COMPRESS, AUTH=...-PLUS), not by a rewrite",
                )
        lists[key] = list(values)
    return CapabilityEdit(lists["add"], lists["remove"], auth=None)


def _users(options: Mapping[str, Any], path: str) -> UserMap:
    check_options(
        options, path, {"add_domain": str, "strip_domain": bool, "table": dict, "regex": dict}
    )
    given = [k for k in ("add_domain", "strip_domain", "table", "regex") if k in options]
    if len(given) != 1:
        raise ConfigError(
            path,
            "expected exactly one of add_domain, strip_domain, table, regex; got "
            + (", ".join(given) or "none"),
        )
    key = given[0]
    where = f"{path}.{key}"
    value = options[key]
    if key == "add_domain":
        if not value or any(c in value for c in '@ \t\r\n\0"\\'):
            raise ConfigError(where, f"expected a domain such as example.com; got {value!r}")
        return UserMap(add_domain=value)
    if key == "strip_domain":
        if value is not True:
            raise ConfigError(where, "expected true (leave it out to keep domains)")
        return UserMap(strip_domain=True)
    if key == "table":
        for name, mapped in value.items():
            if not isinstance(mapped, str) or not mapped or not _name_ok(mapped):
                raise ConfigError(f"{where}.{name}", f"expected a user name; got {mapped!r}")
        return UserMap(table=value)
    check_options(value, where, {"match": str, "replace": str})
    for part in ("match", "replace"):
        if part not in value:
            raise ConfigError(f"{where}.{part}", "required")
    try:
        pattern = re.compile(value["match"])
    except re.error as exc:
        raise ConfigError(f"{where}.match", f"not a valid regular expression: {exc}") from None
    _check_template(value["replace"], pattern, f"{where}.replace")
    return UserMap(regex=pattern, replace=value["replace"])


def _check_template(template: str, pattern: re.Pattern[str], where: str) -> None:
    """The replacement's escapes and group references, checked now (Python checks them
    only at the first match: a login would fail instead of the start-up)."""
    names = {index: name for name, index in pattern.groupindex.items()}
    groups = "".join(
        f"(?P<{names[i]}>)" if i in names else "()" for i in range(1, pattern.groups + 1)
    )
    dummy = re.compile(groups).fullmatch("")
    assert dummy is not None
    try:
        dummy.expand(template)
    except (re.error, IndexError) as exc:
        raise ConfigError(where, f"not a valid replacement: {exc}") from None


def _name_ok(name: str) -> bool:
    return not any(c in name for c in "\r\n\0")


def _mailboxes(rules: list[Any], path: str, delimiter: str | None) -> MailboxMap:
    out: list[MailboxRule] = []
    clients: dict[str, int] = {}
    servers: dict[str, int] = {}
    for i, table in enumerate(rules):
        where = f"{path}[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(where, "expected a table ([[filters.mailboxes]])")
        check_options(table, where, {"client": str, "server": str, "exact": bool})
        names = {}
        for side in ("client", "server"):
            name = table.get(side)
            if name is None:
                raise ConfigError(f"{where}.{side}", "required: a mailbox name")
            problem = _bad_name(name, delimiter)
            if problem:
                raise ConfigError(f"{where}.{side}", f"{problem}; got {name!r}")
            names[side] = name
        if names["client"] == names["server"]:
            raise ConfigError(where, "client and server are the same name")
        for side, seen in (("client", clients), ("server", servers)):
            if names[side] in seen:
                raise ConfigError(
                    f"{where}.{side}",
                    f"{names[side]!r} is mapped twice (also {path}[{seen[names[side]]}])",
                )
            seen[names[side]] = i
        out.append(MailboxRule(names["client"], names["server"], bool(table.get("exact", False))))
    return MailboxMap(out)


def _bad_name(name: str, delimiter: str | None) -> str | None:
    if not name:
        return "expected a mailbox name"
    if name.upper() == "INBOX":
        return "INBOX itself is never renamed"
    if any(c in name for c in WILDCARDS):
        return "a mailbox name cannot hold * or %"
    if not _name_ok(name):
        return "a mailbox name cannot hold CR, LF or NUL"
    if delimiter is not None and (name.endswith(delimiter) or name.startswith(delimiter)):
        return f"a mailbox name cannot begin or end with the delimiter {delimiter!r}"
    return None
