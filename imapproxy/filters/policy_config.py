"""The policy filter's configuration: every option and rule checked, each mistake one
:class:`~.api.ConfigError` naming its key path
(``filters[1].rules[0].action: expected one of allow, deny, read-only, hide; got "dney"``)."""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api import ConfigError
from .policy_rules import (
    ACTIONS,
    ALLOW,
    DENY,
    HIDE,
    READ_ONLY,
    Rule,
    canonical,
    compile_mailboxes,
    compile_users,
)
from .ratelimit import parse_rate

OPTIONS = frozenset({"default", "rules", "delimiter", "max_buckets", "mailbox_case"})
DEFAULT_MAX_BUCKETS = 100_000  # rate buckets kept process-wide (~200 B each: ~20 MB)


@dataclass(frozen=True, slots=True)
class PolicyOptions:
    rules: tuple[Rule, ...]
    default: str = ALLOW
    delimiter: str = "/"
    max_buckets: int = DEFAULT_MAX_BUCKETS


def parse_options(options: Mapping[str, Any], path: str) -> PolicyOptions:
    """A ``[[filters]]`` table of ``use = "policy"`` (less ``use``, ``name``, ``on_error``)."""
    for key in options:
        if key not in OPTIONS:
            known = ", ".join(sorted(OPTIONS))
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
    mailbox_case = options.get("mailbox_case", "sensitive")
    if mailbox_case not in ("sensitive", "insensitive"):
        raise ConfigError(
            f"{path}.mailbox_case",
            f"expected one of sensitive, insensitive; got {_got(mailbox_case)}",
        )
    tables = options.get("rules", [])
    if not isinstance(tables, list):
        raise ConfigError(f"{path}.rules", "expected an array of tables ([[filters.rules]])")
    ignore_case = mailbox_case == "insensitive"
    rules = tuple(
        parse_rule(t, f"{path}.rules[{i}]", i, delimiter, ignore_case=ignore_case)
        for i, t in enumerate(tables)
    )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{path}.rules[{i}].name", f"{_got(rule.name)} is used twice")
        seen.add(rule.name)
    return PolicyOptions(rules, default, delimiter, max_buckets)


# ----------------------------------------------------------------------------- parsing

_RULE_KEYS = frozenset({"name", "match", "action", "code", "text", "rate", "per", "delay"})
_MATCH_KEYS = frozenset({"command", "user", "client", "tls", "listener", "mailbox", "size_over"})
_CODE = re.compile(r"[A-Za-z][A-Za-z0-9.-]*\Z")
_COMMAND = re.compile(r"(?:UID )?[A-Z][A-Z0-9.-]*\Z")
DEFAULT_TEXT = {
    DENY: "not allowed",
    HIDE: "Mailbox doesn't exist",
    READ_ONLY: "read-only access",
    "rate": "too many commands, slow down",
}
DEFAULT_CODE = {DENY: "NOPERM", HIDE: "NONEXISTENT", READ_ONLY: "NOPERM", "rate": "LIMIT"}
MAX_DELAY = 60.0  # seconds; a refused login waits at most this (and the filter hook timeout)


def _got(value: Any) -> str:
    """A configured value as the error shows it (as in TOML: strings in double quotes)."""
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


