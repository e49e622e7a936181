"""Following who logs in: the user name of a LOGIN or AUTHENTICATE (PLAIN, LOGIN), never
the password, kept until the server answers the command.

The relay needs it for its log line and the filters' view (``SessionView.user``), whatever
filters are configured; so it is the relay's own stage, reading the same frames the codec
marks ``sensitive``.  Only a well-formed two-argument LOGIN gives a user (one argument is
probably all password); SASL data is read only from AUTHENTICATE's first part and the data
lines the server asked for.
"""

from __future__ import annotations

import base64
import binascii

from ..wire import Frame, FrameKind, ProtocolError, parse_command, string_value
from ..wire.limits import Limits


class LoginTracker:
    __slots__ = ("_auth_mechanism", "_auth_step", "_login_parts", "_pending", "limits")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._pending: dict[bytes, tuple[str, str]] = {}  # tag: (user, mechanism)
        self._login_parts: list[bytes] = []
        self._auth_mechanism = b""
        self._auth_step = 0

    def completed(self, tag: bytes, status: str) -> tuple[str, str] | None:
        """The server completed ``tag``: (user, mechanism) if it accepted a login."""
        pending = self._pending.pop(tag, None)
        return pending if status == "OK" else None

    def forget(self, tag: bytes) -> None:
        """The command ``tag`` never reached the server (refused by the proxy)."""
        self._pending.pop(tag, None)

    def note(self, frame: Frame) -> None:
        """Remember who is logging in (never the password) until the server answers."""
        tag = frame.tag
        if tag is None:
            return
        if frame.kind is FrameKind.COMMAND and frame.name == "LOGIN":
            if frame.first:
                self._login_parts.clear()  # a LOGIN whose literal was refused left parts
            self._login_parts.append(frame.raw)
            if not frame.final:
                return
            raw = b"".join(self._login_parts)
            self._login_parts.clear()
            try:
                args = parse_command(raw, self.limits).args
            except ProtocolError:
                return
            # a LOGIN with one argument (its password) or three is malformed: no user
            user = string_value(args[0]) if len(args) == 2 else None
            if user is not None:
                self._pending[tag] = (user.decode("utf-8", "replace"), "LOGIN")
            return
        data: bytes | None = None
        if frame.kind is FrameKind.COMMAND and frame.name == "AUTHENTICATE":
            if not frame.first:
                return  # a literal part (servers refuse those): never read as SASL
            parts = frame.raw.split()
            self._auth_mechanism = parts[2].upper() if len(parts) >= 3 else b""
            self._auth_step = 0  # the client's SASL messages, the initial response first
            if len(parts) >= 4:
                data = parts[3]
            else:
                self._auth_step = -1  # no initial response: the first data line is step 0
        elif frame.kind is FrameKind.AUTH_DATA:
            data = frame.raw.strip()
            self._auth_step += 1
        if data is None:
            return
        try:
            decoded = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            return
        if self._auth_mechanism == b"PLAIN":
            fields = decoded.split(b"\x00")
            if len(fields) == 3 and fields[1]:  # authzid \0 authcid \0 password (RFC 4616)
                self._pending[tag] = (fields[1].decode("utf-8", "replace"), "PLAIN")
        elif self._auth_mechanism == b"LOGIN" and self._auth_step == 0 and decoded:
            # the first client message of the (non-standard, widely used) LOGIN mechanism
            # is the user name (as initial response or first data line); the second,
            # never looked at, the password
            self._pending[tag] = (decoded.decode("utf-8", "replace"), "LOGIN")
