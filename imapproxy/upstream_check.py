"""``imapproxy check --upstream`` / ``imapproxy run --check-upstream``: connect to the
upstream once, as a session would (the same set-up code, timeouts and TLS settings), and
report its greeting, TLS (version, cipher, certificate) and capabilities."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import trio

from .certs import CertInfo
from .config import ProxyConfig, UpstreamTls
from .logsafe import MAX_DETAIL, printable, safe
from .net.tls import upstream_context
from .net.transport import TlsStream
from .relay.ends import SessionEnd
from .relay.upstream import UpstreamSetup
from .wire import Conversation


@dataclass
class _Counts:
    bytes_from_upstream: int = 0
    bytes_to_upstream: int = 0


@dataclass
class CheckReport:
    """The check's findings, in order, and whether the upstream answered as IMAP."""

    upstream: str
    lines: list[tuple[str, str]] = field(default_factory=list)
    ok: bool = False

    def add(self, label: str, value: str) -> None:
        self.lines.append((label, value))

    def text(self) -> str:
        return "\n".join(
            f"{label + ':' if label else '':14}{value}" for label, value in self.lines
        )


async def check_upstream(config: ProxyConfig) -> CheckReport:
    """Connect, TLS/STARTTLS, greeting, CAPABILITY, LOGOUT.  Never raises for the
    upstream's faults (they are the report); a bad local file (``--upstream-ca``) raises
    ``OSError`` like the proxy does."""
    up = config.upstream
    mode = {UpstreamTls.IMPLICIT: "implicit TLS", UpstreamTls.STARTTLS: "STARTTLS"}
    report = CheckReport(str(up.endpoint))
    report.add("upstream", f"{up.endpoint} ({mode.get(up.tls, 'no TLS')})")
    ssl_ctx = upstream_context(up) if up.tls is not UpstreamTls.NONE else None
    setup = UpstreamSetup(
        config, Conversation(config.limits, nonsync_as_sync=True), _Counts(), ssl_ctx, None,
        "check",
    )  # fmt: skip
    started = time.monotonic()
    try:
        greeting = await setup.open()
        text = printable(greeting.raw.rstrip(b"\r\n"))[:MAX_DETAIL]
        report.add("greeting", f"{text} ({(time.monotonic() - started) * 1000:.0f} ms)")
        stream = setup.stream
        if isinstance(stream, TlsStream):
            _tls_lines(report, stream, verified=not up.insecure)
        caps = await setup.capabilities()
        report.add("capabilities", " ".join(safe(c.decode("ascii", "replace")) for c in caps))
        report.ok = True
        report.add("result", "OK: the upstream answers as an IMAP server")
        await _logout(setup)
    except SessionEnd as end:
        report.add("result", f"FAILED: {safe(end.detail, MAX_DETAIL)}")
    finally:
        if setup.stream is not None:
            await trio.aclose_forcefully(setup.stream)
    return report


def _tls_lines(report: CheckReport, stream: TlsStream, *, verified: bool) -> None:
    cipher = stream.cipher()
    report.add(
        "TLS",
        f"{stream.version()}, {cipher[0] if cipher else '?'}, certificate "
        + ("verified" if verified else "NOT verified (--upstream-insecure)"),
    )
    der = stream.peer_certificate_der()
    if der is None:
        return
    info = CertInfo.of_der(der)
    report.add("certificate", f"subject {info.subject}; names {', '.join(info.names) or '-'}")
    report.add("", f"issuer {info.issuer}")
    report.add("", f"not after {info.not_after:%Y-%m-%d %H:%M} UTC ({info.validity()})")


async def _logout(setup: UpstreamSetup) -> None:
    """A polite LOGOUT; its answer is not waited for long."""
    assert setup.stream is not None
    with trio.move_on_after(setup.config.timeouts.farewell):
        try:
            await setup.stream.send_all(b"IMAPPROXY9 LOGOUT\r\n")
            await setup.stream.receive_some(4096)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
