"""Command line: ``imapproxy run ...`` (the composition root: config, filters, signals)."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from . import configfile
from .config import (
    Endpoint,
    ListenerConfig,
    ProxyConfig,
    SessionLimits,
    Timeouts,
    UpstreamConfig,
    UpstreamTls,
)
from .filters.chain import FilterChain
from .metrics import MetricsServer, ProxyMetrics
from .net.malloc import tune_malloc
from .relay.server import Proxy

_TIMEOUTS = Timeouts()
_LIMITS = SessionLimits()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imapproxy", description="IMAP proxy and inspector")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the proxy")
    run.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="plain IMAP listener (offers STARTTLS when --cert is given); repeatable",
    )
    run.add_argument(
        "--listen-tls",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="implicit-TLS listener (port 993 style); repeatable",
    )
    run.add_argument("--cert", metavar="FILE", help="server certificate chain (PEM)")
    run.add_argument("--key", metavar="FILE", help="server private key (PEM)")
    run.add_argument("--upstream", required=True, metavar="HOST:PORT", help="IMAP server")
    run.add_argument(
        "--upstream-tls",
        choices=[m.value for m in UpstreamTls],
        default="none",
        help="TLS to the upstream: implicit, starttls or none (default: none)",
    )
    run.add_argument("--upstream-ca", metavar="FILE", help="CA bundle for the upstream")
    run.add_argument(
        "--upstream-insecure",
        action="store_true",
        help="do not verify the upstream's certificate (logged as a warning)",
    )
    run.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="name to send as SNI and verify the upstream certificate against (default: host)",
    )
    run.add_argument(
        "--require-tls-for-login",
        action="store_true",
        help="refuse LOGIN/AUTHENTICATE on plaintext client connections (LOGINDISABLED)",
    )
    run.add_argument("--max-sessions", type=int, default=_LIMITS.max_sessions)
    run.add_argument(
        "--busy-poll-us",
        type=float,
        default=_LIMITS.busy_poll * 1e6,
        help="microseconds the event loop polls instead of sleeping after each send, "
        "which saves a slow wake-up when the answer comes soon (0: off; default "
        "%(default).0f)",
    )
    run.add_argument(
        "--max-sessions-per-address", type=int, default=_LIMITS.max_sessions_per_address
    )
    run.add_argument(
        "--idle-timeout",
        type=float,
        default=_TIMEOUTS.idle_authenticated,
        metavar="SECONDS",
        help="idle timeout once authenticated (RFC 9051: at least 1800)",
    )
    run.add_argument(
        "--login-timeout",
        type=float,
        default=_TIMEOUTS.login_timeout,
        metavar="SECONDS",
        help="end a session not logged in this long after connecting, whatever it sends "
        "(the upstream's set-up time is not counted; default: %(default).0f)",
    )
    run.add_argument(
        "--answer-timeout",
        type=float,
        default=_TIMEOUTS.answer_timeout,
        metavar="SECONDS",
        help="end a session whose server, with a command in progress, stays silent this "
        "long (the idle timeout does not run while a command is in progress)",
    )
    run.add_argument(
        "--shutdown-drain",
        type=float,
        default=_TIMEOUTS.shutdown_drain,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long sessions may finish before BYE",
    )
    run.add_argument(
        "--transcript",
        action="store_true",
        help="print every command and response (secrets redacted) to stdout: shorthand "
        'for a [[filters]] use = "transcript", path = "-", format = "text"',
    )
    run.add_argument(
        "--config",
        metavar="FILE",
        help="TOML configuration file: the filter chain ([[filters]]); flags still "
        "configure the rest",
    )
    run.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (also: metrics = "
        '"HOST:PORT" in the config file)',
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(run_parser=run)
    return parser


def filters_from_args(args: argparse.Namespace) -> FilterChain:
    """The configured filter chain: the config file's, then ``--transcript``'s."""
    tables: list[dict[str, Any]] = []
    if args.config:
        tables += configfile.load_tables(args.config)
    if args.transcript:
        tables.append(
            {"use": "transcript", "name": "--transcript", "path": "-", "format": "text",
             "on_error": "open"}
        )  # fmt: skip
    return configfile.chain_from_tables(tables)


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    listeners = [ListenerConfig(Endpoint.parse(a), implicit_tls=False) for a in args.listen]
    listeners += [ListenerConfig(Endpoint.parse(a), implicit_tls=True) for a in args.listen_tls]
    if not listeners:
        raise ValueError("give at least one --listen or --listen-tls")
    upstream = UpstreamConfig(
        endpoint=Endpoint.parse(args.upstream),
        tls=UpstreamTls(args.upstream_tls),
        ca_file=args.upstream_ca,
        insecure=args.upstream_insecure,
        server_hostname=args.upstream_name,
    )
    if not args.login_timeout > 0:  # also refuses NaN
        raise ValueError(f"--login-timeout must be positive, not {args.login_timeout:g}")
    if args.idle_timeout < 1800:
        logging.getLogger("imapproxy").warning(
            "--idle-timeout %.0f is below the 30 minutes RFC 9051 §5.4 requires", args.idle_timeout
        )
    return ProxyConfig(
        listeners=tuple(listeners),
        upstream=upstream,
        cert_file=args.cert,
        key_file=args.key,
        require_tls_for_login=args.require_tls_for_login,
        timeouts=Timeouts(
            idle_authenticated=args.idle_timeout,
            login_timeout=args.login_timeout,
            answer_timeout=args.answer_timeout,
            shutdown_drain=args.shutdown_drain,
        ),
        session_limits=SessionLimits(
            max_sessions=args.max_sessions,
            max_sessions_per_address=args.max_sessions_per_address,
            busy_poll=max(0.0, args.busy_poll_us) / 1e6,
        ),
    )


async def _run(proxy: Proxy) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:  # logrotate moved the transcript: reopen it
                    logging.getLogger("imapproxy").info("got SIGUSR1: reopening files")
                    proxy.reopen()
                    continue
                logging.getLogger("imapproxy").info(
                    "got %s: shutting down", signal.Signals(signum).name
                )
                proxy.shutdown()
                break


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    server = None
    try:
        config = config_from_args(args)
        chain = filters_from_args(args)
        metrics = None
        at = args.metrics or (configfile.load_metrics(args.config) if args.config else None)
        if at is not None:
            registry = CollectorRegistry()  # the proxy's own, never the global one
            metrics = ProxyMetrics(registry)
            chain = metrics.observe(chain)
            server = MetricsServer(Endpoint.parse(str(at)), registry)
        proxy = Proxy(config, filters=chain, events=metrics)
        if server is not None:
            server.start()
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError
        # an operator's mistake: one line that names it, no usage block, no traceback
        print(f"imapproxy run: error: {exc}", file=sys.stderr)
        return 2
    tune_malloc()
    try:
        trio.run(_run, proxy)
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
