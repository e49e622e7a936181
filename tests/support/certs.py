"""Throwaway TLS material for tests: a private CA plus a server certificate.

The server certificate is valid for ``localhost`` (DNS SAN, which clients such as
mbsync/offlineimap require) and for ``127.0.0.1`` and ``::1`` (IP SANs).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

SERVER_IDENTITIES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TlsCerts:
    """Paths of PEM files written by :func:`make_tls_certs`."""

    ca_path: Path
    """The CA certificate (the only thing a client needs to trust)."""
    cert_path: Path
    """The server certificate chain (leaf first)."""
    key_path: Path
    """The server private key (unencrypted PEM)."""

    def client_context(self, *, check_hostname: bool = True) -> ssl.SSLContext:
        """A client-side context that trusts only the test CA."""
        return client_ssl_context(self.ca_path, check_hostname=check_hostname)

    def server_context(self) -> ssl.SSLContext:
        """A server-side context presenting the test server certificate."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        return ctx


def client_ssl_context(ca_path: Path | str, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A verifying client context whose only trust anchor is ``ca_path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cafile=str(ca_path))
    ctx.check_hostname = check_hostname
    return ctx


def make_tls_certs(
    directory: Path | str,
    *,
    identities: tuple[str, ...] = SERVER_IDENTITIES,
    ca: trustme.CA | None = None,
) -> TlsCerts:
    """Create a CA (unless given) and a server certificate; write ``ca.pem``,
    ``cert.pem`` and ``key.pem`` into ``directory`` (created if missing)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if ca is None:
        ca = trustme.CA(organization_name="imapproxy tests")
    leaf = ca.issue_cert(*identities, common_name=identities[0])

    certs = TlsCerts(
        ca_path=directory / "ca.pem",
        cert_path=directory / "cert.pem",
        key_path=directory / "key.pem",
    )
    ca.cert_pem.write_to_path(str(certs.ca_path))
    certs.cert_path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    # Create the key file private from the start instead of chmod-ing it afterwards.
    certs.key_path.unlink(missing_ok=True)
    with open(certs.key_path, "xb", opener=_private_opener) as fd:
        fd.write(leaf.private_key_pem.bytes())
    return certs


def _private_opener(path: str, flags: int) -> int:
    return os.open(path, flags, 0o600)
