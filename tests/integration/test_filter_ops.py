"""Operating the filter chain: logrotate's SIGUSR1 reopens the transcript file; filter
errors are counted process-wide."""

from __future__ import annotations

import imaplib
import json
import logging
import signal
import time
from pathlib import Path

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import ChainEntry, CommandView, Filter, FilterChain, OnError, SessionView
from imapproxy.filters.api import Verdict
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, status_of
from tests.support.proxy import ProxyProcess, free_port, running_proxy


def _wait_for(check, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _all_ended(path: Path) -> bool:
    """Every session started in the file has ended in it (records are written in order)."""
    if not path.exists():
        return False
    types = [json.loads(x)["type"] for x in path.read_text().splitlines()]
    return bool(types) and types.count("session_start") == types.count("session_end")


def test_sigusr1_reopens_the_transcript_file(dovecot: DovecotServer, tmp_path: Path) -> None:
    out = tmp_path / "transcript.jsonl"
    config = tmp_path / "proxy.toml"
    config.write_text(f'[[filters]]\nuse = "transcript"\npath = "{out}"\nformat = "jsonl"\n')
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{dovecot.port}",
            "--config", str(config)]  # fmt: skip
    with ProxyProcess(args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)]) as proxy:

        def session() -> None:
            with imaplib.IMAP4("127.0.0.1", port) as m:
                m.noop()
                m.logout()

        session()
        _wait_for(lambda: _all_ended(out) and "LOGOUT" in out.read_text(), "records")
        rotated = tmp_path / "transcript.jsonl.1"
        out.rename(rotated)  # what logrotate does, then it signals
        proxy.proc.send_signal(signal.SIGUSR1)  # type: ignore[union-attr]
        _wait_for(lambda: "reopening" in proxy.log(), "the SIGUSR1 log line")
        session()
        _wait_for(lambda: _all_ended(out) and "LOGOUT" in out.read_text(), "new file")
    first = [json.loads(x) for x in rotated.read_text().splitlines()]
    second = [json.loads(x) for x in out.read_text().splitlines()]
    assert {r["session"] for r in first}.isdisjoint({r["session"] for r in second})
    assert second[0]["type"] == "session_start"
    assert "Traceback" not in proxy.log()


class Broken(Filter):
    name = "broken"
    wants_commands = frozenset({"NOOP"})

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        raise RuntimeError("bug in a filter")


async def test_filter_errors_are_counted(
    caplog: pytest.LogCaptureFixture, dovecot: DovecotServer
) -> None:
    caplog.set_level(logging.WARNING, logger="imapproxy")
    config = ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", dovecot.port)),
    )
    chain = FilterChain([ChainEntry("broken", lambda info: Broken(), OnError.OPEN)])
    with trio.fail_after(20):
        async with running_proxy(config, filters=chain) as (proxy, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            for tag in (b"n1", b"n2", b"n3"):
                assert status_of((await client.command(tag, b"NOOP"))[-1]) == b"OK"
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
            assert proxy.filter_errors == {"broken": 3}
    assert "filter errors since start: broken=3" in caplog.text
