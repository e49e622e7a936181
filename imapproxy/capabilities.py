"""Capability mediation: what the client is told the proxy-plus-server can do.

Capabilities reach the client three ways (RFC 9051 §7.2.2, §7.1): in the greeting's
``[CAPABILITY ...]`` code, in ``* CAPABILITY`` data, and in a tagged ``OK [CAPABILITY ...]``
(typically after login).  All three are rewritten by the same rules, changing only the list
itself and keeping every other byte of the response:

* ``STARTTLS`` is advertised exactly when the proxy offers it on this client connection
  (plain listener with a certificate, TLS not yet up) - never the upstream's own;
* ``LOGINDISABLED`` is added on a plain connection when TLS is required before login, and
  then ``AUTH=`` mechanisms are withheld too (RFC 3501 §6.2.3: login is unavailable);
* ``COMPRESS=...`` is removed: the proxy cannot inspect compressed traffic (RFC 4978);
* ``AUTH=...-PLUS`` (SASL channel binding) is removed: the client's TLS channel ends at the
  proxy, so a binding to it could never verify upstream.

Everything else, unknown extensions included, passes unchanged and in order.  That includes
``LITERAL+``/``LITERAL-``: the relay sends every non-synchronising literal on as a
synchronising one, so the server decides visibly whether it reads each literal (see
``imapproxy.wire.decoder``, ``nonsync_as_sync``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .wire.events import FrameKind

_DATA_LIST = re.compile(rb"\* CAPABILITY( [^\r\n]*)?(?=\r?\n)", re.IGNORECASE)
_CODE_LIST = re.compile(rb"\[CAPABILITY( [^\]\r\n]*)?\]", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class CapabilityPolicy:
    offer_starttls: bool = False
    login_disabled: bool = False


def mediate_list(caps: list[bytes], policy: CapabilityPolicy) -> list[bytes]:
    out: list[bytes] = []
    for cap in caps:
        upper = cap.upper()
        if upper.startswith(b"COMPRESS="):
            continue
        if upper == b"STARTTLS" and not policy.offer_starttls:
            continue
        if upper.startswith(b"AUTH=") and (upper.endswith(b"-PLUS") or policy.login_disabled):
            continue
        out.append(cap)
    present = {c.upper() for c in out}
    if policy.offer_starttls and b"STARTTLS" not in present:
        out.append(b"STARTTLS")
    if policy.login_disabled and b"LOGINDISABLED" not in present:
        out.append(b"LOGINDISABLED")
    return out


def mediate_raw(kind: FrameKind, name: str, raw: bytes, policy: CapabilityPolicy) -> bytes | None:
    """New bytes for a whole response that carries capabilities and needs changing."""
    if kind is FrameKind.DATA:
        if name != "CAPABILITY":
            return None
        pattern = _DATA_LIST
    elif kind is FrameKind.STATUS or kind is FrameKind.GREETING:
        if b"[" not in raw:
            return None
        pattern = _CODE_LIST
    else:
        return None
    m = pattern.search(raw)
    if m is None:
        return None
    caps = (m.group(1) or b"").split()
    new = mediate_list(caps, policy)
    if new == caps:
        return None
    return _replace_list(raw, m, new)


def listed_capabilities(raw: bytes) -> list[bytes]:
    """The capabilities of a ``* CAPABILITY`` line, as the server spelt them."""
    m = _DATA_LIST.match(raw)
    return (m.group(1) or b"").split() if m else []


def with_code_list(raw: bytes, caps: list[bytes]) -> bytes:
    """``raw`` with the list in its ``[CAPABILITY ...]`` code replaced (unchanged if none)."""
    m = _CODE_LIST.search(raw)
    return raw if m is None else _replace_list(raw, m, caps)


def _replace_list(raw: bytes, m: re.Match[bytes], caps: list[bytes]) -> bytes:
    """``raw`` with the list matched by _DATA_LIST/_CODE_LIST (group 1) replaced; every
    other byte stays.  An empty list is inserted where it would stand."""
    if m.group(1) is not None:
        start, end = m.span(1)
    else:  # "* CAPABILITY" at the line end, or "[CAPABILITY]" before its "]"
        start = end = m.end() - 1 if m.group().endswith(b"]") else m.end()
    return raw[:start] + b"".join(b" " + c for c in caps) + raw[end:]
