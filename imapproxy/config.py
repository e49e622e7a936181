"""Proxy configuration: frozen values built once (by the CLI or a test) and passed in."""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from .wire.limits import DEFAULT_LIMITS, Limits


class UpstreamTls(enum.Enum):
    IMPLICIT = "implicit"  # TLS from the first byte (port 993 style)
    STARTTLS = "starttls"  # plain greeting, then STARTTLS; refusal is a hard failure
    NONE = "none"  # plaintext (loopback / trusted networks only)


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> Endpoint:
        """``HOST:PORT``, ``[IPv6]:PORT``."""
        scheme, sep, rest = text.partition("://")
        if sep:  # imaps://host:993, a URL: say what to write instead
            host_port = rest.split("/", 1)[0] or "HOST:PORT"
            raise ValueError(
                f"bad address {text!r}: write HOST:PORT without {scheme}:// (e.g. "
                f"{host_port}); TLS is chosen by --upstream-tls implicit|starttls (or "
                "--listen-tls for a listener)"
            )
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep:
                raise ValueError(f"bad address {text!r}: expected [IPv6]:PORT")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or not host:
                raise ValueError(f"bad address {text!r}: expected HOST:PORT")
            if ":" in host:
                raise ValueError(f"bad address {text!r}: write IPv6 addresses as [ADDR]:PORT")
        try:
            number = int(port)
        except ValueError:
            raise ValueError(f"bad port in {text!r}") from None
        if not 0 <= number <= 65535:
            raise ValueError(f"port out of range in {text!r}")
        return cls(host, number)


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    endpoint: Endpoint
    implicit_tls: bool  # True: TLS from the first byte; False: plain, STARTTLS if a cert is set
    # A plain listener offers STARTTLS when it has a certificate, unless this is False
    # (the config file's tls = "none").
    starttls: bool = True
    # This listener's own certificate and key (default: ProxyConfig's).
    cert_file: str | None = None
    key_file: str | None = None
    # What logs, the policy's `listener` rule and metrics call it (default: its name below).
    label: str | None = None
    # PROXY protocol in ("v1", "v2" or "off"): every connection starts with a header
    # naming the real client, sent by a load balancer in one of proxy_trusted (connections
    # from elsewhere are refused); see imapproxy.relay.proxied.
    proxy_protocol: str = "off"
    proxy_trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        return ("imaps" if self.implicit_tls else "imap") + f"@{self.endpoint}"


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    endpoint: Endpoint
    tls: UpstreamTls = UpstreamTls.NONE
    ca_file: str | None = None  # None: the system's CAs
    insecure: bool = False  # skip certificate and hostname verification (logged loudly)
    server_hostname: str | None = None  # SNI / verification name; default: the host
    keylog_file: str | None = None  # TLS secrets of upstream connections (SSLKEYLOGFILE)
    # "v2": each upstream connection starts with a PROXY v2 header naming the client
    # (Dovecot: haproxy_trusted_networks); "off": none.
    proxy_protocol: str = "off"
    # Send ID ("x-originating-ip" ...) after the greeting (Dovecot: login_trusted_networks).
    id_forwarding: bool = False


@dataclass(frozen=True, slots=True)
class Timeouts:
    # Seconds.  IMAP clients start their TLS handshake at once; 10 s covers slow links.
    tls_handshake: float = 10.0
    # Connecting to the upstream and reading its greeting (and upstream STARTTLS).
    upstream_connect: float = 10.0
    # IMAP servers greet as soon as they accept (well under a second, even far away); a
    # silent one is almost always not IMAP, or a TLS port (993) spoken to in plain, which
    # should be reported soon.  5 s still covers a loaded server.
    upstream_greeting: float = 5.0
    # A load balancer writes its PROXY protocol header with the connection's first packet;
    # 5 s covers a loaded one.  A connection without it must not hold a place for long.
    proxy_header: float = 5.0
    # Before login a silent client is probably a scanner.
    idle_unauthenticated: float = 120.0
    # From connect to authenticated (the server accepted LOGIN/AUTHENTICATE, or greeted
    # with PREAUTH): a deadline that no byte moves, so a client cannot hold a connection,
    # and the upstream connection behind it, without logging in by trickling bytes (the
    # same idea as nginx mail's ``timeout``).  The upstream's own set-up time is not
    # counted (it has its own timeouts above); the client's TLS handshake and STARTTLS
    # are.  60 s leaves room for a slow client and for a server's delay after failed
    # logins (Dovecot's auth_failure_delay: 2 s, growing to 15 s).
    login_timeout: float = 60.0
    # RFC 9051 §5.4: at least 30 minutes once authenticated; IDLE clients re-issue IDLE
    # at least every 29 minutes, which counts as activity.
    idle_authenticated: float = 31 * 60.0
    # While a command is in progress the idle timers do not run (a client waiting for an
    # answer is not idle), but a server that stays silent this long, with the client
    # silent too, has lost the command (e.g. it answered only with an untagged BAD): the
    # session ends rather than live on forever.
    answer_timeout: float = 60 * 60.0
    # A filter's command hook that must wait (a lookup, a login delay) is given this long;
    # beyond it the hook counts as failed (its on_error applies).  The session's next
    # commands wait behind it, so it stays short.
    filter_hook: float = 5.0
    # Graceful shutdown: how long sessions may go on after the listeners close.
    shutdown_drain: float = 10.0
    # Writing a last BYE to a client that does not read must not hold anything up.
    farewell: float = 2.0


