"""The SNI name a client sends on the client leg reaches filters (``SessionView.tls.sni``)
and the JSONL transcript's session-start record: with implicit TLS before
``session_started`` runs, with STARTTLS once the switch is done.  A client that connects
to an IP address sends no SNI: ``sni`` is None.  Real TLS, real Dovecot upstream."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.filters import ChainEntry, FilterChain, OnError
from imapproxy.filters.api import (
    CommandView,
    Filter,
    SessionEndInfo,
    SessionInfo,
    SessionView,
    TlsInfo,
    Verdict,
)
from imapproxy.filters.sink import RecordSink
from imapproxy.filters.transcript import TranscriptFactory, format_jsonl
from tests.support.certs import TlsCerts, make_tls_certs
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ProxyProcess, free_port, running_proxy

HOST = "127.0.0.1"
NAME = "imap.test"


class TlsRecorder(Filter):
    """Records ``session.tls`` at session start, at each NOOP and at the end."""

    name = "tls-recorder"
    observes_only = True
    wants_commands = frozenset({"NOOP"})
    wants_responses = frozenset()

    def __init__(self, seen: list[tuple[str, str, TlsInfo | None]], info: SessionInfo) -> None:
        self.seen = seen
        self.id = info.id

    def session_started(self, session: SessionView) -> None:
        self.seen.append((self.id, "start", session.tls))

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        self.seen.append((self.id, "noop", session.tls))
        return super().command(cmd, session)

    def session_ended(self, session: SessionView, end: SessionEndInfo) -> None:
        self.seen.append((self.id, "end", session.tls))


@pytest.fixture(scope="module")
def sni_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A certificate for the SNI name and the IP address (both verified by the clients)."""
    return make_tls_certs(Path(tmp_path_factory.mktemp("sni")), identities=(NAME, HOST))


def _config(dovecot: DovecotServer, certs: TlsCerts) -> ProxyConfig:
    return ProxyConfig(
        listeners=(
            ListenerConfig(Endpoint(HOST, 0), implicit_tls=True),
            ListenerConfig(Endpoint(HOST, 0), implicit_tls=False),  # STARTTLS
        ),
        upstream=UpstreamConfig(Endpoint(dovecot.host, dovecot.port)),
        cert_file=str(certs.cert_path),
        key_file=str(certs.key_path),
    )


def _chain(seen: list[tuple[str, str, TlsInfo | None]], out: io.StringIO) -> FilterChain:
    sink = RecordSink("-", format_jsonl, stream=out)
    return FilterChain(
        [
            ChainEntry("tls-recorder", lambda info: TlsRecorder(seen, info), OnError.OPEN),
            ChainEntry("transcript", TranscriptFactory(sink, bodies=False), OnError.OPEN),
        ]
    )


