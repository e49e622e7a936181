"""Flags over the configuration file: what ``imapproxy run`` (and ``check``) run with.

A flag given on the command line wins; else the config file's key; else the default.
"Given" is told apart from "left at its default" by parsing the subcommand's arguments a
second time with every default replaced by a marker (so ``--max-sessions 10000`` wins over
a file's 500 even though 10000 is the default).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from typing import Any

from . import settings
from .config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    SessionLimits,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from .settings import FileSettings
from .wire.limits import DEFAULT_LIMITS

# With neither --listen nor --listen-tls nor [[listeners]]: loopback only, so a first try
# exposes nothing.
DEFAULT_LISTEN = "127.0.0.1:1143"


class MissingUpstream(ValueError):
    """Neither ``--upstream`` nor ``[upstream]``: a usage error (the usage is shown)."""


class _Unset:
    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()


def given_flags(subparser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """The destinations of the options given in ``argv`` (the subcommand's arguments)."""
    saved = [(action, action.default) for action in subparser._actions]
    for action, _ in saved:
        # (an append action starts from its default: None, not a marker it would copy)
        action.default = None if isinstance(action, argparse._AppendAction) else _UNSET
    try:
        namespace, _ = subparser.parse_known_args(list(argv))
    finally:
        for action, default in saved:
            action.default = default
    dests = {action.dest for action, _ in saved}
    return {dest for dest, value in vars(namespace).items()
            if dest in dests and value is not _UNSET and value is not None}  # fmt: skip


def load_file(args: argparse.Namespace) -> FileSettings:
    """The config file's settings (empty when no ``--config``)."""
    return settings.load(args.config) if getattr(args, "config", None) else FileSettings()


def upstream_config(
    args: argparse.Namespace, given: set[str], file: FileSettings
) -> UpstreamConfig:
    base = file.upstream
    if "upstream" in given or base is None:
        if not getattr(args, "upstream", None):
            raise MissingUpstream(
                "the following arguments are required: --upstream (or [upstream] in the "
                "--config file)"
            )
        base = UpstreamConfig(endpoint=Endpoint.parse(args.upstream))
        given = given | {"upstream_tls", "upstream_ca", "upstream_insecure", "upstream_name"}
    changes: dict[str, Any] = {}
    if "upstream_tls" in given:
        changes["tls"] = UpstreamTls(args.upstream_tls)
    if "upstream_ca" in given:
        changes["ca_file"] = args.upstream_ca
    if "upstream_insecure" in given:
        changes["insecure"] = args.upstream_insecure
    if "upstream_name" in given:
        changes["server_hostname"] = args.upstream_name
    if getattr(args, "tls_keylog_upstream", None):
        changes["keylog_file"] = args.tls_keylog_upstream
    return dataclasses.replace(base, **changes)


def proxy_config(
    args: argparse.Namespace, given: set[str], file: FileSettings
) -> tuple[ProxyConfig, bool]:
    """The effective configuration, and whether the default listener is used."""
    default_listener = False
    if args.listen or args.listen_tls:
        listeners = [ListenerConfig(Endpoint.parse(a), implicit_tls=False) for a in args.listen]
        listeners += [
            ListenerConfig(Endpoint.parse(a), implicit_tls=True) for a in args.listen_tls
        ]
    elif file.listeners:
        listeners = list(file.listeners)
    else:
        listeners = [ListenerConfig(Endpoint.parse(DEFAULT_LISTEN), implicit_tls=False)]
        default_listener = True

    def pick(dest: str, file_value: Any) -> Any:
        if dest in given or file_value is None:
            return getattr(args, dest)
        return file_value

    timeouts = settings.timeouts_with(Timeouts(), file.timeouts)
    flag_timeouts = {
        "idle_timeout": "idle_authenticated",
        "login_timeout": "login_timeout",
        "answer_timeout": "answer_timeout",
        "shutdown_drain": "shutdown_drain",
    }
    timeouts = dataclasses.replace(
        timeouts,
        **{field: getattr(args, dest) for dest, field in flag_timeouts.items()
           if dest in given or field not in file.timeouts},
    )  # fmt: skip
    if not timeouts.login_timeout > 0:  # also refuses NaN
        raise ValueError(f"--login-timeout must be positive, not {timeouts.login_timeout:g}")
    limits = settings.session_limits_with(SessionLimits(), file.session_limits)
    flag_limits = {
        "max_sessions": ("max_sessions", lambda v: v),
        "max_sessions_per_address": ("max_sessions_per_address", lambda v: v),
        "busy_poll_us": ("busy_poll", lambda v: max(0.0, v) / 1e6),
    }
    limits = dataclasses.replace(
        limits,
        **{field: conv(getattr(args, dest)) for dest, (field, conv) in flag_limits.items()
           if dest in given or field not in file.session_limits},
    )  # fmt: skip
    cert, key = args.cert, args.key
    if "cert" not in given and "key" not in given:
        cert, key = file.cert_file, file.key_file
    require = args.require_tls_for_login or bool(file.require_tls_for_login)
    config = ProxyConfig(
        listeners=tuple(listeners),
        upstream=upstream_config(args, given, file),
        cert_file=cert,
        key_file=key,
        require_tls_for_login=require,
        keylog_client=args.tls_keylog_client,
        limits=file.limits or DEFAULT_LIMITS,
        timeouts=timeouts,
        session_limits=limits,
        control_socket=pick("control_socket", file.control_socket),
    )
    return config, default_listener


def metrics_address(args: argparse.Namespace, file: FileSettings) -> Endpoint | None:
    if getattr(args, "metrics", None):
        return Endpoint.parse(args.metrics)
    return file.metrics
