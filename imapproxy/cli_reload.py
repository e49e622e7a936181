"""Reload from the command line: what SIGHUP rebuilds, the pid file, ``imapproxy reload``.

A reload runs the start-up code path again (the config file read, flags over it, the chain
built and checked) with the flags of the original command line, so the same mistakes are
refused the same way.  Each chain entry gets a key (its whole ``[[filters]]`` table: name,
``use`` and options); an entry whose key is unchanged keeps its filter instances and, for a
transcript, its one writer (see :mod:`imapproxy.relay.reload`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

from . import cli_config, configfile
from .metrics import ProxyMetrics
from .relay.reload import Reloaded
from .settings import FileSettings

# The metrics' own observer entry: always the same filter, kept across reloads.
_METRICS_KEY = ("metrics",)


def filter_key(table: dict[str, Any]) -> Hashable:
    """A ``[[filters]]`` table as a key: equal when name, ``use`` and every option are."""
    return json.dumps(table, sort_keys=True, default=str)


def build(
    args: argparse.Namespace,
    given: set[str],
    tables: Callable[[argparse.Namespace, FileSettings], list[dict[str, Any]]],
    metrics: ProxyMetrics | None,
    file: FileSettings | None = None,
) -> tuple[Reloaded, bool, FileSettings]:
    """The configuration, chain and keys, as start-up builds them (raises ConfigError,
    ValueError, OSError); and whether the default listener is used."""
    if file is None:
        file = cli_config.load_file(args)
    config, default_listener = cli_config.proxy_config(args, given, file)
    found = tables(args, file)
    chain = configfile.chain_from_tables(found)
    keys: tuple[Hashable, ...] = tuple(filter_key(t) for t in found)
    if metrics is not None:
        chain = metrics.observe(chain)
        keys += (_METRICS_KEY,)
    return Reloaded(config, chain, keys), default_listener, file


def reloader(
    args: argparse.Namespace,
    given: set[str],
    tables: Callable[[argparse.Namespace, FileSettings], list[dict[str, Any]]],
    metrics: ProxyMetrics | None,
    first: FileSettings,
) -> Callable[[], Reloaded]:
    """What ``Proxy.reload`` calls on SIGHUP (it warns about what needs a restart)."""

    def again() -> Reloaded:
        file = cli_config.load_file(args)
        built, _, _ = build(args, given, tables, metrics, file)
        restart = []
        if cli_config.metrics_address(args, file) != cli_config.metrics_address(args, first):
            restart.append("metrics")
        if file.log_level != first.log_level:
            restart.append("logging.level")
        return dataclasses.replace(built, restart=tuple(restart))

    return again


@contextlib.contextmanager
def pid_file(path: str | None) -> Iterator[None]:
    """Write this process's pid to ``path`` (removed at exit) for ``imapproxy reload``."""
    if not path:
        yield
        return
    target = Path(path)
    try:
        target.write_text(f"{os.getpid()}\n")
    except OSError as exc:
        raise ValueError(f"cannot write --pid-file {path}: {exc.strerror}") from None
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            if target.read_text().strip() == str(os.getpid()):
                target.unlink()


def add_parser(subparser: Callable[..., argparse.ArgumentParser]) -> None:
    parser = subparser(
        "reload",
        help="make a running proxy re-read its config file (SIGHUP)",
        description="Send SIGHUP to the proxy whose pid is in --pid-file (imapproxy run "
        "--pid-file): it re-reads its --config; sessions in flight go on.  A bad file is "
        "refused in the proxy's log and the running configuration stays.",
    )
    parser.set_defaults(handler=cmd_reload)
    parser.add_argument(
        "--pid-file", required=True, metavar="PATH", help="the file imapproxy run --pid-file wrote"
    )


def cmd_reload(args: argparse.Namespace) -> int:
    path = args.pid_file
    try:
        text = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(
            f"cannot read --pid-file {path}: {exc.strerror} (is the proxy running "
            "with imapproxy run --pid-file?)",
        ) from None  # fmt: skip
    if not text.isdigit() or int(text) <= 0:
        raise ValueError(f"--pid-file {path} holds no pid ({text[:20]!r})")
    pid = int(text)
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        raise ValueError(
            f"no process {pid} (--pid-file {path} is stale: the proxy is not "
            "running; remove the file)",
        ) from None  # fmt: skip
    except PermissionError:
        raise ValueError(
            f"not allowed to signal process {pid} (--pid-file {path}): run as "
            "the proxy's user",
        ) from None  # fmt: skip
    print(f"sent SIGHUP to {pid}: see the proxy's log for the result")
    return 0
