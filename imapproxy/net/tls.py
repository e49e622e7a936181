"""TLS contexts for both legs."""

from __future__ import annotations

import logging
import ssl

from ..config import UpstreamConfig

log = logging.getLogger("imapproxy.tls")

_SNI_ATTRIBUTE = "imapproxy_sni"
"""Where :func:`_remember_sni` leaves the client's SNI name: on the connection's own
``SSLObject`` (the context is shared by every session, so nothing is kept on it)."""


def _remember_sni(
    conn: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
) -> None:
    """The server context's SNI callback: remember the name the client asked for (None
    when it sent none, e.g. it connected to an IP address).  Returning None lets the
    handshake go on with this context and certificate."""
    setattr(conn, _SNI_ATTRIBUTE, name)


def client_sni(conn: ssl.SSLObject | ssl.SSLSocket) -> str | None:
    """The SNI name the client sent on a connection of a :func:`server_context` (an
    A-label, ASCII, at most 255 bytes: OpenSSL and ``ssl`` check that), or None."""
    name = getattr(conn, _SNI_ATTRIBUTE, None)
    return name if isinstance(name, str) else None


def server_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The client-facing side: our certificate, TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    for flag, path in (("--cert", cert_file), ("--key", key_file)):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise OSError(f"{flag} {path}: {exc.strerror or exc}") from None
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise OSError(
            f"--cert {cert_file} / --key {key_file}: not a PEM certificate chain and its "
            f"private key ({exc.reason or exc})"
        ) from None
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.sni_callback = _remember_sni  # for TlsInfo.sni (filters, the transcript)
    return ctx


def upstream_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    """The upstream side: verify the certificate and host name unless told not to."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.insecure:
        log.warning(
            "upstream TLS verification is OFF (--upstream-insecure): the upstream's "
            "identity is not checked"
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