def _strings(value: Any, path: str, what: str) -> list[str]:
    """A string or a non-empty list of strings."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x for x in items):
        raise ConfigError(path, f"expected {what} or a non-empty list of them; got {_got(value)}")
    return items


def _unknown(table: Mapping[str, Any], known: frozenset[str], path: str) -> None:
    for key in table:
        if key not in known:
            raise ConfigError(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(known))})")


def parse_rule(
    table: Any, path: str, index: int, delimiter: str, *, ignore_case: bool = False
) -> Rule:
    if not isinstance(table, Mapping):
        raise ConfigError(path, f"expected a table ([[filters.rules]]); got {_got(table)}")
    _unknown(table, _RULE_KEYS, path)
    name = table.get("name", f"rules[{index}]")
    if not isinstance(name, str) or not name or not name.isprintable():
        raise ConfigError(
            f"{path}.name", f"expected a non-empty printable string; got {_got(name)}"
        )
    match = table.get("match", {})
    if not isinstance(match, Mapping):
        raise ConfigError(
            f"{path}.match", f"expected a table ({{ user = ... }}); got {_got(match)}"
        )
    _unknown(match, _MATCH_KEYS, f"{path}.match")
    mpath = f"{path}.match"

    commands: frozenset[str] | None = None
    if "command" in match:
        given = _strings(match["command"], f"{mpath}.command", "a command name")
        names = [" ".join(c.upper().split()) for c in given]
        for c in names:
            if not _COMMAND.match(c):
                raise ConfigError(f"{mpath}.command", f"not a command name: {_got(c)}")
        commands = frozenset(names)
    users = None
    if "user" in match:
        users = compile_users(_strings(match["user"], f"{mpath}.user", "a user glob"))
    clients = None
    if "client" in match:
        nets = []
        for c in _strings(match["client"], f"{mpath}.client", "a CIDR"):
            try:
                nets.append(ipaddress.ip_network(c, strict=False))
            except ValueError:
                raise ConfigError(f"{mpath}.client",
                                  f"not an address or CIDR: {_got(c)}") from None  # fmt: skip
        clients = tuple(nets)
    tls = match.get("tls")
    if tls is not None and not isinstance(tls, bool):
        raise ConfigError(f"{mpath}.tls", f"expected true or false; got {_got(tls)}")
    listeners = None
    if "listener" in match:
        listeners = frozenset(_strings(match["listener"], f"{mpath}.listener",
                                       "a listener name or address"))  # fmt: skip
    mailboxes = None
    globs: tuple[str, ...] = ()
    if "mailbox" in match:
        given = _strings(match["mailbox"], f"{mpath}.mailbox", "a mailbox glob")
        globs = tuple(canonical(g, delimiter) for g in given)
        if ignore_case:
            globs = tuple(g.lower() for g in globs)
        mailboxes = compile_mailboxes(globs, delimiter, ignore_case=ignore_case)
    size_over = match.get("size_over")
    if size_over is not None and (
        isinstance(size_over, bool) or not isinstance(size_over, int) or size_over < 0
    ):
        raise ConfigError(
            f"{mpath}.size_over", f"expected a number of bytes; got {_got(size_over)}"
        )

    rate = None
    if "rate" in table:
        if not isinstance(table["rate"], str):
            raise ConfigError(
                f"{path}.rate", f'expected a string like "20/s"; got {_got(table["rate"])}'
            )
        try:
            rate = parse_rate(table["rate"])
        except ValueError as exc:
            raise ConfigError(f"{path}.rate", f"{exc}; got {_got(table['rate'])}") from None
    action = table.get("action")
    if action is None and rate is None:
        raise ConfigError(f"{path}.action", f"required (one of {', '.join(ACTIONS)}), or a rate")
    if action is not None and action not in ACTIONS:
        raise ConfigError(
            f"{path}.action", f"expected one of {', '.join(ACTIONS)}; got {_got(action)}"
        )
    if action is not None and rate is not None:
        raise ConfigError(f"{path}.rate", "a rule has an action or a rate, not both")
    if action == HIDE and (mailboxes is None or commands is not None or size_over is not None):
        raise ConfigError(
            f"{path}.match", "a hide rule names mailboxes (match.mailbox) and no command or size"
        )
    for key in ("per", "delay"):
        if key in table and rate is None:
            raise ConfigError(f"{path}.{key}", "only for a rule with a rate")
    kind = action or "rate"
    code = table.get("code", DEFAULT_CODE.get(kind, "NOPERM"))
    if not isinstance(code, str) or not _CODE.match(code):
        raise ConfigError(
            f"{path}.code", f"expected a response code such as NOPERM; got {_got(code)}"
        )
    text = table.get("text", DEFAULT_TEXT.get(kind, "not allowed"))
    if not isinstance(text, str) or not text.strip() or not text.isprintable():
        raise ConfigError(f"{path}.text", f"expected a printable one-line text; got {_got(text)}")
    logins = commands is not None and all(c in ("LOGIN", "AUTHENTICATE") for c in commands)
    per = table.get("per", "client" if logins else "user")
    if per not in ("user", "client"):
        raise ConfigError(f"{path}.per", f"expected one of user, client; got {_got(per)}")
    delay = table.get("delay", 1.0 if logins else 0.0)
    if (
        isinstance(delay, bool)
        or not isinstance(delay, (int, float))
        or not (0 <= delay <= MAX_DELAY)
    ):
        raise ConfigError(
            f"{path}.delay", f"expected seconds from 0 to {MAX_DELAY:g}; got {_got(delay)}"
        )
    return Rule(name, commands, users, clients, tls, listeners, mailboxes, size_over, action,
                code.upper(), " ".join(text.split()), rate, per, float(delay),
                globs, ignore_case)  # fmt: skip
