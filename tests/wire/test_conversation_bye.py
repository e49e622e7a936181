"""The conversation keeps the server's untagged BYE and whether it answered a LOGOUT
(the session logs a server's own BYE as ``upstream_bye``, not as a LOGOUT)."""

from __future__ import annotations

from imapproxy.wire import NEED_DATA, PAUSED, Conversation, Phase


def _drain_server(conv: Conversation, data: bytes) -> None:
    conv.receive_server(data)
    while conv.next_server_event() is not NEED_DATA:
        pass


def _drain_client(conv: Conversation, data: bytes) -> None:
    conv.receive_client(data)
    while conv.next_client_event() not in (NEED_DATA, PAUSED):
        pass


def _logged_in() -> Conversation:
    conv = Conversation()
    _drain_server(conv, b"* OK ready\r\n")
    _drain_client(conv, b"a LOGIN alice pw\r\n")
    _drain_server(conv, b"a OK logged in\r\n")
    assert conv.phase is Phase.AUTHENTICATED
    return conv


def test_no_bye_yet() -> None:
    conv = _logged_in()
    assert conv.bye is None and not conv.bye_requested


def test_server_bye_by_itself() -> None:
    conv = _logged_in()
    _drain_client(conv, b"n NOOP\r\n")
    _drain_server(conv, b"* BYE server shutting down\r\n")
    assert conv.phase is Phase.LOGOUT
    assert conv.bye == b"* BYE server shutting down\r\n"
    assert not conv.bye_requested


def test_bye_answering_logout() -> None:
    conv = _logged_in()
    _drain_client(conv, b"z LOGOUT\r\n")
    _drain_server(conv, b"* BYE logging out\r\nz OK done\r\n")
    assert conv.phase is Phase.LOGOUT
    assert conv.bye == b"* BYE logging out\r\n"
    assert conv.bye_requested


def test_long_bye_is_kept_short() -> None:
    conv = _logged_in()
    _drain_server(conv, b"* BYE " + b"x" * 5000 + b"\r\n")
    assert conv.bye is not None and conv.bye.startswith(b"* BYE xxx")
    assert len(conv.bye) <= 512
