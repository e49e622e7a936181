"""``imapproxy check --config FILE``: validate a configuration and print what it comes to.

Every mistake in the file is one line naming the key path (exit status 2).  Files it
names that cannot be read yet (certificates not made yet) are warnings that say how to
make them; ``--strict`` makes them errors.  The effective configuration is printed as
TOML (flags over the file over the defaults), which is itself a valid config file;
values under keys that look like secrets are masked.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .config import Endpoint, ProxyConfig
from .net.tls import server_context
from .settings import TIMEOUT_KEYS, FileSettings

_SECRET_KEY = re.compile(r"pass|secret|token|credential", re.IGNORECASE)
MASK = "***"


def file_problems(file: FileSettings, config: ProxyConfig) -> list[str]:
    """What is wrong with the files the configuration names (missing, unreadable, not a
    PEM certificate and its key), each one line naming the key path and what to do."""
    problems: list[str] = []
    paths = dict(file.files())
    # the flags' files, where they replaced the file's
    if config.cert_file and config.cert_file != file.cert_file:
        paths["--cert"] = config.cert_file
    if config.key_file and config.key_file != file.key_file:
        paths["--key"] = config.key_file
    if config.upstream.ca_file and config.upstream.ca_file not in paths.values():
        paths["--upstream-ca"] = config.upstream.ca_file
    missing = set()
    for where, path in paths.items():
        if not os.path.exists(path):
            missing.add(path)
            hint = (
                f"make a development certificate with: imapproxy certs init --dir "
                f"{os.path.dirname(path) or '.'}"
                if not where.endswith(".ca") and where != "--upstream-ca"
                else "give the CA certificate (PEM) that signed the upstream's"
            )
            problems.append(f"{where}: {path}: not found yet ({hint})")
        elif not os.access(path, os.R_OK):
            missing.add(path)
            problems.append(f"{where}: {path}: cannot be read by this user")
    seen: set[tuple[str, str]] = set()
    for lc in config.listeners:
        pair = config.certificate(lc)
        if pair is None or pair in seen or missing & set(pair):
            continue
        seen.add(pair)
        try:
            server_context(*pair)
        except OSError as exc:
            problems.append(f"listener {lc.name}: {exc}")
    return problems


def effective_toml(
    config: ProxyConfig,
    filters: Sequence[Mapping[str, Any]],
    *,
    metrics: Endpoint | None,
    log_level: str,
) -> str:
    """The effective configuration as a config file (TOML)."""
    lines = ["# the effective configuration: flags over the config file over the defaults"]
    if metrics is not None:
        lines.append(f"metrics = {_value(str(metrics))}")
    if config.control_socket:
        lines.append(f"control_socket = {_value(config.control_socket)}")
    lines += ["", "[logging]", f"level = {_value(log_level)}"]
    tls: dict[str, Any] = {"require_tls_for_login": config.require_tls_for_login}
    if config.cert_file and config.key_file:
        tls = {"cert": config.cert_file, "key": config.key_file, **tls}
    lines += ["", "[tls]", *_pairs(tls)]
    for lc in config.listeners:
        table: dict[str, Any] = {
            "address": str(lc.endpoint),
            "tls": "implicit" if lc.implicit_tls else "starttls" if lc.starttls else "none",
            "name": lc.name,
        }
        if lc.cert_file and lc.key_file:
            table.update(cert=lc.cert_file, key=lc.key_file)
        table["proxy_protocol"] = lc.proxy_protocol
        if lc.proxy_trusted:
            table["proxy_trusted"] = [str(net) for net in lc.proxy_trusted]
        lines += ["", "[[listeners]]", *_pairs(table)]
    up = config.upstream
    upstream: dict[str, Any] = {"address": str(up.endpoint), "tls": up.tls.value}
    if up.ca_file:
        upstream["ca"] = up.ca_file
    if up.server_hostname:
        upstream["name"] = up.server_hostname
    upstream["insecure"] = up.insecure
    upstream["proxy_protocol"] = up.proxy_protocol
    upstream["id_forwarding"] = up.id_forwarding
    lines += ["", "[upstream]", *_pairs(upstream)]
    limits = {
        "max_sessions": config.session_limits.max_sessions,
        "max_sessions_per_address": config.session_limits.max_sessions_per_address,
        "read_size": config.session_limits.read_size,
        "guarded_read_size": config.session_limits.guarded_read_size,
        "busy_poll_us": round(config.session_limits.busy_poll * 1e6),
        **dataclasses.asdict(config.limits),
    }
    lines += ["", "[limits]", *_pairs(limits)]
    timeouts = {key: getattr(config.timeouts, field) for key, field in TIMEOUT_KEYS.items()}
    lines += ["", "[timeouts]", *_pairs(timeouts)]
    for table in filters:
        lines += ["", "[[filters]]", *_pairs(_masked(table))]
    return "\n".join(lines) + "\n"


def _masked(value: Any, key: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: _masked(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v, key) for v in value]
    if key and _SECRET_KEY.search(key) and isinstance(value, str):
        return MASK
    return value


def _pairs(table: Mapping[str, Any]) -> list[str]:
    return [f"{_key(k)} = {_value(v)}" for k, v in table.items()]


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value) or math.isnan(value):
            return "inf" if value > 0 else "nan" if math.isnan(value) else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string is a JSON string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))
