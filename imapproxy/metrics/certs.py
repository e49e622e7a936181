"""The served certificate's expiry, for the expiry gauge (and its alert)."""

from __future__ import annotations

import logging

from cryptography import x509

log = logging.getLogger("imapproxy.metrics")


def not_after(path: str) -> float | None:
    """notAfter (Unix time) of the first certificate in a PEM file: the one served (the
    rest of the chain are its issuers).  None, with a warning, if it cannot be read: the
    proxy has loaded it already, so this only loses the gauge."""
    try:
        with open(path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except (OSError, ValueError) as exc:
        log.warning("metrics: cannot read the expiry of %s: %s", path, exc)
        return None
    return cert.not_valid_after_utc.timestamp()
