"""The capability stage: what the client is told the proxy-plus-server can do, and the
logins refused until TLS.  A built-in filter, always first in the chain, written against
the public API (the rules themselves are in :mod:`imapproxy.capabilities`).

* Capability lists are mediated wherever they appear (greeting, ``* CAPABILITY``,
  ``OK [CAPABILITY ...]``): STARTTLS only where this connection can still do it,
  ``COMPRESS=`` and ``AUTH=...-PLUS`` never, ``LOGINDISABLED`` (and no ``AUTH=``) while a
  login would be refused.
* With ``require_tls_for_login``, LOGIN and AUTHENTICATE on a connection without TLS are
  refused ``NO [PRIVACYREQUIRED]`` and never reach the server.
* COMPRESS is refused ``NO [CANNOT]``: compressed traffic cannot be inspected.

STARTTLS itself is the relay's (it switches the stream); it offers STARTTLS under the same
rule as :meth:`CapabilityFilter.offers_starttls`.
"""

from __future__ import annotations

import logging

from ..capabilities import CapabilityPolicy, mediate_raw
from ..wire.events import FrameKind
from .api import (
    PASS,
    CommandView,
    Filter,
    Phase,
    Reject,
    Replace,
    ResponseView,
    SessionInfo,
    SessionView,
    Verdict,
)

log = logging.getLogger("imapproxy.session")
_DECIDED = frozenset({"COMPRESS"})
_DECIDED_TLS = frozenset({"COMPRESS", "LOGIN", "AUTHENTICATE"})
TLS_REQUIRED = Reject("Use STARTTLS before logging in", status="NO", code="PRIVACYREQUIRED")
NO_COMPRESS = Reject("COMPRESS is not available through this proxy", status="NO", code="CANNOT")


class CapabilityFilter(Filter):
    __slots__ = ("_logins", "info", "require_tls_for_login")

    name = "capabilities"
    wants_commands = frozenset({"LOGIN", "AUTHENTICATE", "COMPRESS"})
    wants_responses = frozenset({"CAPABILITY"})
    wants_codes = frozenset({"CAPABILITY"})  # greetings and status responses

    def __init__(self, info: SessionInfo, *, require_tls_for_login: bool) -> None:
        self.info = info
        self.require_tls_for_login = require_tls_for_login
        self._logins: set[bytes] = set()  # tags of logins in progress

    def decided_commands(self) -> frozenset[str]:
        # Logins are only watched (for STARTTLS's rule) unless they may be refused: then
        # they are held back until whole, so that nothing of one reaches the server.
        return _DECIDED_TLS if self.require_tls_for_login else _DECIDED

    def login_disabled(self, session: SessionView) -> bool:
        return self.require_tls_for_login and session.tls is None

    def offers_starttls(self, session: SessionView) -> bool:
        return (
            self.info.starttls
            and session.tls is None
            and session.phase is Phase.NOT_AUTHENTICATED
            # with a login in progress the capabilities the server sends now are the
            # post-login ones (STARTTLS will not be possible any more)
            and not self._logins
        )

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.uid:
            return PASS
        if cmd.name == "COMPRESS":
            return NO_COMPRESS
        if self.login_disabled(session):
            return TLS_REQUIRED
        self._logins.add(cmd.tag)
        return PASS

    def response(self, resp: ResponseView, session: SessionView) -> Verdict:
        if resp.tag is not None:
            self._logins.discard(resp.tag)
        if resp.oversize and resp.kind is FrameKind.DATA:
            # A * CAPABILITY list longer than the line limit is relayed in pieces, as it
            # is: logged.  The proxy still answers STARTTLS and refuses COMPRESS (and a
            # login before TLS when it must), whatever the client was told.  (The first
            # piece of a long status still holds its [CAPABILITY] code: mediated.)
            log.warning(
                "session %s: capability list longer than the line limit relayed unmediated",
                self.info.id,
            )
            return PASS
        policy = CapabilityPolicy(
            offer_starttls=self.offers_starttls(session),
            login_disabled=self.login_disabled(session),
        )
        new = mediate_raw(resp.kind, resp.name, resp.raw, policy)
        return PASS if new is None else Replace(new)
