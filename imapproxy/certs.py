"""Development certificates (``imapproxy certs init``) and certificate descriptions
(``imapproxy certs show``, ``imapproxy check``), with ``cryptography``.

``init`` makes a private CA and one server certificate signed by it, then forgets the CA's
key: nothing can issue another certificate under that CA, so trusting ``ca.pem`` in a mail
client trusts exactly this one server certificate.  Private keys are created mode 0600
(never readable by others, not even for a moment).  For development only: real servers use
certificates from an ACME client (e.g. certbot), given to ``--cert``/``--key`` by path.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")
# The CA is thrown away once it signed; ten years saves re-trusting it in clients.
CA_DAYS = 3650
# Apple's clients refuse TLS server certificates valid for longer than 825 days.
SERVER_DAYS = 825
# A little back-dating, so a client whose clock is slightly behind accepts it at once.
BACKDATE = datetime.timedelta(hours=1)
_DNS_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$")


class CertsError(ValueError):
    """An operator's mistake (a bad name, files in the way): one line, exit status 2."""


@dataclass(frozen=True)
class DevCerts:
    """What :func:`init_dev_certs` wrote."""

    ca_path: Path  # the CA certificate: what clients trust
    cert_path: Path  # the server certificate (--cert)
    key_path: Path  # its private key, mode 0600 (--key)
    names: tuple[str, ...]
    not_after: datetime.datetime


def init_dev_certs(
    directory: Path | str,
    names: Sequence[str] = DEFAULT_NAMES,
    *,
    force: bool = False,
    now: datetime.datetime | None = None,
) -> DevCerts:
    """Make a CA and a server certificate for ``names`` (host names, IP addresses) in
    ``directory``: ``ca.pem``, ``cert.pem``, ``key.pem``.  Existing files are an error
    unless ``force``."""
    directory = Path(directory)
    names = tuple(dict.fromkeys(names)) or DEFAULT_NAMES
    san = [_general_name(n) for n in names]
    out = DevCerts(
        directory / "ca.pem", directory / "cert.pem", directory / "key.pem", names,
        datetime.datetime.min,
    )  # fmt: skip
    existing = [p for p in (out.key_path, out.cert_path, out.ca_path) if p.exists()]
    if existing and not force:
        raise CertsError(
            f"{existing[0]} exists: not replaced; add --force to make a new CA and "
            "certificate (clients that trust the old ca.pem must then trust the new one)"
        )
    now = now or datetime.datetime.now(datetime.UTC)
    start = now - BACKDATE
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "imapproxy development"),
            x509.NameAttribute(
                NameOID.COMMON_NAME, f"imapproxy development CA {start:%Y-%m-%d %H:%M}"
            ),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = start + datetime.timedelta(days=SERVER_DAYS)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(_serial())
        .not_valid_before(start)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    _write(
        out.key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    _write(out.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    _write(out.ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return DevCerts(out.ca_path, out.cert_path, out.key_path, names, not_after)


def _serial() -> int:
    return secrets.randbits(159) | 1  # positive, at most 20 bytes (RFC 5280 §4.1.2.2)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not _DNS_NAME.match(name) or len(name) > 253:
        raise CertsError(f"--name {name!r}: not a host name or an IP address")
    return x509.DNSName(name.rstrip(".").lower())


def _write(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` by renaming a new file made with ``mode`` (so a key is
    never readable by others, and a reader never sees half a file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- describing


@dataclass(frozen=True)
class CertInfo:
    """What a person wants to know about a certificate."""

    subject: str
    names: tuple[str, ...]  # subjectAltName: "DNS:host", "IP:1.2.3.4"
    issuer: str
    not_before: datetime.datetime
    not_after: datetime.datetime
    is_ca: bool
    sha256: str

    @classmethod
    def of(cls, cert: x509.Certificate) -> CertInfo:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = tuple(
                f"DNS:{n.value}" if isinstance(n, x509.DNSName) else f"IP:{n.value}"
                for n in san
                if isinstance(n, x509.DNSName | x509.IPAddress)
            )
        except x509.ExtensionNotFound:
            names = ()
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        return cls(
            subject=cert.subject.rfc4514_string() or "(empty)",
            names=names,
            issuer=cert.issuer.rfc4514_string() or "(empty)",
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            is_ca=is_ca,
            sha256=cert.fingerprint(hashes.SHA256()).hex(":").upper(),
        )

    @classmethod
    def of_der(cls, der: bytes) -> CertInfo:
        return cls.of(x509.load_der_x509_certificate(der))

    def validity(self, now: datetime.datetime | None = None) -> str:
        """``valid, expires in N days``, ``EXPIRED N days ago`` or ``NOT YET VALID ...``."""
        now = now or datetime.datetime.now(datetime.UTC)
        if now > self.not_after:
            return f"EXPIRED {(now - self.not_after).days} days ago"
        if now < self.not_before:
            return f"NOT YET VALID (for {(self.not_before - now).days} more days)"
        return f"valid, expires in {(self.not_after - now).days} days"

    def valid(self, now: datetime.datetime | None = None) -> bool:
        now = now or datetime.datetime.now(datetime.UTC)
        return self.not_before <= now <= self.not_after

    def lines(self, now: datetime.datetime | None = None) -> list[tuple[str, str]]:
        return [
            ("subject", self.subject),
            ("names", ", ".join(self.names) or "(none)"),
            ("issuer", self.issuer + (" (self-signed)" if self.issuer == self.subject else "")),
            ("not before", f"{self.not_before:%Y-%m-%d %H:%M:%S} UTC"),
            ("not after", f"{self.not_after:%Y-%m-%d %H:%M:%S} UTC"),
            ("status", self.validity(now)),
            ("CA", "yes" if self.is_ca else "no"),
            ("SHA-256", self.sha256),
        ]


def load_pem_certificates(path: Path | str) -> list[x509.Certificate]:
    """The certificates in a PEM file; a clear :class:`CertsError` when there are none."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise CertsError(f"{path}: {exc.strerror or exc}") from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        pass
    if b"PRIVATE KEY-----" in data:
        raise CertsError(f"{path}: a private key, not a certificate; show the certificate")
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise CertsError(
            f"{path}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ) from None
