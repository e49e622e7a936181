"""The rewrite filter's user part: the client's login name mapped to the upstream's.

Mappings (exactly one is configured): ``add_domain`` (``alice`` -> ``alice@example.com``;
a name with an ``@`` is left alone), ``strip_domain`` (``alice@example.com`` -> ``alice``),
``table`` (listed names only) or ``regex`` (``match`` must match the whole name; then
``replace``, with ``\\1``/``\\g<name>`` references, gives the new name; other names pass).

Where the name travels:

* ``LOGIN user password``: the user argument (atom, quoted or literal) is rewritten in
  place; every other byte, the password included, stays as the client sent it;
* ``AUTHENTICATE PLAIN``: the SASL message (as an initial response, RFC 4959, or as the
  line after the server's ``+``) is decoded, its authentication identity mapped (and its
  authorization identity, when one is given: both are the client's names) and encoded
  again; the password is carried over untouched;
* ``AUTHENTICATE LOGIN`` (the widespread non-standard mechanism): its first client
  message, the user name.

Other SASL mechanisms carry the name where it cannot be changed (CRAM-MD5's and SCRAM's
are bound into the proof): with a user mapping they are refused ``NO [CANNOT]`` rather
than logging the client in as its unmapped name, and their ``AUTH=`` capabilities are not
offered.  The mapped name is set as ``SessionView.upstream_user``.  Nothing here logs a
name, a password or a SASL message; errors carry no bytes.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from ..wire.events import FrameKind
from .api import PASS, ClientLineView, CommandView, Reject, Replace, SessionView, Verdict
from .rewrite_wire import arguments, astring, splice

MAPPABLE_MECHANISMS = frozenset({"PLAIN", "LOGIN"})
UNMAPPABLE_MECHANISM = Reject(
    "this authentication mechanism is not available through this proxy", code="CANNOT"
)


class UserMap:
    """One of the four mappings; ``map`` gives the upstream's name for a client's."""

    __slots__ = ("add_domain", "regex", "replace", "strip_domain", "table")

    def __init__(
        self,
        *,
        add_domain: str | None = None,
        strip_domain: bool = False,
        table: Mapping[str, str] | None = None,
        regex: re.Pattern[str] | None = None,
        replace: str = "",
    ) -> None:
        self.add_domain = add_domain
        self.strip_domain = strip_domain
        self.table = dict(table) if table is not None else None
        self.regex = regex
        self.replace = replace

    def map(self, name: str) -> str:
        if self.add_domain is not None:
            return name if "@" in name else f"{name}@{self.add_domain}"
        if self.strip_domain:
            return name.rpartition("@")[0] if "@" in name else name
        if self.table is not None:
            return self.table.get(name, name)
        if self.regex is not None:
            m = self.regex.fullmatch(name)
            return m.expand(self.replace) if m is not None else name
        return name


class LoginRewriter:
    """One session's login rewriting: the command hook, the SASL line hook, and the name
    the server was given (``upstream_user``) until it answers."""

    __slots__ = ("_exchange", "_pending", "users")

    def __init__(self, users: UserMap) -> None:
        self.users = users
        # AUTHENTICATE in progress whose next client line carries the name: tag, mechanism
        self._exchange: tuple[bytes, str] | None = None
        self._pending: dict[bytes, str] = {}  # logins sent: the mapped name, by tag

    def _mapped(self, name: bytes) -> bytes | None:
        """The mapped name, or None when it does not change (or is not UTF-8)."""
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            return None
        new = self.users.map(text)
        return None if new == text else new.encode("utf-8")

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.parse_error is not None or not cmd.complete:
            return PASS
        if cmd.name == "LOGIN":
            return self._login(cmd, session)
        return self._authenticate(cmd, session)

    def _login(self, cmd: CommandView, session: SessionView) -> Verdict:
        items = arguments(cmd.raw, command=True)
        if len(items) != 2 or not items[0].is_string:
            return PASS  # malformed: the server refuses it as it is
        user = items[0]
        new = self._mapped(user.value)
        if new is None:
            return PASS
        self._note(cmd.tag, new, session)
        return Replace(splice(cmd.raw, [(user, astring(new, atom=user.kind == "atom"))]))

    def _authenticate(self, cmd: CommandView, session: SessionView) -> Verdict:
        items = arguments(cmd.raw, command=True)
        if not items or items[0].kind != "atom":
            return PASS
        mechanism = items[0].value.decode("ascii", "replace").upper()
        if mechanism not in MAPPABLE_MECHANISMS:
            return UNMAPPABLE_MECHANISM
        if len(items) < 2:
            self._exchange = (cmd.tag, mechanism)  # the name comes in the next line
            return PASS
        self._exchange = None
        ir = items[1]
        new = self._sasl(mechanism, ir.value, cmd.tag, session)
        if new is None:
            return PASS
        return Replace(splice(cmd.raw, [(ir, new)]))

    def client_line(self, line: ClientLineView, session: SessionView) -> Verdict:
        exchange = self._exchange
        if exchange is None or line.kind is not FrameKind.AUTH_DATA or line.tag != exchange[0]:
            return PASS
        self._exchange = None  # only the first client message carries the name
        data = line.data.reveal()
        body = data.rstrip(b"\r\n")
        new = self._sasl(exchange[1], body, exchange[0], session)
        if new is None:
            return PASS
        return Replace(new + data[len(body) :])

    def _sasl(
        self, mechanism: str, message: bytes, tag: bytes, session: SessionView
    ) -> bytes | None:
        """A client SASL message (base64) with the name mapped, or None to leave it."""
        if message in (b"*", b"="):
            return None  # cancelled, or an empty initial response
        try:
            decoded = base64.b64decode(message, validate=True)
        except (binascii.Error, ValueError):
            return None  # the server refuses it as it is
        if mechanism == "LOGIN":
            new_name = self._mapped(decoded)
            if new_name is None:
                return None
            self._note(tag, new_name, session)
            return base64.b64encode(new_name)
        fields = decoded.split(b"\x00")
        if len(fields) != 3 or not fields[1]:
            return None  # authzid \0 authcid \0 password (RFC 4616), else not PLAIN
        authzid, authcid, password = fields
        new_authcid = self._mapped(authcid)
        new_authzid = self._mapped(authzid) if authzid else None
        if new_authcid is None and new_authzid is None:
            return None
        self._note(tag, new_authcid or authcid, session)
        return base64.b64encode(
            (new_authzid or authzid) + b"\x00" + (new_authcid or authcid) + b"\x00" + password
        )

    def _note(self, tag: bytes, name: bytes, session: SessionView) -> None:
        text = name.decode("utf-8", "replace")
        self._pending[tag] = text
        # set now, so that every filter's ``authenticated`` hook sees it (they run when
        # the server's OK arrives, before the response hooks); undone if it fails
        session.upstream_user = text

    def completed(self, tag: bytes, status: str, session: SessionView) -> None:
        name = self._pending.pop(tag, None)
        if self._exchange is not None and self._exchange[0] == tag:
            self._exchange = None
        if name is not None and status != "OK" and session.upstream_user == name:
            session.upstream_user = None
