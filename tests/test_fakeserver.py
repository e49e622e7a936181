"""The fake server's own contract: a script mismatch fails the test unless the test says it
expects one (tests/support/fakeserver.py).  The proxy tests rely on this to notice a proxy
that sends the upstream something the script did not expect."""

from __future__ import annotations

import pytest
import trio

from tests.support.fakeserver import (
    Expect,
    FakeServerError,
    Respond,
    ScriptError,
    Send,
    Stall,
    WaitEof,
    fake_server,
)

GREETING = b"* OK fake ready\r\n"


async def talk(port: int, *lines: bytes) -> bytes:
    """Connect, send ``lines`` one by one, close; returns everything received."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    received = bytearray()
    async with stream:
        for line in lines:
            await stream.send_all(line)
        await stream.send_eof()
        while data := await stream.receive_some(65536):
            received += data
    return bytes(received)


async def test_a_script_that_runs_as_written_passes() -> None:
    script = [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK in\r\n"), Respond(), WaitEof()]
    with trio.fail_after(10):
        async with fake_server(script) as fake:
            got = await talk(fake.port, b"a LOGIN u p\r\n", b"b NOOP\r\n", b"c LOGOUT\r\n")
    assert got.endswith(b"c OK LOGOUT done\r\n")
    assert fake.connections[0].error is None


@pytest.mark.parametrize(
    ("sent", "expected"),
    [
        ([b"a NOOP\r\n"], "expected LOGIN, got 'NOOP'"),
        ([], "EOF while expecting LOGIN"),
        ([b"\xff\xfe garbage\r\n"], "not a command"),
        ([b"a LOGIN u p\r\n", b"\x16\x03\x01 junk\r\n"], "not a command"),
        ([b"a LOGIN u p\r\n", b"b IDLE\r\n", b"NOT DONE\r\n"], "ends IDLE"),
    ],
    ids=["wrong_command", "eof", "garbage", "garbage_to_respond", "bad_done"],
)
async def test_a_mismatch_fails_the_test(sent: list[bytes], expected: str) -> None:
    script = [Send(GREETING), Expect("LOGIN", reply=b"{tag} OK in\r\n"), Respond()]
    with pytest.raises(FakeServerError, match="connection 0: ScriptError") as info:
        with trio.fail_after(10):
            async with fake_server(script) as fake:
                await talk(fake.port, *sent)
    assert expected in str(info.value)


async def test_wait_eof_refuses_bytes_unless_allowed() -> None:
    with pytest.raises(FakeServerError, match=r"unexpected b'x NOOP.* while waiting for EOF"):
        with trio.fail_after(10):
            async with fake_server([WaitEof()]) as fake:
                await talk(fake.port, b"x NOOP\r\n")
    with trio.fail_after(10):
        async with fake_server([WaitEof(allow_data=True)]) as fake:
            await talk(fake.port, b"x NOOP\r\n")
    assert fake.connections[0].received == b"x NOOP\r\n"


async def test_an_expected_error_is_the_tests_to_check() -> None:
    with trio.fail_after(10):
        async with fake_server([Expect("LOGIN")], expect_errors={0}) as fake:
            await talk(fake.port, b"a NOOP\r\n")
    assert isinstance(fake.connections[0].error, ScriptError)


async def test_an_expected_error_that_does_not_happen_fails() -> None:
    with pytest.raises(FakeServerError, match="connection 0: expected to fail, but its script"):
        with trio.fail_after(10):
            async with fake_server([Expect("LOGIN")], expect_errors={0}) as fake:
                await talk(fake.port, b"a LOGIN u p\r\n")
    with pytest.raises(FakeServerError, match="connection 1: expected to fail, but was never"):
        with trio.fail_after(10):
            async with fake_server([Expect("LOGIN")], expect_errors={1}) as fake:
                await talk(fake.port, b"a LOGIN u p\r\n")


async def test_only_the_named_connection_may_fail() -> None:
    with pytest.raises(FakeServerError) as info:
        with trio.fail_after(10):
            async with fake_server([Expect("LOGIN")], expect_errors={0}) as fake:
                await talk(fake.port, b"a NOOP\r\n")
                await talk(fake.port, b"a SELECT INBOX\r\n")
    assert "connection 1: ScriptError" in str(info.value)
    assert "connection 0" not in str(info.value)


async def test_a_script_still_running_at_the_end_fails() -> None:
    with pytest.raises(FakeServerError, match="connection 0: script still running"):
        with trio.fail_after(10):
            async with fake_server([Stall()], finish_grace=0.1) as fake:
                stream = await trio.open_tcp_stream("127.0.0.1", fake.port)
                await fake.connection(0)
    await stream.aclose()


async def test_the_blocks_own_failure_wins_and_carries_the_fakes_error() -> None:
    notes: list[str] = []
    try:
        with trio.fail_after(10):
            async with fake_server([Expect("LOGIN")]) as fake:
                await talk(fake.port, b"a NOOP\r\n")
                await (await fake.connection(0)).done.wait()
                raise ZeroDivisionError("the test's own failure")
    except* ZeroDivisionError as group:
        for exc in group.exceptions:
            notes += getattr(exc, "__notes__", [])
    assert any("expected LOGIN, got 'NOOP'" in note for note in notes), notes
