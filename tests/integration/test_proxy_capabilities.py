"""Channel-binding SASL mechanisms (``AUTH=...-PLUS``) never reach the client.

The client's TLS channel ends at the proxy, so a binding to it could never verify upstream
(imapproxy/capabilities.py).  The test Dovecot offers no ``-PLUS`` mechanism, so a scripted
server offers some here, in every place a capability list reaches the client: the greeting's
``[CAPABILITY ...]``, ``* CAPABILITY`` data before and after login, the tagged
``OK [CAPABILITY ...]`` of LOGIN and of AUTHENTICATE, and an untagged ``* OK [CAPABILITY ...]``.
The client must see the server's bytes exactly, with only the ``-PLUS`` entries gone.
"""

from __future__ import annotations

import base64

import trio

from imapproxy.config import Endpoint, ListenerConfig, ProxyConfig, UpstreamConfig, UpstreamTls
from tests.support.fakeserver import Expect, ImapClient, Script, Send, fake_server
from tests.support.proxy import running_proxy

LIMIT = 10.0

# Every list offers -PLUS mechanisms (first, middle, last, lower case) among entries that
# must stay: plain mechanisms, an extension whose name merely ends in -PLUS, unknown ones.
GREETING = (
    b"* OK [CAPABILITY AUTH=SCRAM-SHA-256-PLUS IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN "
    b"auth=scram-sha-1-plus AUTH=SCRAM-SHA-256 X-THING-PLUS ID AUTH=GS2-KRB5-PLUS] "
    b"fake ready\r\n"
)
GREETING_SEEN = (
    b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN "
    b"AUTH=SCRAM-SHA-256 X-THING-PLUS ID] "
    b"fake ready\r\n"
)
CAPS_BEFORE = (
    b"* CAPABILITY IMAP4rev1 AUTH=SCRAM-SHA-1-PLUS AUTH=PLAIN X-THING-PLUS AUTH=SCRAM-SHA-1\r\n"
)
CAPS_BEFORE_SEEN = b"* CAPABILITY IMAP4rev1 AUTH=PLAIN X-THING-PLUS AUTH=SCRAM-SHA-1\r\n"
LOGGED_IN = (
    b"{tag} OK [CAPABILITY IMAP4rev1 IDLE AUTH=SCRAM-SHA-256-PLUS MOVE X-THING-PLUS] Logged in\r\n"
)
LOGGED_IN_SEEN = b"{tag} OK [CAPABILITY IMAP4rev1 IDLE MOVE X-THING-PLUS] Logged in\r\n"
CAPS_AFTER = b"* CAPABILITY IMAP4rev1 IDLE MOVE AUTH=SCRAM-SHA-512-PLUS\r\n"
CAPS_AFTER_SEEN = b"* CAPABILITY IMAP4rev1 IDLE MOVE\r\n"
UNTAGGED_OK = b"* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER AUTH=SCRAM-SHA-1-PLUS] now\r\n"
UNTAGGED_OK_SEEN = b"* OK [CAPABILITY IMAP4rev1 AUTH=OAUTHBEARER] now\r\n"
OK = b"{tag} OK done\r\n"

SASL = base64.b64encode(b"\x00alice\x00alicepw")


def config(port: int) -> ProxyConfig:
    return ProxyConfig(
        listeners=(ListenerConfig(Endpoint("127.0.0.1", 0), implicit_tls=False),),
        upstream=UpstreamConfig(Endpoint("127.0.0.1", port), tls=UpstreamTls.NONE),
    )


def seen(template: bytes, tag: bytes) -> bytes:
    return template.replace(b"{tag}", tag)


async def test_channel_binding_mechanisms_are_removed_everywhere() -> None:
    script: Script = [
        Send(GREETING),
        Expect("CAPABILITY", reply=CAPS_BEFORE + OK),
        Expect("LOGIN", reply=LOGGED_IN),
        Expect("CAPABILITY", reply=CAPS_AFTER + OK),
        Expect("NOOP", reply=UNTAGGED_OK + OK),
        Expect("LOGOUT", reply=b"* BYE bye\r\n{tag} OK bye\r\n"),  # then the fake closes
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(config(fake.port)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            for tag, command in [
                (b"c1", b"CAPABILITY"),
                (b"l1", b"LOGIN alice alicepw"),
                (b"c2", b"CAPABILITY"),
                (b"n1", b"NOOP"),
                (b"z", b"LOGOUT"),
            ]:
                await client.command(tag, command)
            await client.read_until_eof()
    conn = await fake.connection(0)
    # the proxy asked nothing of its own: each client command got the scripted answer
    assert [c.split(b" ", 1)[0] for c in conn.commands] == [b"c1", b"l1", b"c2", b"n1", b"z"]
    assert client.received == (
        GREETING_SEEN
        + CAPS_BEFORE_SEEN
        + seen(OK, b"c1")
        + seen(LOGGED_IN_SEEN, b"l1")
        + CAPS_AFTER_SEEN
        + seen(OK, b"c2")
        + UNTAGGED_OK_SEEN
        + seen(OK, b"n1")
        + b"* BYE bye\r\nz OK bye\r\n"
    )


async def test_channel_binding_mechanisms_are_removed_after_authenticate() -> None:
    script: Script = [
        Send(GREETING),
        Expect("AUTHENTICATE", reply=LOGGED_IN),
        Expect("LOGOUT", reply=b"* BYE bye\r\n{tag} OK bye\r\n"),  # then the fake closes
    ]
    with trio.fail_after(LIMIT):
        async with (
            fake_server(script) as fake,
            running_proxy(config(fake.port)) as (_, addrs),
        ):
            client = await ImapClient.connect(*addrs[0])
            await client.read_response()
            await client.command(b"a1", b"AUTHENTICATE PLAIN " + SASL)
            await client.command(b"z", b"LOGOUT")
            await client.read_until_eof()
    assert (await fake.connection(0)).commands[0] == b"a1 AUTHENTICATE PLAIN " + SASL + b"\r\n"
    assert client.received == (
        GREETING_SEEN + seen(LOGGED_IN_SEEN, b"a1") + b"* BYE bye\r\nz OK bye\r\n"
    )
