"""Command line: ``imapproxy run|check|certs|reload|tail ...`` (the composition root:
config, filters, signals: SIGTERM/SIGINT stop, SIGUSR1 reopens files, SIGHUP reloads).

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

from . import cli_certs, cli_check, cli_config, cli_reload, configfile, tail
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
from .settings import FileSettings
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
        metavar="HOST:PORT",
        help="the IMAP server (e.g. imap.example.net:993, [::1]:143); required unless the "
        "config file has [upstream]",
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
        "--pid-file",
        metavar="PATH",
        help="write the pid here (removed at exit), for imapproxy reload (default: none)",
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
        help="validate a config file, or connect to the upstream once",
        description="With --config: validate the file (each mistake named by its key "
        "path, exit 2), warn about files it names that cannot be read yet, and print the "
        "effective configuration as TOML.  With --upstream (or --connect): connect to the "
        "upstream once, as a session would, and report its greeting, TLS (version, "
        "certificate) and capabilities; exit 0 if it answers as an IMAP server, else 1.",
        common=common,
    )
    check.set_defaults(handler=_cmd_check)
    check.add_argument("--config", metavar="FILE", help="the TOML configuration file to check")
    check.add_argument(
        "--strict",
        action="store_true",
        help="files the configuration names that cannot be read yet are errors, not warnings",
    )
    check.add_argument(
        "--connect",
        action="store_true",
        help="also connect to the configured upstream once and report what it offers",
    )
    add_upstream_args(check)

    cli_certs.add_parser(
        lambda name, help: subparser(sub, name, help=help, common=common), common
    )

    cli_reload.add_parser(lambda name, **kw: subparser(sub, name, common=common, **kw))

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


def filters_from_args(args: argparse.Namespace, file: FileSettings | None = None) -> FilterChain:
    """The configured filter chain: the config file's, then ``--transcript``'s."""
    if file is None:
        file = cli_config.load_file(args)
    return configfile.chain_from_tables(filter_tables(args, file))


def filter_tables(args: argparse.Namespace, file: FileSettings) -> list[dict[str, Any]]:
    """The ``[[filters]]`` tables of the chain: the config file's, then ``--transcript``'s."""
    tables: list[dict[str, Any]] = [dict(t) for t in file.filters]
    if args.transcript:
        tables.append(
            {"use": "transcript", "name": "--transcript", "path": "-", "format": "text",
             "on_error": "open"}
        )  # fmt: skip
    return tables


def upstream_from_args(args: argparse.Namespace) -> UpstreamConfig:
    return cli_config.upstream_config(args, set(), FileSettings())


def config_from_args(
    args: argparse.Namespace, file: FileSettings | None = None, given: set[str] | None = None
) -> ProxyConfig:
    """The effective configuration: flags (``given``: the ones on the command line; None:
    all of them) over the config file over the defaults."""
    if file is None:
        file = cli_config.load_file(args)
    if given is None:
        given = {dest for dest, value in vars(args).items() if value is not None}
    config, _ = cli_config.proxy_config(args, given, file)
    if config.timeouts.idle_authenticated < 1800:
        log.warning(
            "--idle-timeout %.0f is below the 30 minutes RFC 9051 §5.4 requires",
            config.timeouts.idle_authenticated,
        )
    return config


async def _run(
    proxy: Proxy,
    default_listener: bool = False,
    reload: Callable[[], cli_reload.Reloaded] | None = None,
) -> None:
    await proxy.bind()  # before the nursery: a port in use is one clean error
    if default_listener:
        log.info("no --listen or --listen-tls given: the plain listener is %s", DEFAULT_LISTEN)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        wanted = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGHUP)
        with trio.open_signal_receiver(*wanted) as signals:
            async for signum in signals:
                if signum == signal.SIGUSR1:  # logrotate moved the transcript: reopen it
                    log.info("got SIGUSR1: reopening files")
                    proxy.reopen()
                    continue
                if signum == signal.SIGHUP:
                    if reload is None:
                        log.warning("got SIGHUP: nothing to reload (no --config)")
                    else:
                        log.info("got SIGHUP: reloading the configuration")
                        try:
                            await proxy.reload(reload)
                        except Exception as exc:  # a bug: the proxy keeps serving
                            log.error("reload failed half-way: %s: %s (restart the proxy, "
                                      "and report it)", type(exc).__name__,
                                      safe(exc, MAX_DETAIL))  # fmt: skip
                    continue
                log.info("got %s: shutting down", signal.Signals(signum).name)
                proxy.shutdown()
                break


def _cmd_run(args: argparse.Namespace) -> int:
    file = cli_config.load_file(args)
    given = cli_config.given_flags(args.subparser, args.sub_argv)
    if file.log_level and "log_level" not in given:
        logging.getLogger().setLevel(file.log_level)
    metrics = server = None
    at = cli_config.metrics_address(args, file)
    if at is not None:
        registry = CollectorRegistry()  # the proxy's own, never the global one
        metrics = ProxyMetrics(registry)
        server = MetricsServer(at, registry)
    built, default_listener, _ = cli_reload.build(args, given, filter_tables, metrics, file)
    config = built.config
    if config.timeouts.idle_authenticated < 1800:
        log.warning(
            "the idle timeout %.0f s is below the 30 minutes RFC 9051 §5.4 requires",
            config.timeouts.idle_authenticated,
        )
    proxy = Proxy(config, filters=built.chain, events=metrics, keys=built.keys)
    reload = None
    if args.config:  # (the same code path as above, with the same flags)
        reload = cli_reload.reloader(args, given, filter_tables, metrics, file)
    if args.check_upstream:
        report = trio.run(check_upstream, config)
        print(report.text(), file=sys.stderr, flush=True)
        if not report.ok:
            return 1
    if server is not None:
        server.start()  # a port in use: OSError, one line, exit 2
    tune_malloc()
    try:
        with cli_reload.pid_file(args.pid_file):
            trio.run(_run, proxy, default_listener, reload)
    finally:
        if server is not None:
            server.close()
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    if not args.config and not args.upstream:
        args.subparser.error("give --config FILE (to check it) or --upstream HOST:PORT")
    if args.config:
        config, status = _check_config(args)
        if status or not args.connect:
            return status
    else:
        config = ProxyConfig(
            # never opened: the check only connects to the upstream
            listeners=(ListenerConfig(Endpoint.parse(DEFAULT_LISTEN), implicit_tls=False),),
            upstream=upstream_from_args(args),
        )
    report = trio.run(check_upstream, config)
    print(report.text(), flush=True)
    return 0 if report.ok else 1


def _check_config(args: argparse.Namespace) -> tuple[ProxyConfig, int]:
    """Validate ``--config`` (a mistake raises: one line, exit 2) with the run defaults
    and the check's own flags over it; print the effective configuration."""
    file = cli_config.load_file(args)
    run_args, _ = args.run_parser.parse_known_args([])
    given = cli_config.given_flags(args.subparser, args.sub_argv)
    for dest in given:
        setattr(run_args, dest, getattr(args, dest))
    config, _ = cli_config.proxy_config(run_args, given, file)
    configfile.chain_from_tables([dict(t) for t in file.filters])  # each filter's options
    problems = cli_check.file_problems(file, config)
    for problem in problems:
        print(f"{args.subparser.prog}: {'error' if args.strict else 'warning'}: {problem}",
              file=sys.stderr)  # fmt: skip
    text = cli_check.effective_toml(
        config,
        file.filters,
        metrics=cli_config.metrics_address(run_args, file),
        log_level=file.log_level or "INFO",
    )
    print(text, end="", flush=True)
    return config, (2 if problems and args.strict else 0)


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
    all_argv = list(sys.argv[1:] if argv is None else argv)
    # the subcommand's own arguments (what came after its name), to tell given flags
    args.sub_argv = all_argv[all_argv.index(args.command) + 1 :]
    handler: Callable[[argparse.Namespace], int] = args.handler
    prog = args.subparser.prog
    try:
        return handler(args)
    except cli_config.MissingUpstream as exc:
        args.subparser.error(str(exc))  # (with the usage, like argparse's own)
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
