"""Command line: ``imapproxy run|check|certs ...`` (the composition root: config, filters,
signals).

Operator mistakes (a bad flag, a missing file, a port in use) end with one line that names
what failed and what to do, exit status 2, and no traceback unless ``--debug``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import trio
from prometheus_client import CollectorRegistry

from . import cli_certs, configfile, tail
from .cli_parsing import HelpFormatter, package_version, parse_args, subparser
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
from .logsafe import MAX_DETAIL, safe
from .metrics import MetricsServer, ProxyMetrics
from .net.malloc import tune_malloc
from .relay.server import Proxy
from .upstream_check import check_upstream

_TIMEOUTS = Timeouts()
_LIMITS = SessionLimits()
# With neither --listen nor --listen-tls: loopback only, so a first try exposes nothing.
DEFAULT_LISTEN = "127.0.0.1:1143"

log = logging.getLogger("imapproxy")


def add_upstream_args(parser: argparse.ArgumentParser) -> None:
    """The upstream's flags (``run`` and ``check``)."""
    parser.add_argument(
        "--upstream",
        required=True,
        metavar="HOST:PORT",
        help="the IMAP server (e.g. imap.example.net:993, [::1]:143)",
    )
    parser.add_argument(
        "--upstream-tls",
        choices=[m.value for m in UpstreamTls],
        default="none",
        help="TLS to the upstream: implicit (port 993), starttls (port 143) or none",
    )
    parser.add_argument(
        "--upstream-ca", metavar="FILE", help="CA bundle for the upstream (default: the system's)"
    )
    parser.add_argument(
        "--upstream-insecure",
        action="store_true",
        help="do not verify the upstream's certificate (logged as a warning)",
    )
    parser.add_argument(
        "--upstream-name",
        metavar="NAME",
        help="name to send as SNI and verify the upstream certificate against (default: host)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imapproxy",
        description="IMAP proxy and traffic inspector",
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"imapproxy {package_version()}",
        help="print the version and exit",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the traceback with an error (for bug reports)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    run = subparser(
        sub,
        "run",
        help="run the proxy",
        description="Run the proxy: listeners for clients, one upstream IMAP server.",
        common=common,
    )
    run.set_defaults(handler=_cmd_run)
    run.add_argument(
        "--listen",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="plain IMAP listener (offers STARTTLS when --cert is given); repeatable "
        f"(default: {DEFAULT_LISTEN} when --listen-tls is not given either)",
    )
    run.add_argument(
        "--listen-tls",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="implicit-TLS listener (port 993 style); repeatable",
    )
    run.add_argument(
        "--cert", metavar="FILE", help="server certificate chain (PEM; imapproxy certs init)"
    )
    run.add_argument("--key", metavar="FILE", help="server private key (PEM, unencrypted)")
    add_upstream_args(run)
    run.add_argument(
        "--check-upstream",
        action="store_true",
        help="before serving, connect to the upstream once and report its greeting, TLS "
        "and capabilities; exit 1 if that fails",
    )
    run.add_argument(
        "--require-tls-for-login",
        action="store_true",
        help="refuse LOGIN/AUTHENTICATE on plaintext client connections (LOGINDISABLED)",
    )
    run.add_argument(
        "--max-sessions",
        type=int,
        default=_LIMITS.max_sessions,
        metavar="N",
        help="sessions at once; more connections get * BYE [UNAVAILABLE]",
    )
    run.add_argument(
        "--max-sessions-per-address",
        type=int,
        default=_LIMITS.max_sessions_per_address,
        metavar="N",
        help="sessions at once from one client address",
    )
    run.add_argument(
        "--busy-poll-us",
        type=float,
        default=_LIMITS.busy_poll * 1e6,
        metavar="N",
        help="microseconds the event loop polls instead of sleeping after each send, "
        "which saves a slow wake-up when the answer comes soon (0: off; default: "
        "%(default).0f)",
    )
    run.add_argument(
        "--idle-timeout",
        type=float,
        default=_TIMEOUTS.idle_authenticated,
        metavar="SECONDS",
        help="idle timeout once authenticated (RFC 9051: at least 1800; default: "
        "%(default).0f)",
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
        "long (the idle timeout does not run while a command is in progress; default: "
        "%(default).0f)",
    )
    run.add_argument(
        "--shutdown-drain",
        type=float,
        default=_TIMEOUTS.shutdown_drain,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, how long sessions may finish before BYE (default: "
        "%(default).0f)",
    )
    run.add_argument(
        "--tls-keylog-client",
        metavar="FILE",
        help="append the TLS secrets of client connections to FILE (SSLKEYLOGFILE format, "
        "for Wireshark); anyone with the file can decrypt them (default: off)",
    )
    run.add_argument(
        "--tls-keylog-upstream",
        metavar="FILE",
        help="the same for the connections to the upstream (default: off)",
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
        "--control-socket",
        metavar="PATH",
        help="Unix socket (mode 0600) where `imapproxy tail` attaches to watch live "
        "traffic (default: none)",
    )
    run.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (also: metrics = "
        '"HOST:PORT" in the config file)',
    )
    run.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="what the log on stderr shows",
    )

    check = subparser(
        sub,
        "check",
        help="connect to the upstream once and report what it offers",
        description="Connect to the upstream once, as a session would, and report its "
        "greeting, TLS (version, certificate) and capabilities; exit 0 if it answers as "
        "an IMAP server, else 1.",
        common=common,
    )
    check.set_defaults(handler=_cmd_check)
    add_upstream_args(check)

    cli_certs.add_parser(
        lambda name, help: subparser(sub, name, help=help, common=common), common
    )

    tail_parser = subparser(
        sub,
        "tail",
        help="watch a running proxy's traffic, or follow a transcript file",
        common=common,
    )
    tail.add_arguments(tail_parser)
    tail_parser.set_defaults(handler=tail.run)
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


def upstream_from_args(args: argparse.Namespace) -> UpstreamConfig:
    return UpstreamConfig(
        endpoint=Endpoint.parse(args.upstream),
        tls=UpstreamTls(args.upstream_tls),
        ca_file=args.upstream_ca,
        insecure=args.upstream_insecure,
        server_hostname=args.upstream_name,
        keylog_file=getattr(args, "tls_keylog_upstream", None),
    )


def config_from_args(args: argparse.Namespace) -> ProxyConfig:
    listeners = [ListenerConfig(Endpoint.parse(a), implicit_tls=False) for a in args.listen]
    listeners += [ListenerConfig(Endpoint.parse(a), implicit_tls=True) for a in args.listen_tls]
    if not listeners:  # logged once it listens (an error before is the only line)
        listeners = [ListenerConfig(Endpoint.parse(DEFAULT_LISTEN), implicit_tls=False)]
    upstream = upstream_from_args(args)
    if not args.login_timeout > 0:  # also refuses NaN
        raise ValueError(f"--login-timeout must be positive, not {args.login_timeout:g}")
    if args.idle_timeout < 1800:
        log.warning(
            "--idle-timeout %.0f is below the 30 minutes RFC 9051 §5.4 requires", args.idle_timeout
        )
    return ProxyConfig(
        listeners=tuple(listeners),
        upstream=upstream,
        cert_file=args.cert,
        key_file=args.key,
        require_tls_for_login=args.require_tls_for_login,
        keylog_client=args.tls_keylog_client,
        timeouts=Timeouts(
            idle_authenticated=args.idle_timeout,
            login_timeout=args.login_timeout,
            answer_timeout=args.answer_timeout,
            shutdown_drain=args.shutdown_drain,
        ),
        control_socket=args.control_socket,
        session_limits=SessionLimits(
            max_sessions=args.max_sessions,
            max_sessions_per_address=args.max_sessions_per_address,
            busy_poll=max(0.0, args.busy_poll_us) / 1e6,
        ),
    )


async def _run(proxy: Proxy, default_listener: bool = False) -> None:
    await proxy.bind()  # before the nursery: a port in use is one clean error
    if default_listener:
        log.info("no --listen or --listen-tls given: the plain listener is %s", DEFAULT_LISTEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGUSR1) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:  # logrotate moved the transcript: reopen it
                    log.info("got SIGUSR1: reopening files")
                    proxy.reopen()
                    continue
                log.info("got %s: shutting down", signal.Signals(signum).name)
                proxy.shutdown()
                break


def _cmd_run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    chain = filters_from_args(args)
    metrics = server = None
    at = args.metrics or (configfile.load_metrics(args.config) if args.config else None)
    if at is not None:
        registry = CollectorRegistry()  # the proxy's own, never the global one
        metrics = ProxyMetrics(registry)
        chain = metrics.observe(chain)
        server = MetricsServer(Endpoint.parse(str(at)), registry)
    proxy = Proxy(config, filters=chain, events=metrics)
    if args.check_upstream:
        report = trio.run(check_upstream, config)
        print(report.text(), file=sys.stderr, flush=True)
        if not report.ok:
            return 1
    if server is not None:
        server.start()  # a port in use: OSError, one line, exit 2
    tune_malloc()
    try:
        trio.run(_run, proxy, not (args.listen or args.listen_tls))
    finally:
        if server is not None:
            server.close()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    upstream = upstream_from_args(args)
    config = ProxyConfig(
        # never opened: the check only connects to the upstream
        listeners=(ListenerConfig(Endpoint.parse(DEFAULT_LISTEN), implicit_tls=False),),
        upstream=upstream,
    )
    report = trio.run(check_upstream, config)
    print(report.text(), flush=True)
    return 0 if report.ok else 1


def log_unraisable(unraisable: Any) -> None:
    """Errors Python can only report, not raise (e.g. a client's TLS handshake with a
    server name that is not ASCII fails inside ``ssl`` before our SNI callback runs):
    one escaped log line, not a multi-line traceback on stderr that a client can cause
    at will."""
    exc = unraisable.exc_value
    logging.getLogger("imapproxy").warning(
        "ignored error%s: %s: %s",
        f" ({unraisable.err_msg})" if getattr(unraisable, "err_msg", None) else "",
        type(exc).__name__ if exc is not None else "?",
        safe(exc, MAX_DETAIL),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.debug:
        sys.unraisablehook = log_unraisable
    handler: Callable[[argparse.Namespace], int] = args.handler
    prog = args.subparser.prog
    try:
        return handler(args)
    except (ValueError, OSError) as exc:  # ConfigError is a ValueError, ListenError an OSError
        # an operator's mistake: one line that names it, no usage block, no traceback
        if args.debug:
            traceback.print_exc()
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"{prog}: internal error: {type(exc).__name__}: {exc} (run again with --debug "
            "for the traceback, and report it)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