class Client:
    """A minimal IMAP client over a trio stream: a line at a time."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buf = b""

    async def line(self) -> bytes:
        with trio.fail_after(15):
            while b"\r\n" not in self.buf:
                data = await self.stream.receive_some(65536)
                assert data, f"connection closed; had {self.buf!r}"
                self.buf += data
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    async def command(self, tag: bytes, text: bytes) -> bytes:
        await self.stream.send_all(tag + b" " + text + b"\r\n")
        while not (line := await self.line()).startswith(tag + b" "):
            pass
        return line


async def _implicit(port: int, certs: TlsCerts, server_hostname: str) -> Client:
    tcp = await trio.open_tcp_stream(HOST, port)
    tls = trio.SSLStream(tcp, certs.client_context(), server_hostname=server_hostname)
    client = Client(tls)
    assert (await client.line()).startswith(b"* OK")
    return client


async def _starttls(port: int, certs: TlsCerts, server_hostname: str) -> Client:
    tcp = await trio.open_tcp_stream(HOST, port)
    plain = Client(tcp)
    assert (await plain.line()).startswith(b"* OK")
    assert (await plain.command(b"s", b"STARTTLS")).startswith(b"s OK")
    assert not plain.buf
    tls = trio.SSLStream(tcp, certs.client_context(), server_hostname=server_hostname)
    with trio.fail_after(15):
        await tls.do_handshake()
    return Client(tls)


async def _wait_ended(seen: list[tuple[str, str, TlsInfo | None]], n: int) -> None:
    with trio.fail_after(15):
        while sum(1 for _, hook, _ in seen if hook == "end") < n:  # noqa: ASYNC110
            await trio.sleep(0.01)


def _by_session(seen: list[tuple[str, str, TlsInfo | None]]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for sid, hook, tls in seen:
        out.setdefault(sid, {})[hook] = tls
    return out


async def test_implicit_tls_sni_and_none_reach_filters_and_the_transcript(
    dovecot: DovecotServer, sni_certs: TlsCerts
) -> None:
    """Two sessions at once, one with SNI and one to an IP address (no SNI): each sees
    its own, at session start, and the transcript's session_start records carry it."""
    seen: list[tuple[str, str, TlsInfo | None]] = []
    out = io.StringIO()
    config = _config(dovecot, sni_certs)
    async with running_proxy(config, filters=_chain(seen, out)) as (_, addrs):
        named = await _implicit(addrs[0][1], sni_certs, NAME)
        bare = await _implicit(addrs[0][1], sni_certs, HOST)  # IP literal: no SNI sent
        assert (await bare.command(b"a", b"NOOP")).startswith(b"a OK")
        assert (await named.command(b"a", b"NOOP")).startswith(b"a OK")
        for client in (named, bare):
            assert (await client.command(b"z", b"LOGOUT")).startswith(b"z OK")
            await client.stream.aclose()
        await _wait_ended(seen, 2)
    sessions = list(_by_session(seen).values())
    assert len(sessions) == 2
    snis = sorted((s["start"].sni or "") for s in sessions)  # type: ignore[union-attr]
    assert snis == ["", NAME]
    for s in sessions:
        start = s["start"]
        assert isinstance(start, TlsInfo)
        assert start.version.startswith("TLSv1.") and start.cipher
        assert s["noop"] == start == s["end"]
    starts = [json.loads(r) for r in out.getvalue().splitlines()]
    starts = [r for r in starts if r["type"] == "session_start"]
    assert sorted(r["tls"]["sni"] or "" for r in starts) == ["", NAME]


@pytest.mark.parametrize(("server_hostname", "sni"), [(NAME, NAME), (HOST, None)])
async def test_starttls_sni_reaches_filters_once_tls_is_up(
    dovecot: DovecotServer, sni_certs: TlsCerts, server_hostname: str, sni: str | None
) -> None:
    seen: list[tuple[str, str, TlsInfo | None]] = []
    out = io.StringIO()
    config = _config(dovecot, sni_certs)
    async with running_proxy(config, filters=_chain(seen, out)) as (_, addrs):
        client = await _starttls(addrs[1][1], sni_certs, server_hostname)
        assert (await client.command(b"a", b"NOOP")).startswith(b"a OK")
        assert (await client.command(b"z", b"LOGOUT")).startswith(b"z OK")
        await client.stream.aclose()
        await _wait_ended(seen, 1)
    (session,) = _by_session(seen).values()
    assert session["start"] is None  # plaintext until STARTTLS
    tls = session["noop"]
    assert isinstance(tls, TlsInfo)
    assert tls.sni == sni
    assert tls.version.startswith("TLSv1.") and tls.cipher
    assert session["end"] == tls
    # the transcript: no TLS at the start, the STARTTLS details at the end
    records = {r["type"]: r for r in map(json.loads, out.getvalue().splitlines())}
    assert records["session_start"]["tls"] is None
    assert records["session_end"]["tls"] == {"version": tls.version, "cipher": tls.cipher,
                                             "sni": sni}  # fmt: skip