@dataclass(frozen=True, slots=True)
class SessionLimits:
    max_sessions: int = 10_000
    max_sessions_per_address: int = 100
    # Bytes asked for per receive.  Large reads halve the per-call overhead of bulk
    # transfers (measured: ~+20% FETCH throughput over 256 KiB); the buffer only lives
    # during the call and shrinks to what arrived.
    read_size: int = 1024 * 1024
    # Bytes asked for per client receive before login and while the client waits for the
    # server (the decoder holds what arrives then): nothing large is legitimate at those
    # times (literals before login are at most 64 KiB; a paused decoder refuses more than
    # max_held_bytes), so a stalled or hostile session keeps at most this much of a read.
    guarded_read_size: int = 64 * 1024
    # Bytes of a PROXY v2 header (16 fixed, then addresses and TLVs).  HAProxy's TLVs (ALPN,
    # SNI, unique id, SSL details with the client certificate's CN) and cloud balancers'
    # (AWS's endpoint id) come to a few hundred bytes; the format allows 64 KiB, which
    # nobody needs before the proxy even knows who is connecting.
    proxy_header_bytes: int = 4096
    # Seconds the event loop polls instead of sleeping after a send (imapproxy.net.busypoll);
    # 0 turns it off.
    busy_poll: float = 0.0003


@dataclass(frozen=True, slots=True)
class ControlLimits:
    """The control socket (``imapproxy tail``)."""

    # Records queued for one attached tail before newer ones are lost (counted, and the
    # count reported to that tail): a tail that stops reading holds at most this many
    # (~300 bytes each: ~3 MB) and never slows a session.
    queue_records: int = 10_000
    # Tails attached at once: each costs a queue (above) and a copy of every record.
    max_clients: int = 8
    # Bytes of one line a tail sends (its filter, well under 1 KiB): more is refused.
    max_line_bytes: int = 64 * 1024


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    listeners: tuple[ListenerConfig, ...]
    upstream: UpstreamConfig
    cert_file: str | None = None
    key_file: str | None = None
    # Refuse LOGIN/AUTHENTICATE on a plaintext client connection (advertise LOGINDISABLED).
    require_tls_for_login: bool = False
    keylog_client: str | None = None  # TLS secrets of client connections (SSLKEYLOGFILE)
    limits: Limits = DEFAULT_LIMITS
    timeouts: Timeouts = field(default_factory=Timeouts)
    session_limits: SessionLimits = field(default_factory=SessionLimits)
    # A Unix socket for ``imapproxy tail`` (None: none; the live filter is not in the chain)
    control_socket: str | None = None
    control_limits: ControlLimits = field(default_factory=ControlLimits)

    def certificate(self, lc: ListenerConfig) -> tuple[str, str] | None:
        """The (certificate, key) files a listener serves TLS with: its own, else the
        proxy's; None when it does no TLS (a plain listener with ``starttls`` off, or no
        certificate anywhere)."""
        if not (lc.implicit_tls or lc.starttls):
            return None
        if lc.cert_file and lc.key_file:
            return lc.cert_file, lc.key_file
        if self.cert_file and self.key_file:
            return self.cert_file, self.key_file
        return None

    def __post_init__(self) -> None:
        if not self.listeners:
            raise ValueError("at least one listener is needed")
        for lc in self.listeners:
            if lc.implicit_tls and not self.certificate(lc):
                raise ValueError(
                    f"--listen-tls {lc.endpoint} needs --cert and --key (imapproxy certs "
                    "init makes a development pair)"
                )
        if bool(self.cert_file) != bool(self.key_file):
            raise ValueError("--cert and --key go together")
        if self.require_tls_for_login and not any(
            self.certificate(lc) for lc in self.listeners
        ):
            raise ValueError("requiring TLS for login needs --cert and --key (for STARTTLS)")
        if self.keylog_client and not any(self.certificate(lc) for lc in self.listeners):
            raise ValueError(
                "--tls-keylog-client needs --cert and --key (without them no client "
                "connection uses TLS)"
            )
        if self.upstream.keylog_file and self.upstream.tls is UpstreamTls.NONE:
            raise ValueError("--tls-keylog-upstream needs --upstream-tls implicit or starttls")
