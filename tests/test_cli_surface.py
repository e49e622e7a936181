"""The command line as a new user meets it: ``--version``, ``--help`` on every level (each
flag with its help and default, each subcommand on one line), argument errors with the
usage of the subcommand they were given to, and ``imapproxy run --upstream HOST:PORT``
alone working (a plain listener on 127.0.0.1:1143)."""

from __future__ import annotations

import argparse
import socket
import time
from importlib import metadata
from pathlib import Path

import pytest

from imapproxy.cli import build_parser
from tests.support.fakeserver import ImapClient, Send, WaitEof, fake_server
from tests.support.proxy import ProxyProcess
from tests.test_cli import run_cli

SUBCOMMANDS = {"run", "check", "certs", "reload", "tail"}


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every (sub)command's parser by its prog ("imapproxy certs init")."""
    found: dict[str, argparse.ArgumentParser] = {}

    def walk(parser: argparse.ArgumentParser) -> None:
        found[parser.prog] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(build_parser())
    return found


def test_version_is_the_package_metadata() -> None:
    result = run_cli("--version")
    assert result.returncode == 0, result
    assert result.stdout == f"imapproxy {metadata.version('imapproxy')}\n"


def test_top_level_help_lists_every_subcommand_on_one_line() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result
    lines = result.stdout.splitlines()
    listed = {ln.split()[0]: ln for ln in lines if ln.startswith("    ") and ln.split()}
    assert set(listed) == SUBCOMMANDS, result.stdout
    for name, line in listed.items():
        assert len(line.split(maxsplit=1)) == 2, line  # a name and its help, on one line
        following = lines[lines.index(line) + 1] if line != lines[-1] else ""
        assert not following.startswith(" " * 8), f"{name}'s help wraps: {following!r}"


def test_every_flag_has_help_and_shows_its_default() -> None:
    """On every subcommand: each option has help text, and any default that is not
    "nothing" (None, False, []) appears in --help."""
    for prog, parser in parsers().items():
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            assert action.help, f"{prog} {flag} has no help"
            helptext = parser._get_formatter()._expand_help(action)  # as --help shows it
            if action.default in (None, False, [], argparse.SUPPRESS):
                continue
            shown = f"{action.default:.0f}" if isinstance(action.default, float) else str(
                action.default
            )
            assert f"default: {shown}" in helptext, f"{prog} {flag}: {helptext!r}"


def test_the_subcommands_are_there() -> None:
    assert {"imapproxy run", "imapproxy check", "imapproxy certs", "imapproxy certs init",
            "imapproxy certs show"} <= set(parsers())  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["run", "--upstream", "127.0.0.1:143", "--no-such-flag"], "usage: imapproxy run "),
        (["run", "--upstream", "127.0.0.1:143", "stray"], "usage: imapproxy run "),
        (["run"], "usage: imapproxy run "),
        (["check"], "usage: imapproxy check "),
        (["check", "--upstream", "h:1", "--bogus"], "usage: imapproxy check "),
        (["certs", "init", "--bogus"], "usage: imapproxy certs init "),
        (["certs", "show"], "usage: imapproxy certs show "),
        (["certs"], "usage: imapproxy certs "),
        (["nonsense"], "usage: imapproxy "),
    ],
)
def test_argument_errors_show_the_subcommands_usage(argv: list[str], usage: str) -> None:
    result = run_cli(*argv)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(usage), result.stderr
    prog = usage.removeprefix("usage: ").strip()
    assert result.stderr.splitlines()[-1].startswith(f"{prog}: error: "), result.stderr


def test_run_with_only_upstream_listens_on_loopback_1143(tmp_path: Path) -> None:
    """The first try is one line.  (Port 1143 is fixed here: if something else on this
    machine holds it, the test says so.)"""
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", 1143))
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("127.0.0.1:1143 is taken by another program: free it")
        time.sleep(0.5)
    import trio

    async def session() -> bytes:
        async with fake_server([Send(b"* OK fake ready\r\n"), WaitEof()]) as fake:
            with ProxyProcess(
                ["--upstream", f"127.0.0.1:{fake.port}"],
                workdir=tmp_path,
                wait_ports=[("127.0.0.1", 1143)],
            ) as proxy:
                client = await ImapClient.connect("127.0.0.1", 1143)
                greeting = await client.read_response()
                await client.aclose()
            log = proxy.log()
            assert "listening on 127.0.0.1:1143 (plain)" in log, log
            assert (
                "no --listen or --listen-tls given: the plain listener is 127.0.0.1:1143" in log
            ), log
            return greeting

    assert trio.run(session) == b"* OK fake ready\r\n"
