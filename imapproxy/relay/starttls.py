"""The client leg's TLS: its handshake (implicit TLS, or after STARTTLS), what filters are
told of it (:class:`~imapproxy.filters.api.TlsInfo`, with the SNI name the client sent),
and the STARTTLS command, which the relay answers itself and never forwards (RFC 9051
section 6.2.1).

Bytes the client pipelined after its STARTTLS, before the TLS handshake, are discarded
(counted, and logged as a command injection attempt): they were sent in plaintext, and
must never run as commands of the protected session.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from ..filters.api import TlsInfo
from ..filters.views import command_view
from ..net.transport import TlsStream
from ..wire import Frame, Phase
from ..wire.conversation import AUTHENTICATING_COMMANDS
from .ends import SessionEnd

if TYPE_CHECKING:
    from .session import Session

log = logging.getLogger("imapproxy.session")


async def start_client_tls(s: Session) -> None:
    """The client's TLS handshake (the client stream becomes a :class:`TlsStream` first,
    so that a login deadline passing meanwhile knows it is inside the handshake)."""
    assert s.server_ssl is not None
    tls = TlsStream(s.client, s.server_ssl, server_side=True)
    s.client = tls
    try:
        with trio.fail_after(s.config.timeouts.tls_handshake):
            await tls.do_handshake()
    except trio.TooSlowError:
        s.events.tls_failed(s.id, "client", None)
        raise SessionEnd("tls_failed", "client TLS handshake timed out") from None
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__ or exc
        s.events.tls_failed(s.id, "client", cause)
        raise SessionEnd("tls_failed", f"client TLS handshake failed: {cause}") from None
    s.client_tls = tls.version() or "TLS"
    s.events.tls_handshake(s.id, "client", s.client_tls)
    if s.filtering is not None:
        s.filtering.view.tls = tls_info(s)


def tls_info(s: Session) -> TlsInfo | None:
    """The client leg's TLS as filters see it, once it is up."""
    client = s.client
    if s.client_tls is None or not isinstance(client, TlsStream):
        return None
    cipher = client.cipher()
    return TlsInfo(s.client_tls, cipher[0] if cipher else None, client.server_name())


def starttls_refusal(frame: Frame) -> str | None:
    """Why a STARTTLS command is refused (BAD, never a TLS switch), if it is."""
    if not frame.final:  # "STARTTLS {5}": never forwarded, never a TLS switch
        return "STARTTLS takes no literal"
    if frame.raw.partition(b" ")[2][8:] not in (b"\r\n", b"\n"):
        # STARTTLS takes no arguments: "a STARTTLS x", even a trailing space, is refused
        return "STARTTLS takes no arguments"
    return None


def offers_starttls(s: Session) -> bool:
    """Whether a STARTTLS now switches to TLS."""
    return (
        not s.listener.implicit_tls
        and s.server_ssl is not None
        and s.client_tls is None
        and s.conv.phase is Phase.NOT_AUTHENTICATED
        # a LOGIN in progress: the capabilities the server sends now are the
        # post-login ones (STARTTLS will not be possible any more)
        and not any(p.name in AUTHENTICATING_COMMANDS for p in s.conv.pending.values())
    )


async def answer_starttls(s: Session, frame: Frame) -> None:
    """Answer a well-formed STARTTLS (see :func:`starttls_refusal`) and switch the
    client's stream, or answer BAD where STARTTLS is not possible."""
    tag = frame.tag or b"*"
    conv = s.conv
    filtering = s.filtering
    assert filtering is not None
    conv.pending.pop(tag, None)
    # Commands the client sent before STARTTLS are answered first, in plaintext, as
    # the server would; only then is it decided whether STARTTLS is still possible
    # (e.g. not after a pipelined LOGIN succeeded).
    while conv.pending:
        s.no_pending = trio.Event()
        await s.no_pending.wait()
    s.no_pending = None
    view = replace(command_view(frame.raw, frame), verdict="answer", by="relay")
    filtering.filters.observe_command(view, filtering.view)
    if offers_starttls(s):
        s.events.command_answered(s.id, "STARTTLS", "OK")
        ok = filtering.local_reply(tag, "OK", tag + b" OK Begin TLS negotiation now\r\n",
                                   "relay")  # fmt: skip
        await _switch(s, ok)
    else:
        conv.client.completed(tag, "BAD")
        s.events.command_answered(s.id, "STARTTLS", "BAD")
        bad = tag + b" BAD STARTTLS is not available here\r\n"
        await s.send_client(filtering.local_reply(tag, "BAD", bad, "relay"))


async def _switch(s: Session, ok: bytes) -> None:
    """Send the OK, discard what the client pipelined after STARTTLS, then TLS."""
    async with s.client_lock:
        s.stats.bytes_to_client += len(ok)
        await s.client.send_all(ok)
        injected = s.conv.client.start_tls()
        if injected:
            s.stats.starttls_injected += len(injected)
            s.events.starttls_injection(s.id, "client")
            log.warning(
                "session %s: discarded %d bytes the client sent after STARTTLS before "
                "TLS (command injection attempt)",
                s.id,
                len(injected),
            )
        await start_client_tls(s)
