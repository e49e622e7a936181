"""Credentials never reach the transcript or the session log, through the real proxy and
the real Dovecot, whatever the client does with them: every way of logging in, and the
ways a login goes wrong (refused by the proxy because the tag is in use or TLS is required
first, refused by the server, cancelled, malformed) with the password or SASL response sent
anyway.  The credentials are real ones (alice/alicepw): Dovecot would accept them."""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass

import pytest
import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig
from imapproxy.logsafe import printable
from tests.support.certs import TlsCerts
from tests.support.dovecot import DovecotServer
from tests.support.fakeserver import ImapClient, wait_session_end
from tests.support.proxy import running_proxy, transcript_chain

pytestmark = pytest.mark.dovecot

PLAIN = base64.b64encode(b"\0alice\0alicepw")  # AGFsaWNlAGFsaWNlcHc=
USER64 = base64.b64encode(b"alice")
PASS64 = base64.b64encode(b"alicepw")  # YWxpY2Vwdw==
NEEDLES = [
    "alicepw",
    PLAIN.decode(),
    PLAIN.decode()[:12],  # a prefix (the old transcript showed the first 20 characters)
    PASS64.decode(),
    PASS64.decode()[:8],
    printable(b"\0alice\0alicepw"),
]


@dataclass(frozen=True)
class Case:
    """``steps``: bytes to send, or ``("until", prefix)`` to read responses until one
    starts with ``prefix``.  The test ends every case with ``z LOGOUT``."""

    id: str
    steps: tuple[bytes | tuple[str, bytes], ...]
    require_tls: bool = False
    shown: tuple[str, ...] = ()  # transcript text that must be there


def until(prefix: bytes) -> tuple[str, bytes]:
    return ("until", prefix)


CASES = [
    # --- refused by the proxy: the tag is in use
    Case(
        "tag-in-use-authenticate",
        (b"x NOOP\r\nx AUTHENTICATE PLAIN\r\n" + PLAIN + b"\r\ny NOOP\r\n", until(b"y ")),
        shown=("C: y NOOP",),
    ),
    Case(
        "tag-in-use-login-literal",
        (b"x NOOP\r\nx LOGIN alice {7}\r\nalicepw\r\ny NOOP\r\n", until(b"y ")),
        shown=("C: y NOOP",),
    ),
    # --- refused by the proxy: TLS first (--require-tls-for-login)
    Case(
        "require-tls-authenticate",
        (b"a AUTHENTICATE PLAIN\r\n" + PLAIN + b"\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
        shown=("C: a AUTHENTICATE PLAIN", "C: y NOOP"),
    ),
    Case(
        "require-tls-sasl-ir",
        (b"a AUTHENTICATE PLAIN " + PLAIN + b"\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
    ),
    Case(
        "require-tls-authenticate-login",
        (b"a AUTHENTICATE LOGIN\r\n" + USER64 + b"\r\n" + PASS64 + b"\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
    ),
    Case(
        "require-tls-login-literal",
        (b"a LOGIN alice {7}\r\n", until(b"a "), b"alicepw\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
        shown=("C: y NOOP",),
    ),
    Case(
        "require-tls-login-literal-pipelined",
        (b"a LOGIN alice {7}\r\nalicepw\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
    ),
    Case(
        "require-tls-login-atom",
        (b"a LOGIN alice alicepw\r\ny NOOP\r\n", until(b"y ")),
        require_tls=True,
        shown=("C: a LOGIN alice ***",),
    ),
    # --- cancelled, then sent anyway
    Case(
        "authenticate-cancelled",
        (
            b"a AUTHENTICATE PLAIN\r\n",
            until(b"+"),
            b"*\r\n",
            until(b"a "),
            PLAIN + b"\r\ny NOOP\r\n",
            until(b"y "),
        ),
        shown=("C: y NOOP",),
    ),
    # --- malformed: the server says BAD (or the proxy refuses the head)
    Case("login-one-argument", (b"a LOGIN alicepw\r\n", until(b"a "))),
    Case("login-one-quoted-argument", (b'a LOGIN "alice alicepw"\r\n', until(b"a "))),
    Case("login-three-arguments", (b"a LOGIN alice alicepw x\r\n", until(b"a "))),
    Case("uid-login", (b"a UID LOGIN alice alicepw\r\n", until(b"a "))),
    Case("tagless-login", (b"LOGIN alicepw\r\n", until(b"LOGIN "))),
    Case("glued-login", (b'a LOGIN"alice" alicepw\r\ny NOOP\r\n', until(b"y "))),
    Case("mechanism-missing", (b"a AUTHENTICATE " + PLAIN + b"\r\n", until(b"a "))),
    # --- every way of logging in that works
    Case("login-atom", (b"a LOGIN alice alicepw\r\n", until(b"a ")), shown=("a LOGIN alice ***",)),
    Case("login-quoted", (b'a LOGIN "alice" "alicepw"\r\n', until(b"a "))),
    Case("login-literal", (b"a LOGIN alice {7}\r\n", until(b"+"), b"alicepw\r\n", until(b"a "))),
    Case("login-literal-plus", (b"a LOGIN alice {7+}\r\nalicepw\r\n", until(b"a "))),
    Case("login-pipelined", (b"a LOGIN alice alicepw\r\ny NOOP\r\n", until(b"y "))),
    Case("authenticate-sasl-ir", (b"a AUTHENTICATE PLAIN " + PLAIN + b"\r\n", until(b"a "))),
    Case(
        "authenticate-plain",
        (b"a AUTHENTICATE PLAIN\r\n", until(b"+"), PLAIN + b"\r\n", until(b"a ")),
    ),
    Case(
        "authenticate-login",
        (
            b"a AUTHENTICATE LOGIN\r\n",
            until(b"+"),
            USER64 + b"\r\n",
            until(b"+"),
            PASS64 + b"\r\n",
            until(b"a "),
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
async def test_no_credential_in_transcript_or_log(
    case: Case, caplog: pytest.LogCaptureFixture, dovecot: DovecotServer, tls_certs: TlsCerts
) -> None:
    caplog.set_level(logging.DEBUG, logger="imapproxy")
    config = ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", dovecot.port)),
        require_tls_for_login=case.require_tls,
        cert_file=str(tls_certs.cert_path),
        key_file=str(tls_certs.key_path),
    )
    out = io.StringIO()
    with trio.fail_after(20):
        async with running_proxy(config, filters=transcript_chain(out)) as (_, addrs):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()  # greeting
            for step in case.steps:
                if isinstance(step, bytes):
                    await client.send(step)
                else:
                    await client.read_until(step[1])
            await client.command(b"z", b"LOGOUT")
            await client.aclose()
            await wait_session_end(
                lambda: [r.getMessage() for r in caplog.records], client.local_port
            )
    transcript = out.getvalue()
    log = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    assert "C: z LOGOUT" in transcript  # the transcript saw the session
    for text in case.shown:
        assert text in transcript, transcript
    for needle in NEEDLES:
        assert needle not in transcript, f"{needle!r} in the transcript:\n{transcript}"
        assert needle not in log, f"{needle!r} in the log:\n{log}"