def test_the_server_context_keeps_sni_per_connection(sni_certs: TlsCerts) -> None:
    """The name is kept on each connection's SSLObject, not on the shared context."""
    from imapproxy.net.tls import client_sni, server_context

    server = server_context(str(sni_certs.cert_path), str(sni_certs.key_path))

    def handshake(server_hostname: str) -> ssl.SSLObject:
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = sni_certs.client_context().wrap_bio(c_in, c_out, server_hostname=server_hostname)
        conn = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for obj in (client, conn):
                with contextlib.suppress(ssl.SSLWantReadError):
                    obj.do_handshake()
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        assert conn.version() is not None
        return conn

    first = handshake(NAME)
    second = handshake(HOST)
    assert (client_sni(first), client_sni(second)) == (NAME, None)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # (see below)
async def test_a_non_ascii_sni_fails_that_handshake_only(
    dovecot: DovecotServer, sni_certs: TlsCerts, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 6066 says a HostName is ASCII.  Python's ssl cannot hand a non-ASCII one to the
    SNI callback and fails the handshake (it reports an "unraisable" UnicodeDecodeError):
    that session ends tls_failed, and the next one is served as usual."""
    caplog.set_level(logging.INFO, logger="imapproxy")
    openssl = shutil.which("openssl")
    assert openssl, "this test needs the openssl command (apt-get install openssl)"
    seen: list[tuple[str, str, TlsInfo | None]] = []
    config = _config(dovecot, sni_certs)
    async with running_proxy(config, filters=_chain(seen, io.StringIO())) as (_, addrs):
        port = addrs[0][1]
        args = [openssl, "s_client", "-connect", f"{HOST}:{port}", "-servername"]
        done = await trio.to_thread.run_sync(
            lambda: subprocess.run(
                [*(a.encode() for a in args), "é.test".encode()],
                input=b"", capture_output=True, timeout=15, check=False,
            )
        )  # fmt: skip
        assert done.returncode != 0, done.stdout  # no TLS session
        with trio.fail_after(15):
            while "reason=tls_failed" not in caplog.text:  # noqa: ASYNC110
                await trio.sleep(0.01)
        client = await _implicit(port, sni_certs, NAME)
        assert (await client.command(b"z", b"LOGOUT")).startswith(b"z OK")
        await client.stream.aclose()
        await _wait_ended(seen, 1)
    assert [hook for _, hook, _ in seen] == ["start", "end"]
    assert seen[0][2] is not None and seen[0][2].sni == NAME


def test_the_cli_logs_that_failure_in_one_line(
    dovecot: DovecotServer, sni_certs: TlsCerts, tmp_path: Path
) -> None:
    """The failure above is reported by Python as an "unraisable" exception, printed as a
    multi-line traceback on stderr: a client could fill the log with them.  The CLI turns
    it into one escaped WARNING line."""
    openssl = shutil.which("openssl")
    assert openssl, "this test needs the openssl command (apt-get install openssl)"
    port = free_port()
    args = ["--listen-tls", f"{HOST}:{port}", "--upstream", f"{dovecot.host}:{dovecot.port}",
            "--cert", str(sni_certs.cert_path), "--key", str(sni_certs.key_path)]  # fmt: skip
    with ProxyProcess(args, workdir=tmp_path, wait_ports=[(HOST, port)]) as proxy:
        for _ in range(2):
            done = subprocess.run(
                [openssl.encode(), b"s_client", b"-connect", f"{HOST}:{port}".encode(),
                 b"-servername", "é.test".encode()],
                input=b"", capture_output=True, timeout=15, check=False,
            )  # fmt: skip
            assert done.returncode != 0
        deadline = time.monotonic() + 15
        while proxy.log().count("CALLBACK_FAILED") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log = proxy.log()
    # (the start-up probe's connection is another tls_failed session, without this detail)
    assert log.count("reason=tls_failed detail=client TLS handshake failed: [SSL: "
                     "CALLBACK_FAILED]") == 2, log  # fmt: skip
    assert "Traceback" not in log and "Exception ignored" not in log, log
    ignored = [line for line in log.splitlines() if "ignored error" in line]
    assert len(ignored) == 2 and all("WARNING" in line for line in ignored), log
