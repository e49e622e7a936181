"""Credentials never show up in reprs, strings, formatting, logs or error messages.

Every exchange below is run through a real :class:`Conversation` (both directions), then
every client Frame, every parsed message and every error raised while parsing is rendered
in all the ways a log line could render it, and searched for the password, the base64
payload and the decoded payload.
"""

from __future__ import annotations

import base64
import copy
import logging
import pickle
from collections.abc import Iterable
from dataclasses import dataclass

import pytest

from imapproxy.wire import (
    AuthData,
    Command,
    Conversation,
    Frame,
    FrameKind,
    LimitExceeded,
    Limits,
    LiteralChunk,
    ParseError,
    ProtocolError,
    Secret,
    Side,
    Wait,
    parse_command,
    parse_frame,
)

PASSWORD = "Tr0ub4dor&3 horse"
TOKEN = "ya29.Gl0SecretBearerToken-Xyz"
USER = "joe"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class Exchange:
    """Wire steps of one login, and the strings that must never be shown."""

    name: str
    steps: tuple[tuple[Side, bytes], ...]
    needles: tuple[str, ...]


def C(data: bytes | str) -> tuple[Side, bytes]:  # reads like a trace line
    return (Side.CLIENT, data.encode() if isinstance(data, str) else data)


def S(data: bytes | str) -> tuple[Side, bytes]:
    return (Side.SERVER, data.encode() if isinstance(data, str) else data)


GREETING = S("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN] ready\r\n")
PLAIN_PAYLOAD = f"\0{USER}\0{PASSWORD}".encode()
XOAUTH2_PAYLOAD = f"user={USER}@example.com\x01auth=Bearer {TOKEN}\x01\x01".encode()
OAUTHBEARER_PAYLOAD = (
    f"n,a={USER}@example.com,\x01host=imap.example.com\x01port=993\x01auth=Bearer {TOKEN}\x01\x01"
).encode()
PASSWORD_NEEDLES = (PASSWORD, "Tr0ub4dor", "horse", repr(PASSWORD.encode())[2:-1])


def _sasl_needles(payload: bytes) -> tuple[str, ...]:
    encoded = b64(payload)
    return (encoded, encoded[4:24], repr(payload)[2:-1], "Tr0ub4dor", TOKEN, "SecretBearer")


