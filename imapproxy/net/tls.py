"""TLS contexts for both legs.

A file the operator names that cannot be used (missing, not PEM, an encrypted key, a key
that is not the certificate's) raises ``OSError`` with one line naming the flag, the path
and what to do.
"""

from __future__ import annotations

import logging
import os
import ssl

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from ..config import UpstreamConfig

log = logging.getLogger("imapproxy.tls")

_MAKE_ONE = "for a development one run: imapproxy certs init"

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


def server_context(
    cert_file: str, key_file: str, keylog_file: str | None = None
) -> ssl.SSLContext:
    """The client-facing side: our certificate, TLS 1.2 or newer."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_cert_and_key(cert_file, key_file)
    try:
        ctx.load_cert_chain(cert_file, key_file)
    except ssl.SSLError as exc:
        raise OSError(
            f"--cert {cert_file} / --key {key_file}: the key does not belong to the "
            f"certificate ({exc.reason or exc}); give the key the certificate was made for"
        ) from None
    ctx.options |= ssl.OP_NO_COMPRESSION
    ctx.sni_callback = _remember_sni  # for TlsInfo.sni (filters, the transcript)
    _keylog(ctx, keylog_file, "--tls-keylog-client", "client connections")
    return ctx


def upstream_context(cfg: UpstreamConfig) -> ssl.SSLContext:
    """The upstream side: verify the certificate and host name unless told not to."""
    if cfg.ca_file is not None:
        _read("--upstream-ca", cfg.ca_file, "the CA certificate (PEM) that signed the upstream's")
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca_file)
    except ssl.SSLError as exc:
        raise OSError(
            f"--upstream-ca {cfg.ca_file}: no PEM CA certificate in it ({exc.reason or exc}); "
            "give the CA certificate (-----BEGIN CERTIFICATE-----) that signed the upstream's"
        ) from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.insecure:
        log.warning(
            "upstream TLS verification is OFF (--upstream-insecure): the upstream's "
            "identity is not checked"
        )
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    _keylog(ctx, cfg.keylog_file, "--tls-keylog-upstream", "connections to the upstream")
    return ctx


def _read(flag: str, path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise OSError(f"{flag} {path}: {exc.strerror or exc}; give the path of {what}") from None


def _check_cert_and_key(cert_file: str, key_file: str) -> None:
    """Name the file that is wrong, and how (``load_cert_chain`` only says "PEM lib")."""
    cert = _read("--cert", cert_file, f"the server certificate (PEM; {_MAKE_ONE})")
    key = _read("--key", key_file, f"the server's private key (PEM; {_MAKE_ONE})")
    try:
        x509.load_pem_x509_certificates(cert)
    except ValueError:
        swapped = b"PRIVATE KEY-----" in cert
        raise OSError(
            f"--cert {cert_file}: not a PEM certificate"
            + (
                " but a private key: --cert takes the certificate, --key its key"
                if swapped
                else " (-----BEGIN CERTIFICATE-----); convert a DER one with: openssl x509 "
                f"-inform der -in {cert_file} -out cert.pem"
            )
        ) from None
    try:
        serialization.load_pem_private_key(key, password=None)
    except TypeError:
        raise OSError(
            f"--key {key_file}: the key is encrypted with a passphrase; the proxy needs it "
            f"unencrypted: openssl pkey -in {key_file} -out key.pem (keep it mode 0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        swapped = b"BEGIN CERTIFICATE-----" in key
        raise OSError(
            f"--key {key_file}: not a PEM private key"
            + (
                " but a certificate: --key takes the private key, --cert the certificate"
                if swapped
                else " (-----BEGIN PRIVATE KEY-----); give the key the certificate was made for"
            )
        ) from None


def _keylog(ctx: ssl.SSLContext, path: str | None, flag: str, what: str) -> None:
    """Append the context's TLS secrets to ``path`` (NSS key log format, for Wireshark)."""
    if path is None:
        return
    try:
        # made private before Python opens it: the secrets decrypt the traffic
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        ctx.keylog_filename = path
    except OSError as exc:
        raise OSError(
            f"{flag} {path}: {exc.strerror or exc}; give a file in a directory you can write"
        ) from None
    log.warning(
        "%s %s: the TLS secrets of %s are written to this file; anyone who has it can "
        "decrypt captured traffic (passwords included): for debugging only, delete it after",
        flag,
        path,
        what,
    )
