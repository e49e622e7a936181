"""Sockets and TLS under the relay: lean streams (``transport``), TLS contexts (``tls``),
busy polling (``busypoll``) and glibc heap settings (``malloc``).  No IMAP here."""
