"""The whole configuration file: every key, its type and its meaning, checked with key paths.

``imapproxy run --config FILE`` and ``imapproxy check --config FILE`` read one TOML file
for everything; flags given on the command line win over it.  The shape is a contract
(keys are added, never renamed)::

    metrics = "127.0.0.1:9143"           # serve /metrics here (optional)
    control_socket = "/run/imapproxy.sock"  # for `imapproxy tail` (optional)

    [logging]
    level = "INFO"

    [tls]                                # defaults for every listener
    cert = "certs/server.pem"
    key = "certs/server.key"
    require_tls_for_login = false

    [[listeners]]
    address = "127.0.0.1:1143"
    tls = "starttls"                     # "implicit" (993 style), "starttls", or "none"
    # cert, key: this listener's own certificate (default: [tls])
    # name: how logs, the policy's `listener` rule and metrics call it
    # proxy_protocol = "v2"              # "v1", "v2" or "off": a PROXY header comes first,
    # proxy_trusted = ["10.0.0.0/8"]     #   sent from these networks only

    [upstream]
    address = "imap.example.net:993"
    tls = "implicit"                     # "implicit", "starttls" or "none"
    # ca = "/etc/ssl/certs/ca-certificates.crt"; name = "imap.example.net"; insecure = false
    # proxy_protocol = "v2"              # send a PROXY v2 header naming the client ("off")
    # id_forwarding = true               # send ID ("x-originating-ip" ...) before login

    [limits]                             # sessions, and every wire limit (imapproxy.wire.Limits)
    max_sessions = 10000
    max_sessions_per_address = 100
    max_line_bytes = 65536

    [timeouts]                           # seconds (imapproxy.config.Timeouts)
    login = 60
    idle = 1860

    [[filters]]                          # the filter chain, in order (see configfile.py)
    use = "transcript"

A mistake is one :class:`~imapproxy.filters.ConfigError` naming the key path
(``listeners[0].tls: expected one of implicit, starttls, none; got 'tsl'``).

Reading the file and checking its values is pure (no file other than the config itself is
opened here): whether certificate files exist is the business of ``imapproxy check``
(a warning) and of start-up (an error).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Endpoint, ListenerConfig, SessionLimits, Timeouts, UpstreamConfig, UpstreamTls
from .filters.api import ConfigError
from .wire.limits import Limits

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LISTENER_TLS = ("implicit", "starttls", "none")
PROXY_IN = ("v1", "v2", "off")  # a listener's proxy_protocol
PROXY_OUT = ("v2", "off")  # upstream.proxy_protocol

# [timeouts] keys -> Timeouts fields (the file's names are short; the flags' are longer).
TIMEOUT_KEYS: dict[str, str] = {
    "login": "login_timeout",
    "idle": "idle_authenticated",
    "idle_unauthenticated": "idle_unauthenticated",
    "answer": "answer_timeout",
    "shutdown_drain": "shutdown_drain",
    "tls_handshake": "tls_handshake",
    "upstream_connect": "upstream_connect",
    "upstream_greeting": "upstream_greeting",
    "filter_hook": "filter_hook",
    "farewell": "farewell",
    "proxy_header": "proxy_header",
}
# [limits] keys that are session limits (the rest are imapproxy.wire.Limits fields).
SESSION_LIMIT_KEYS = ("max_sessions", "max_sessions_per_address", "read_size",
                      "guarded_read_size", "busy_poll_us")  # fmt: skip
WIRE_LIMIT_KEYS = tuple(f.name for f in dataclasses.fields(Limits))

_TOP = {
    "metrics": str,
    "control_socket": str,
    "logging": dict,
    "tls": dict,
    "listeners": list,
    "upstream": dict,
    "limits": dict,
    "timeouts": dict,
    "filters": list,
}


@dataclass(frozen=True)
class FileSettings:
    """What a config file says; None (or empty) where it says nothing."""

    path: str | None = None
    listeners: tuple[ListenerConfig, ...] = ()
    cert_file: str | None = None
    key_file: str | None = None
    require_tls_for_login: bool | None = None
    upstream: UpstreamConfig | None = None
    limits: Limits | None = None
    session_limits: dict[str, Any] = field(default_factory=dict)  # SessionLimits fields
    timeouts: dict[str, float] = field(default_factory=dict)  # Timeouts fields
    metrics: Endpoint | None = None
    control_socket: str | None = None
    log_level: str | None = None
    filters: tuple[dict[str, Any], ...] = ()

    def files(self) -> list[tuple[str, str]]:
        """(key path, file) for every file the configuration names (certificates, keys,
        CA bundles), for ``imapproxy check`` to look at."""
        out: list[tuple[str, str]] = []
        if self.cert_file:
            out.append(("tls.cert", self.cert_file))
        if self.key_file:
            out.append(("tls.key", self.key_file))
        for i, lc in enumerate(self.listeners):
            if lc.cert_file:
                out.append((f"listeners[{i}].cert", lc.cert_file))
            if lc.key_file:
                out.append((f"listeners[{i}].key", lc.key_file))
        if self.upstream is not None and self.upstream.ca_file:
            out.append(("upstream.ca", self.upstream.ca_file))
        return out


def read(path: str | Path) -> dict[str, Any]:
    """The TOML file as a mapping (ConfigError when it is missing or not TOML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("", f"config file {p}: not found (give a TOML file)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("", f"config file {p}: cannot read it: {exc}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"config file {p}: not valid TOML: {exc}") from None


def load(path: str | Path) -> FileSettings:
    return from_mapping(read(path), path=str(path))


def from_mapping(data: Mapping[str, Any], *, path: str | None = None) -> FileSettings:
    """Check every key of a parsed file and build its settings."""
    _keys(data, "", _TOP)
    out: dict[str, Any] = {"path": path}
    if "metrics" in data:
        out["metrics"] = _endpoint(data["metrics"], "metrics")  # "HOST:PORT"
    if "control_socket" in data:
        out["control_socket"] = _nonempty(data["control_socket"], "control_socket")
    if "logging" in data:
        log = data["logging"]
        _keys(log, "logging", {"level": str})
        if "level" in log:
            out["log_level"] = _choice(log["level"].upper(), "logging.level", LOG_LEVELS)
    if "tls" in data:
        tls = data["tls"]
        _keys(tls, "tls", {"cert": str, "key": str, "require_tls_for_login": bool})
        out["cert_file"] = tls.get("cert")
        out["key_file"] = tls.get("key")
        out["require_tls_for_login"] = tls.get("require_tls_for_login")
    if "listeners" in data:
        out["listeners"] = tuple(
            _listener(table, f"listeners[{i}]") for i, table in enumerate(data["listeners"])
        )
        _check_listener_certs(out["listeners"], out.get("cert_file"), out.get("key_file"))
    if "upstream" in data:
        out["upstream"] = _upstream(data["upstream"])
    if "limits" in data:
        limits = data["limits"]
        _keys(limits, "limits", {k: int for k in (*SESSION_LIMIT_KEYS, *WIRE_LIMIT_KEYS)})
        for key, value in limits.items():
            if value < 0:
                raise ConfigError(f"limits.{key}", f"expected a number >= 0; got {value}")
        session = {k: limits[k] for k in SESSION_LIMIT_KEYS if k in limits}
        if "busy_poll_us" in session:
            session["busy_poll"] = session.pop("busy_poll_us") / 1e6
        out["session_limits"] = session
        wire = {k: limits[k] for k in WIRE_LIMIT_KEYS if k in limits}
        if wire:
            try:
                out["limits"] = Limits(**wire)
            except ValueError as exc:  # "Limits.max_line_bytes must be at least 64"
                text = str(exc)
                name, _, rest = text.removeprefix("Limits.").partition(" ")
                if name in wire and rest:
                    raise ConfigError(f"limits.{name}", rest) from None
                raise ConfigError("limits", text) from None
    if "timeouts" in data:
        timeouts = data["timeouts"]
        _keys(timeouts, "timeouts", {k: (int, float) for k in TIMEOUT_KEYS})
        values: dict[str, float] = {}
        for key, value in timeouts.items():
            if not value > 0:
                raise ConfigError(f"timeouts.{key}", f"expected seconds > 0; got {value}")
            values[TIMEOUT_KEYS[key]] = float(value)
        out["timeouts"] = values
    if "filters" in data:
        filters = data["filters"]
        if not isinstance(filters, list):
            raise ConfigError("filters", "expected an array of tables ([[filters]])")
        for i, table in enumerate(filters):
            if not isinstance(table, dict):
                raise ConfigError(f"filters[{i}]", "expected a table ([[filters]])")
        out["filters"] = tuple(filters)
    return FileSettings(**out)


def timeouts_with(base: Timeouts, values: Mapping[str, float]) -> Timeouts:
    return dataclasses.replace(base, **values) if values else base


def session_limits_with(base: SessionLimits, values: Mapping[str, Any]) -> SessionLimits:
    return dataclasses.replace(base, **values) if values else base


# ----------------------------------------------------------------------------- pieces


def _listener(table: Any, path: str) -> ListenerConfig:
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table ([[listeners]])")
    trusted = table.get("proxy_trusted", [])
    if not isinstance(trusted, list):
        raise ConfigError(
            f"{path}.proxy_trusted",
            f'expected an array of networks such as ["10.0.0.0/8"]; got {trusted!r}',
        )
    _keys(table, path, {"address": str, "tls": str, "cert": str, "key": str, "name": str,
                        "proxy_protocol": str, "proxy_trusted": list})  # fmt: skip
    if "address" not in table:
        raise ConfigError(f"{path}.address", 'missing (e.g. address = "127.0.0.1:1143")')
    proxy_protocol, proxy_trusted = _proxy_in(table, path)
    endpoint = _endpoint(table["address"], f"{path}.address")
    mode = _choice(table.get("tls", "starttls"), f"{path}.tls", LISTENER_TLS)
    if ("cert" in table) != ("key" in table):
        raise ConfigError(path, "cert and key go together")
    name = table.get("name")
    if name is not None:
        name = _nonempty(name, f"{path}.name")
    return ListenerConfig(
        endpoint,
        implicit_tls=mode == "implicit",
        starttls=mode != "none",
        cert_file=table.get("cert"),
        key_file=table.get("key"),
        label=name,
        proxy_protocol=proxy_protocol,
        proxy_trusted=proxy_trusted,
    )


def _proxy_in(
    table: Mapping[str, Any], path: str
) -> tuple[str, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    mode = _choice(table.get("proxy_protocol", "off"), f"{path}.proxy_protocol", PROXY_IN)
    nets = []
    for i, text in enumerate(table.get("proxy_trusted", [])):
        where = f"{path}.proxy_trusted[{i}]"
        if not isinstance(text, str):
            raise ConfigError(where, f'expected a network such as "10.0.0.0/8"; got {text!r}')
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ConfigError(
                where, f'expected a network such as "10.0.0.0/8" or "::1/128"; got {text!r}'
            ) from None
    if mode != "off" and not nets:
        raise ConfigError(
            f"{path}.proxy_trusted",
            f'proxy_protocol = "{mode}" needs the networks allowed to send the header '
            '(those of your load balancers, e.g. proxy_trusted = ["10.0.0.0/8"])',
        )
    if mode == "off" and nets:
        raise ConfigError(
            f"{path}.proxy_trusted", 'only meaningful with proxy_protocol = "v1" or "v2"'
        )
    return mode, tuple(nets)


def _check_listener_certs(
    listeners: tuple[ListenerConfig, ...], cert: str | None, key: str | None
) -> None:
    for i, lc in enumerate(listeners):
        if lc.implicit_tls and not (lc.cert_file or cert):
            raise ConfigError(
                f"listeners[{i}]",
                'tls = "implicit" needs a certificate: cert and key here or in [tls] '
                "(imapproxy certs init makes a development one)",
            )


def _upstream(table: Any) -> UpstreamConfig:
    path = "upstream"
    _keys(table, path, {"address": str, "tls": str, "ca": str, "name": str, "insecure": bool,
                        "proxy_protocol": str, "id_forwarding": bool})  # fmt: skip
    if "address" not in table:
        raise ConfigError(f"{path}.address", 'missing (e.g. address = "imap.example.net:993")')
    tls = _choice(table.get("tls", "none"), f"{path}.tls", [m.value for m in UpstreamTls])
    return UpstreamConfig(
        endpoint=_endpoint(table["address"], f"{path}.address"),
        tls=UpstreamTls(tls),
        ca_file=table.get("ca"),
        insecure=table.get("insecure", False),
        server_hostname=table.get("name"),
        proxy_protocol=_choice(
            table.get("proxy_protocol", "off"), f"{path}.proxy_protocol", PROXY_OUT
        ),
        id_forwarding=table.get("id_forwarding", False),
    )


def _keys(table: Any, path: str, allowed: Mapping[str, type | tuple[type, ...]]) -> None:
    if not isinstance(table, dict):
        raise ConfigError(path, "expected a table")
    for key, value in table.items():
        where = f"{path}.{key}" if path else key
        if key not in allowed:
            raise ConfigError(where, f"unknown key (known: {', '.join(sorted(allowed))})")
        want = allowed[key]
        wants_number = want in (int, float, (int, float))
        if (isinstance(value, bool) and wants_number) or not isinstance(value, want):
            hint = _HINTS.get(where, "")
            raise ConfigError(where, f"expected {_type_name(want)}{hint}; got {value!r}")


_HINTS = {"metrics": ' "HOST:PORT"', "control_socket": " (a path)"}
_HINTS.update({f"{t}.address": ' "HOST:PORT"' for t in ("upstream",)})


def _type_name(want: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "a table", list: "an array of tables"}  # fmt: skip
    if isinstance(want, tuple):
        return "a number" if set(want) == {int, float} else " or ".join(names[t] for t in want)
    return names.get(want, want.__name__)


def _choice(value: str, path: str, choices: Any) -> str:
    if value not in choices:
        raise ConfigError(path, f"expected one of {', '.join(choices)}; got {value!r}")
    return value


def _nonempty(value: str, path: str) -> str:
    if not value.strip():
        raise ConfigError(path, "must not be empty")
    return value


def _endpoint(value: str, path: str) -> Endpoint:
    if "://" in value:
        raise ConfigError(path, f"expected HOST:PORT, not a URL; got {value!r}")
    try:
        return Endpoint.parse(value)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
