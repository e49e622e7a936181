"""Run the real proxy for tests: as a subprocess (``ProxyProcess``) with its own log and
transcript files, or in-process on Trio (``running_proxy``)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TextIO

import trio

from imapproxy.config import ProxyConfig
from imapproxy.filters import ChainEntry, FilterChain, OnError
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_jsonl, format_text
from imapproxy.relay.server import Proxy

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of the process so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


class ProxyProcess:
    """``python -m imapproxy run ARGS`` in a subprocess; waits until every port listens.

    ``listen`` / ``listen_tls`` are lists of ``(host, port)``; stdout (the transcript) and
    stderr (the log) go to files in ``workdir``.
    """

    def __init__(
        self,
        args: Sequence[str],
        *,
        workdir: Path,
        wait_ports: Sequence[tuple[str, int]],
        startup_timeout: float = 10.0,
        pythonpath: Sequence[str] = (),
    ) -> None:
        """``pythonpath``: directories put before the project's on ``PYTHONPATH`` (a
        third-party filter installed with ``pip install --target``)."""
        self.args = list(args)
        self.pythonpath = list(pythonpath)
        self.workdir = workdir
        self.wait_ports = list(wait_ports)
        self.startup_timeout = startup_timeout
        self.log_path = workdir / "proxy.log"
        self.transcript_path = workdir / "transcript.txt"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ProxyProcess:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([*self.pythonpath, str(ROOT)]))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imapproxy", "run", *self.args],
            stdout=self.transcript_path.open("wb"),
            stderr=self.log_path.open("wb"),
            cwd=ROOT,
            env=env,
        )
        deadline = time.monotonic() + self.startup_timeout
        pending = list(self.wait_ports)
        while pending:
            if self.proc.poll() is not None:
                raise RuntimeError(f"proxy exited at start-up:\n{self.log()}")
            host, port = pending[0]
            try:
                socket.create_connection((host, port), timeout=0.5).close()
                pending.pop(0)
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"proxy did not listen on {host}:{port}:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def transcript(self) -> str:
        if not self.transcript_path.exists():
            return ""
        return self.transcript_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_proxy(
    config: ProxyConfig, *, filters: FilterChain | None = None
) -> AsyncIterator[tuple[Proxy, list[tuple[str, int]]]]:
    """Run a Proxy in this Trio run; yields it and its bound addresses; shuts it down."""
    proxy = Proxy(config, filters=filters)
    async with trio.open_nursery() as nursery:
        addrs = await nursery.start(proxy.serve)
        try:
            yield proxy, addrs
        finally:
            proxy.shutdown()


def transcript_chain(out: TextIO, *, jsonl: bool = False, bodies: bool = False) -> FilterChain:
    """A chain with one transcript filter writing to ``out`` (text, or JSON Lines); what
    it wrote is complete once the proxy has shut down."""
    sink = RecordSink("-", format_jsonl if jsonl else format_text, stream=out)
    factory = TranscriptFactory(sink, bodies=bodies)
    return FilterChain([ChainEntry("transcript", factory, OnError.OPEN)])