EXCHANGES = [
    Exchange(
        "login-quoted",
        (GREETING, C(f'a1 LOGIN {USER} "{PASSWORD}"\r\n'), S("a1 OK done\r\n")),
        PASSWORD_NEEDLES,
    ),
    Exchange(
        "login-atom",
        (GREETING, C(f"a1 LOGIN {USER} Tr0ub4dor&3\r\n"), S("a1 OK done\r\n")),
        ("Tr0ub4dor&3", "Tr0ub4dor"),
    ),
    Exchange(
        "login-quoted-escapes",
        (GREETING, C(f'a1 LOGIN "{USER}" "Tr0ub\\"4dor\\\\3"\r\n'), S("a1 OK done\r\n")),
        ("Tr0ub", "4dor\\\\3", "4dor"),
    ),
    Exchange(
        "login-sync-literal",
        (
            GREETING,
            C(f"a1 LOGIN {USER} {{{len(PASSWORD)}}}\r\n"),
            S("+ Ready for literal\r\n"),
            C(f"{PASSWORD}\r\n"),
            S("a1 OK done\r\n"),
        ),
        PASSWORD_NEEDLES,
    ),
    Exchange(
        "login-literal-plus",
        (GREETING, C(f"a1 LOGIN {USER} {{{len(PASSWORD)}+}}\r\n{PASSWORD}\r\n"), S("a1 OK\r\n")),
        PASSWORD_NEEDLES,
    ),
    Exchange(
        "login-literal-user-and-password",
        (
            GREETING,
            C("a1 LOGIN {3}\r\n"),
            S("+ go\r\n"),
            C(f"{USER} {{{len(PASSWORD)}}}\r\n"),
            S("+ go\r\n"),
            C(f"{PASSWORD}\r\n"),
            S("a1 OK\r\n"),
        ),
        PASSWORD_NEEDLES,
    ),
    Exchange(
        "authenticate-plain-sasl-ir",
        (GREETING, C(f"a1 AUTHENTICATE PLAIN {b64(PLAIN_PAYLOAD)}\r\n"), S("a1 OK\r\n")),
        _sasl_needles(PLAIN_PAYLOAD),
    ),
    Exchange(
        "authenticate-plain",
        (
            GREETING,
            C("a1 AUTHENTICATE PLAIN\r\n"),
            S("+ \r\n"),
            C(f"{b64(PLAIN_PAYLOAD)}\r\n"),
            S("a1 OK\r\n"),
        ),
        _sasl_needles(PLAIN_PAYLOAD),
    ),
    Exchange(
        "authenticate-login",
        (
            GREETING,
            C("a1 AUTHENTICATE LOGIN\r\n"),
            S(f"+ {b64(b'Username:')}\r\n"),
            C(f"{b64(USER.encode())}\r\n"),
            S(f"+ {b64(b'Password:')}\r\n"),
            C(f"{b64(PASSWORD.encode())}\r\n"),
            S("a1 OK\r\n"),
        ),
        (b64(PASSWORD.encode()), *PASSWORD_NEEDLES),
    ),
    Exchange(
        "authenticate-xoauth2",
        (
            GREETING,
            C("a1 AUTHENTICATE XOAUTH2\r\n"),
            S("+ \r\n"),
            C(f"{b64(XOAUTH2_PAYLOAD)}\r\n"),
            S("a1 OK\r\n"),
        ),
        _sasl_needles(XOAUTH2_PAYLOAD),
    ),
    Exchange(
        "authenticate-xoauth2-sasl-ir",
        (GREETING, C(f"a1 AUTHENTICATE XOAUTH2 {b64(XOAUTH2_PAYLOAD)}\r\n"), S("a1 OK\r\n")),
        _sasl_needles(XOAUTH2_PAYLOAD),
    ),
    Exchange(
        "authenticate-oauthbearer",
        (
            GREETING,
            C("a1 AUTHENTICATE OAUTHBEARER\r\n"),
            S("+ \r\n"),
            C(f"{b64(OAUTHBEARER_PAYLOAD)}\r\n"),
            S("a1 OK\r\n"),
        ),
        _sasl_needles(OAUTHBEARER_PAYLOAD),
    ),
]


# ------------------------------------------------------------------ helpers


def run_exchange(exchange: Exchange) -> list[Frame | LiteralChunk]:
    """Replay the steps through a Conversation; return the client's events."""
    conversation = Conversation()
    client_events: list[Frame | LiteralChunk] = []

    def drain() -> None:
        progress = True
        while progress:
            progress = False
            while not isinstance(event := conversation.next_server_event(), Wait):
                progress = True
            while not isinstance(event := conversation.next_client_event(), Wait):
                assert isinstance(event, (Frame, LiteralChunk))
                client_events.append(event)
                progress = True

    for side, data in exchange.steps:
        if side is Side.CLIENT:
            conversation.receive_client(data)
        else:
            conversation.receive_server(data)
        drain()
    sent = b"".join(data for side, data in exchange.steps if side is Side.CLIENT)
    received = b"".join(e.raw if isinstance(e, Frame) else e.data for e in client_events)
    assert received == sent
    return client_events


def messages_of(events: Iterable[Frame | LiteralChunk]) -> list[tuple[list[Frame], bytes]]:
    """Group client frames into messages: (frames, joined bytes)."""
    out: list[tuple[list[Frame], bytes]] = []
    frames: list[Frame] = []
    data = bytearray()
    for event in events:
        if isinstance(event, LiteralChunk):
            data += event.data
            continue
        frames.append(event)
        data += event.raw
        if event.final:
            out.append((frames, bytes(data)))
            frames = []
            data = bytearray()
    return out


def parse_message(frames: list[Frame], data: bytes) -> object:
    if frames[0].kind is FrameKind.COMMAND:
        return parse_command(data)
    return parse_frame(frames[0])


def renderings(obj: object) -> list[str]:
    """Every way a log line or an error report could turn ``obj`` into text."""
    out = [repr(obj), str(obj), f"{obj}", f"{obj!r}", f"{obj!s}", format(obj, ""), f"{obj:}"]
    if isinstance(obj, BaseException):
        out += [repr(obj.args), " ".join(str(a) for a in obj.args)]
    if isinstance(obj, ProtocolError):
        out += [
            obj.message,
            obj.reply.decode("latin-1"),
            repr(obj.reply),
            repr(obj.tag),
            repr(obj.limit),
        ]
    return out


def assert_not_shown(obj: object, needles: Iterable[str], caplog: pytest.LogCaptureFixture) -> None:
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        logging.getLogger().info("%r %s", obj, obj)
        logging.getLogger("imapproxy.test").warning("value: %s / %r", obj, obj)
        if isinstance(obj, BaseException):
            try:
                raise obj
            except BaseException:
                logging.getLogger().exception("parsing failed")
    texts = [*renderings(obj), caplog.text, *(r.getMessage() for r in caplog.records)]
    for needle in needles:
        for text in texts:
            assert needle not in text, f"{needle!r} shown in {text[:200]!r}"


# ------------------------------------------------------------------ the exchanges


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_frames_do_not_show_credentials(
    exchange: Exchange, caplog: pytest.LogCaptureFixture
) -> None:
    events = run_exchange(exchange)
    assert events
    for event in events:
        assert_not_shown(event, exchange.needles, caplog)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_frames_carrying_credentials_are_sensitive(exchange: Exchange) -> None:
    for frames, _data in messages_of(run_exchange(exchange)):
        if frames[0].name in ("LOGIN", "AUTHENTICATE") or frames[0].kind is FrameKind.AUTH_DATA:
            assert all(frame.sensitive for frame in frames)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_parsed_messages_do_not_show_credentials(
    exchange: Exchange, caplog: pytest.LogCaptureFixture
) -> None:
    parsed_any_secret = False
    for frames, data in messages_of(run_exchange(exchange)):
        message = parse_message(frames, data)
        assert_not_shown(message, exchange.needles, caplog)
        if isinstance(message, AuthData):
            assert isinstance(message.data, Secret)
            parsed_any_secret = True
        if isinstance(message, Command) and len(message.args) >= 2:
            assert isinstance(message.args[1], Secret)
            assert_not_shown(message.args, exchange.needles, caplog)
            assert_not_shown(message.args[1], exchange.needles, caplog)
            parsed_any_secret = True
    assert parsed_any_secret


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e.name)
def test_reveal_gives_the_credential_back(exchange: Exchange) -> None:
    revealed: list[bytes] = []
    for frames, data in messages_of(run_exchange(exchange)):
        message = parse_message(frames, data)
        if isinstance(message, AuthData):
            revealed.append(message.data.reveal())
        elif isinstance(message, Command) and len(message.args) >= 2:
            secret = message.args[1]
            assert isinstance(secret, Secret)
            token = secret.reveal()
            value = getattr(token, "value", None)
            assert isinstance(value, (bytes, str))
            revealed.append(value if isinstance(value, bytes) else value.encode())
    assert revealed
    payloads = {
        PASSWORD.encode(),
        b"Tr0ub4dor&3",
        b'Tr0ub"4dor\\3',
        *(
            base64.b64encode(p)
            for p in (PLAIN_PAYLOAD, XOAUTH2_PAYLOAD, OAUTHBEARER_PAYLOAD, PASSWORD.encode())
        ),
    }
    assert payloads & set(revealed)


def test_parse_frame_on_a_continuation_part_does_not_expose_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A proxy that calls parse_frame() on every Frame also hands it the later parts of a
    LOGIN whose password was sent as a literal.  Those parts start with the password; the
    result (or the error) must not turn it into a tag or a command name."""
    exchange = next(e for e in EXCHANGES if e.name == "login-sync-literal")
    for event in run_exchange(exchange):
        if not isinstance(event, Frame):
            continue
        try:
            result: object = parse_frame(event)
        except ParseError as error:
            result = error
        assert_not_shown(result, exchange.needles, caplog)


# ------------------------------------------------------------------ errors


MALFORMED = [
    pytest.param(f'a1 LOGIN joe "{PASSWORD}\r\n'.encode(), id="unterminated-quoted"),
    pytest.param(f'a1 LOGIN joe "{PASSWORD}\\a"\r\n'.encode(), id="bad-escape"),
    pytest.param(f'a1 LOGIN joe "{PASSWORD}"x\r\n'.encode(), id="junk-after-password"),
    pytest.param(f'a1 LOGIN joe "{PASSWORD}" )\r\n'.encode(), id="stray-paren"),
    pytest.param(f'a1 LOGIN joe "{PASSWORD}" \r\n'.encode(), id="trailing-space"),
    pytest.param(f"a1 LOGIN joe {{40}}\r\n{PASSWORD}\r\n".encode(), id="literal-short"),
    pytest.param(f"a1 LOGIN joe {{3}}\r\n{PASSWORD}\r\n".encode(), id="literal-long"),
    pytest.param(f"a1 LOGIN joe ({PASSWORD}\r\n".encode(), id="unbalanced-list"),
    # A client that does not quote a password with a space sends a LOGIN with three
    # arguments; the server rejects it, but the proxy parses (and may log) it first.
    pytest.param(f"a1 LOGIN joe {PASSWORD}\r\n".encode(), id="unquoted-space"),
    pytest.param(b"a1 LOGIN joe Tr0ub4dor[3\r\n", id="bad-section"),
    pytest.param(f'a1 LOGIN joe "{PASSWORD}"\r\nmore\r\n'.encode(), id="two-lines"),
    pytest.param(
        f"a1 AUTHENTICATE PLAIN {b64(PLAIN_PAYLOAD)} (\r\n".encode(), id="sasl-ir-unbalanced"
    ),
    pytest.param(f"a1 AUTHENTICATE PLAIN {b64(PLAIN_PAYLOAD)}\x00\r\n".encode(), id="sasl-ir-nul"),
]


@pytest.mark.parametrize("raw", MALFORMED)
def test_parse_errors_do_not_show_credentials(raw: bytes, caplog: pytest.LogCaptureFixture) -> None:
    needles = (*PASSWORD_NEEDLES, *_sasl_needles(PLAIN_PAYLOAD))
    try:
        result: object = parse_command(raw)
    except ParseError as error:
        result = error
    assert_not_shown(result, needles, caplog)


def test_decoder_errors_do_not_show_credentials(caplog: pytest.LogCaptureFixture) -> None:
    """An AUTHENTICATE line that is too long is a fatal framing error: its reply and
    message must not quote the line."""
    payload = b64(PLAIN_PAYLOAD * 8)
    limits = Limits(max_line_bytes=64)
    conversation = Conversation(limits)
    conversation.receive_server(b"* OK ready\r\n")
    conversation.next_server_event()
    conversation.receive_client(b"a1 AUTHENTICATE PLAIN\r\n")
    assert isinstance(conversation.next_client_event(), Frame)
    conversation.receive_server(b"+ \r\n")
    conversation.next_server_event()
    conversation.receive_client(payload.encode() + b"\r\n")
    with pytest.raises(LimitExceeded) as info:
        conversation.next_client_event()
    assert_not_shown(info.value, (payload, payload[:20], *_sasl_needles(PLAIN_PAYLOAD)), caplog)


def test_long_login_line_error_does_not_show_password(caplog: pytest.LogCaptureFixture) -> None:
    conversation = Conversation(Limits(max_line_bytes=64))
    conversation.receive_client(f'a1 LOGIN joe "{PASSWORD * 5}"\r\n'.encode())
    with pytest.raises(ProtocolError) as info:
        conversation.next_client_event()
    assert_not_shown(info.value, PASSWORD_NEEDLES, caplog)


# ------------------------------------------------------------------ Secret itself


@pytest.mark.parametrize(
    "value", [b"hunter2", "hunter2", Secret(b"hunter2"), ("hunter2",), {"pw": "hunter2"}]
)
def test_secret_renderings(value: object, caplog: pytest.LogCaptureFixture) -> None:
    secret = Secret(value)
    assert repr(secret) == "Secret(<redacted>)"
    assert str(secret) == "Secret(<redacted>)"
    assert f"{secret}" == "Secret(<redacted>)"
    assert f"{secret:>40}" == "Secret(<redacted>)"
    assert f"{secret!r:^40}".strip() == "Secret(<redacted>)"
    assert "%s %r" % (secret, secret) == "Secret(<redacted>) Secret(<redacted>)"  # noqa: UP031
    assert "{} {!r}".format(secret, secret) == "Secret(<redacted>) Secret(<redacted>)"  # noqa: UP032
    assert_not_shown(secret, ("hunter2",), caplog)
    assert_not_shown([secret, {"k": secret}], ("hunter2",), caplog)
    assert secret.reveal() == value


def test_secret_equality_and_hash() -> None:
    assert Secret(b"a") == Secret(b"a")
    assert Secret(b"a") != Secret(b"b")
    assert Secret(b"a") != b"a"
    assert hash(Secret(b"a")) == hash(Secret(b"a"))


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_secret_cannot_be_pickled(protocol: int) -> None:
    with pytest.raises(TypeError):
        pickle.dumps(Secret(b"hunter2"), protocol=protocol)
    command = parse_command(f'a1 LOGIN joe "{PASSWORD}"\r\n'.encode())
    with pytest.raises(TypeError):
        pickle.dumps(command, protocol=protocol)
    with pytest.raises(TypeError):
        pickle.dumps(AuthData(Secret(b"cGFzcw==")), protocol=protocol)


def test_secret_cannot_be_copied_into_plaintext() -> None:
    """copy/deepcopy go through the same reduce protocol as pickle."""
    with pytest.raises(TypeError):
        copy.deepcopy(Secret(b"hunter2"))


# ------------------------------------------------------------------ refused logins
#
# A client whose LOGIN or AUTHENTICATE is refused (by the relay: tag in use, TLS required;
# or by the server, before it asked for more) may send its password or SASL response
# anyway.  The decoder then reads those bytes as a new "command"; it must still mark them
# sensitive, up to the client's next well-formed command, which must not be.

ALICE_PLAIN = b64(b"\0alice\0alicepw")  # AGFsaWNlAGFsaWNlcHc=, as Dovecot would accept it
ALICE_NEEDLES = ("alicepw", ALICE_PLAIN, ALICE_PLAIN[:16], b64(b"alicepw"), b64(b"alicepw")[:8])
READY = S("* OK [CAPABILITY IMAP4rev1 LITERAL+ SASL-IR AUTH=PLAIN AUTH=LOGIN] ready\r\n")


@dataclass(frozen=True)
class Refusal:
    """Steps (as in Exchange); ``require_tls``: the relay refuses every LOGIN and
    AUTHENTICATE itself (NO [PRIVACYREQUIRED]); ``shown``: raw client lines that must
    stay visible (the zone of credentials ends there)."""

    name: str
    steps: tuple[tuple[Side, bytes], ...]
    require_tls: bool = False
    shown: tuple[bytes, ...] = (b"y NOOP\r\n",)
    needles: tuple[str, ...] = ALICE_NEEDLES
    reaches_frames: bool = True  # False: the decoder consumes the secret (refused {n+})


REFUSALS = [
    Refusal(
        "tag-in-use-authenticate",
        (READY, C(f"x NOOP\r\nx AUTHENTICATE PLAIN\r\n{ALICE_PLAIN}\r\ny NOOP\r\n")),
    ),
    Refusal(
        "tag-in-use-authenticate-sasl-ir",
        (READY, C(f"x NOOP\r\nx AUTHENTICATE PLAIN {ALICE_PLAIN}\r\ny NOOP\r\n")),
    ),
    Refusal(
        "tag-in-use-login-literal",
        (READY, C("x NOOP\r\nx LOGIN alice {7}\r\nalicepw\r\ny NOOP\r\n")),
    ),
    Refusal(
        "tag-in-use-login-literal-plus",
        (READY, C("x NOOP\r\nx LOGIN alice {7+}\r\nalicepw\r\ny NOOP\r\n")),
        reaches_frames=False,
    ),
    Refusal(
        "require-tls-authenticate",
        (READY, C(f"a AUTHENTICATE PLAIN\r\n{ALICE_PLAIN}\r\ny NOOP\r\n")),
        require_tls=True,
    ),
    Refusal(
        "require-tls-authenticate-login",
        (READY, C(f"a AUTHENTICATE LOGIN\r\n{b64(b'alice')}\r\n{b64(b'alicepw')}\r\ny NOOP\r\n")),
        require_tls=True,
    ),
    Refusal(
        "require-tls-login-literal",
        (READY, C("a LOGIN alice {7}\r\n"), C("alicepw\r\n"), C("y NOOP\r\n")),
        require_tls=True,
    ),
    Refusal(
        "require-tls-login-user-literal",
        (READY, C("a LOGIN {5}\r\nalice {7}\r\nalicepw\r\ny NOOP\r\n")),
        require_tls=True,
    ),
    Refusal(
        "require-tls-login-atom",
        (READY, C("a LOGIN alice alicepw\r\ny NOOP\r\n")),
        require_tls=True,
    ),
    Refusal(
        "server-refuses-login-literal",
        (
            READY,
            C("a LOGIN alice {7}\r\n"),
            S("a NO [CANNOT] not now\r\n"),
            C("alicepw\r\n"),
            C("y NOOP\r\n"),
        ),
    ),
    Refusal(
        "server-refuses-authenticate",
        (
            READY,
            C(f"a AUTHENTICATE PLAIN\r\n{ALICE_PLAIN}\r\n"),
            S("a NO [CANNOT] no\r\n"),
            C("y NOOP\r\n"),
        ),
    ),
    Refusal(
        "authenticate-cancelled-then-sent-anyway",
        (
            READY,
            C("a AUTHENTICATE PLAIN\r\n"),
            S("+ \r\n"),
            C("*\r\n"),
            S("a BAD cancelled\r\n"),
            C(f"{ALICE_PLAIN}\r\ny NOOP\r\n"),
        ),
    ),
    Refusal(
        "password-looks-like-tag-and-name",
        (READY, C("a LOGIN alice {14}\r\n"), S("a NO no\r\n"), C("alice alicepw!\r\ny NOOP\r\n")),
    ),
    Refusal("login-one-argument", (READY, C("a LOGIN alicepw\r\ny NOOP\r\n"))),
    Refusal("login-one-quoted-argument", (READY, C('a LOGIN "alice alicepw"\r\ny NOOP\r\n'))),
    Refusal("login-three-arguments", (READY, C("a LOGIN alice alicepw x\r\ny NOOP\r\n"))),
    Refusal("uid-login", (READY, C("a UID LOGIN alice alicepw\r\ny NOOP\r\n"))),
    Refusal("uid-authenticate", (READY, C(f"a uid authenticate {ALICE_PLAIN}\r\ny NOOP\r\n"))),
    Refusal("tagless-login", (READY, C("LOGIN alicepw\r\ny NOOP\r\n"))),
    Refusal("glued-login", (READY, C('a LOGIN"alice" alicepw\r\ny NOOP\r\n'))),
    Refusal("tab-login", (READY, C("a\tLOGIN alice alicepw\r\ny NOOP\r\n"))),
    Refusal("misspelt-login", (READY, C("a XLOGIN alice alicepw\r\ny NOOP\r\n"))),
    Refusal("lower-case-login", (READY, C("a login alice alicepw\r\ny NOOP\r\n"))),
    Refusal(
        "literal-parts-of-login",
        (
            READY,
            C("a LOGIN {5+}\r\nalice {7+}\r\nalicepw\r\n"),
            S("+ go\r\n"),
            S("+ go\r\n"),
            S("a OK\r\n"),
            C("y NOOP\r\n"),
        ),
    ),
]


def relay_like(refusal: Refusal) -> list[Frame | LiteralChunk]:
    """Replay the steps through a Conversation driven as the relay drives it: a command
    with a malformed head or a reused tag is refused (``refused()``), LOGIN and
    AUTHENTICATE are answered NO when TLS is required first."""
    conversation = Conversation(nonsync_as_sync=True)
    events: list[Frame | LiteralChunk] = []

    def drain() -> None:
        progress = True
        while progress:
            progress = False
            while not isinstance(conversation.next_server_event(), Wait):
                progress = True
            while not isinstance(event := conversation.next_client_event(), Wait):
                assert isinstance(event, (Frame, LiteralChunk))
                events.append(event)
                progress = True
                if not isinstance(event, Frame) or event.kind is not FrameKind.COMMAND:
                    continue
                if event.first and (not event.name or conversation.tag_in_use):
                    conversation.client.refused()
                elif (
                    event.first
                    and refusal.require_tls
                    and event.name in ("LOGIN", "AUTHENTICATE")
                    and event.tag is not None
                ):
                    conversation.pending.pop(event.tag, None)
                    conversation.client.completed(event.tag, "NO")

    for side, data in refusal.steps:
        if side is Side.CLIENT:
            conversation.receive_client(data)
        else:
            conversation.receive_server(data)
        drain()
    return events


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda r: r.name)
def test_what_follows_a_refused_login_is_sensitive(refusal: Refusal) -> None:
    events = relay_like(refusal)
    frames = [e for e in events if isinstance(e, Frame)]
    for frame in frames:
        holds = any(n.encode() in frame.raw for n in refusal.needles)
        if holds:
            assert frame.sensitive, f"{frame!r} holds a credential and is not sensitive"
    # ... and the zone ends at the next well-formed command
    for line in refusal.shown:
        shown = [f for f in frames if f.raw == line]
        assert shown, f"{line!r} never came out as a frame"
        assert not any(f.sensitive for f in shown), f"{line!r} is marked sensitive"
    reached = any(n.encode() in f.raw for f in frames for n in refusal.needles)
    assert reached is refusal.reaches_frames


@pytest.mark.parametrize(
    "line",
    [
        b"a LOGIN alice pw\r\n",
        b"a login alice pw\r\n",
        b"a LOGIN alicepw\r\n",
        b"a UID LOGIN alice pw\r\n",
        b"a uid Login alice pw\r\n",
        b"a UID authenticate PLAIN\r\n",
        b"LOGIN alicepw\r\n",
        b'a LOGIN"alice" pw\r\n',
        b"a LOGIN(alice) pw\r\n",
        b"a  LOGIN alice pw\r\n",
        b"a\tLOGIN alice pw\r\n",
        b"a]b LOGIN alice pw\r\n",
        b"a XLOGIN alice pw\r\n",
        b"a LOGINX alice pw\r\n",
        b"a authenticate-plain AGFsaWNl\r\n",
        b"a AUTHENTICATE\r\n",
        b"a LOGIN {5}\r\n",
    ],
)
def test_every_form_of_login_and_authenticate_is_sensitive(line: bytes) -> None:
    conversation = Conversation()
    conversation.receive_client(line)
    frame = conversation.next_client_event()
    assert isinstance(frame, Frame)
    assert frame.sensitive


@pytest.mark.parametrize(
    "line",
    [
        b"y NOOP\r\n",
        b"y uid fetch 1 (FLAGS)\r\n",
        b"y SELECT login\r\n",  # a mailbox may be called so
        b"y SEARCH SUBJECT authenticate\r\n",
        b"y ID NIL\r\n",
    ],
)
def test_a_well_formed_command_after_a_login_is_not_sensitive(line: bytes) -> None:
    conversation = Conversation()
    conversation.receive_server(b"* OK ready\r\n")
    conversation.next_server_event()
    conversation.receive_client(b"a LOGIN alice alicepw\r\n")
    assert isinstance(conversation.next_client_event(), Frame)
    conversation.receive_server(b"a OK done\r\n")
    conversation.next_server_event()
    conversation.receive_client(b"garbage after it\r\n" + line)
    garbage = conversation.next_client_event()
    assert isinstance(garbage, Frame) and garbage.sensitive
    frame = conversation.next_client_event()
    assert isinstance(frame, Frame) and frame.raw == line
    assert not frame.sensitive
