"""``imapproxy tail`` against a live proxy (the real CLI as subprocesses on both sides, the
real Dovecot behind, imaplib in front): attached to the control socket, plain and
filtered and ``--json``; following a JSONL transcript across logrotate's rename and the
proxy's reopen; a tail that stops reading neither slows sessions nor goes without being
told how many records it lost."""

from __future__ import annotations

import contextlib
import imaplib
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.support.dovecot import DovecotServer
from tests.support.proxy import ROOT, ProxyProcess, free_port

HOST = "127.0.0.1"
NewUser = Callable[[], tuple[str, str]]
WAIT = 30.0  # seconds: generous bounds (a shared, busy machine); events end waits early


class Tail:
    """``python -m imapproxy tail ARGS`` with stdout and stderr in files."""

    def __init__(self, args: list[str], workdir: Path, name: str) -> None:
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("NO_COLOR", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imapproxy", "tail", *args],
            stdout=self.out_path.open("wb"),
            stderr=self.err_path.open("wb"),
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
        )

    def out(self) -> str:
        return self.out_path.read_text(errors="replace")

    def err(self) -> str:
        return self.err_path.read_text(errors="replace")

    def wait_for(self, what: Callable[[], bool], message: str) -> None:
        deadline = time.monotonic() + WAIT
        while not what():
            if self.proc.poll() is not None and not what():
                pytest.fail(f"tail exited ({self.proc.returncode}) before {message}:\n"
                            f"{self.err()}\n{self.out()[-3000:]}")  # fmt: skip
            if time.monotonic() > deadline:
                pytest.fail(f"timed out waiting for {message}:\n{self.err()}\n"
                            f"{self.out()[-3000:]}")  # fmt: skip
            time.sleep(0.05)

    def attached(self) -> Tail:
        started = ("imapproxy tail: attached to", "imapproxy tail: following")
        self.wait_for(lambda: any(s in self.err() for s in started), "the tail to start")
        return self

    def interrupt(self) -> int:
        """Ctrl-C; the exit status."""
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(WAIT)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="module")
def live_proxy(
    dovecot: DovecotServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ProxyProcess, int, Path, Path]]:
    """A proxy with a control socket and a JSONL transcript file (room enough that it
    loses nothing): (process, port, control socket path, transcript path)."""
    workdir = tmp_path_factory.mktemp("tail")
    control = workdir / "control.sock"
    transcript = workdir / "transcript.jsonl"
    config = workdir / "proxy.toml"
    config.write_text(f'[[filters]]\nuse = "transcript"\npath = "{transcript}"\n'
                      'format = "jsonl"\ncapacity = 200000\non_error = "open"\n')  # fmt: skip
    port = free_port()
    args = ["--listen", f"{HOST}:{port}", "--upstream", f"{dovecot.host}:{dovecot.port}",
            "--config", str(config), "--control-socket", str(control)]  # fmt: skip
    with ProxyProcess(args, workdir=workdir, wait_ports=[(HOST, port)]) as proxy:
        yield proxy, port, control, transcript


def _records(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _session_ended(tail: Tail, user: str) -> Callable[[], bool]:
    return lambda: any(" -- session end" in line and f" {user} " in line
                       for line in tail.out().splitlines())  # fmt: skip


def test_plain_output_shows_the_conversation_in_order(
    live_proxy: tuple[ProxyProcess, int, Path, Path], new_user: NewUser, tmp_path: Path
) -> None:
    _, port, control, _ = live_proxy
    assert stat.S_IMODE(control.stat().st_mode) == 0o600
    user, password = new_user()
    tail = Tail(["--socket", str(control), "--user", user], tmp_path, "plain").attached()
    try:
        conn = imaplib.IMAP4(HOST, port, timeout=WAIT)
        conn.login(user, password)
        assert conn.select("INBOX")[0] == "OK"
        assert conn.noop()[0] == "OK"
        conn.logout()
        tail.wait_for(_session_ended(tail, user), "the session's end")
    finally:
        status = tail.interrupt()
    out = tail.out()
    assert status == 0, tail.err()
    assert "Traceback" not in tail.err()
    assert password not in out
    assert "\x1b[" not in out  # piped: no colour
    lines = out.splitlines()
    stamp = r"\d\d:\d\d:\d\d\.\d{3} [0-9a-f]+-\d+ " + re.escape(user)
    before = r"\d\d:\d\d:\d\d\.\d{3} [0-9a-f]+-\d+ - "  # no user yet
    patterns = [
        before + rf"-- session start from {HOST}:\d+ on imap@{HOST}:{port}, plaintext$",
        before + r"S< \* OK .*ready",
        before + rf"C> [A-Z0-9]+ LOGIN {user} \*\*\*$",
        stamp + r" S< [A-Z0-9]+ OK .*\(\d+\.\d ms\)$",  # LOGIN's completion
        stamp + r" C> [A-Z0-9]+ SELECT INBOX$",
        stamp + r" S< \* .*EXISTS$",
        stamp + r" S< [A-Z0-9]+ OK \[READ-WRITE\] .*\(\d+\.\d ms\)$",
        stamp + r" C> [A-Z0-9]+ NOOP$",
        stamp + r" S< [A-Z0-9]+ OK .*\(\d+\.\d ms\)$",
        stamp + r" C> [A-Z0-9]+ LOGOUT$",
        stamp + r" S< \* BYE .*",
        stamp + r" -- session end: logout .*",
    ]
    at = 0
    for pattern in patterns:  # in this order, each after the one before
        while at < len(lines) and not re.match(pattern, lines[at]):
            at += 1
        assert at < len(lines), f"no line matching {pattern!r} in order:\n{out}"
        at += 1


def test_filtered_and_json_output(
    live_proxy: tuple[ProxyProcess, int, Path, Path], new_user: NewUser, tmp_path: Path
) -> None:
    _, port, control, _ = live_proxy
    alice, alice_pw = new_user()
    bob, bob_pw = new_user()
    by_command = Tail(["--socket", str(control), "--user", alice, "--command", "select"],
                      tmp_path, "command")  # fmt: skip
    by_status = Tail(["--socket", str(control), "--status", "NO", "--user", bob], tmp_path,
                     "status")  # fmt: skip
    as_json = Tail(["--socket", str(control), "--json", "--client", HOST], tmp_path, "json")
    tails = [by_command, by_status, as_json]
    try:
        for t in tails:
            t.attached()
        for user, password in ((alice, alice_pw), (bob, bob_pw)):
            conn = imaplib.IMAP4(HOST, port, timeout=WAIT)
            conn.login(user, password)
            assert conn.select("INBOX")[0] == "OK"
            assert conn.select("NoSuchBox")[0] == "NO"
            conn.logout()
        as_json.wait_for(
            lambda: sum('"type":"session_end"' in line and f'"user":"{bob}"' in line
                        for line in as_json.out().splitlines()) == 1,
            "bob's session end in the JSON tail",
        )  # fmt: skip
        # the filtered tails got the same feed; what they show is complete once the
        # JSON tail saw the end of the last session (same proxy, same order)
        by_status.wait_for(lambda: "NoSuchBox" in by_status.out() or "NO " in by_status.out(),
                           "bob's NO")  # fmt: skip
        by_command.wait_for(lambda: len(by_command.out().splitlines()) >= 4, "alice's SELECTs")
        time.sleep(0.3)  # (anything wrongly shown would have come with the rest)
    finally:
        for t in tails:
            assert t.interrupt() == 0, t.err()

    lines = by_command.out().splitlines()
    assert len(lines) == 4, lines  # two SELECTs and their two completions, nothing else
    assert re.search(r" C> \S+ SELECT INBOX$", lines[0]), lines
    assert " S< " in lines[1] and " OK [READ-WRITE]" in lines[1], lines
    assert re.search(r" C> \S+ SELECT NoSuchBox$", lines[2]), lines
    assert " S< " in lines[3] and " NO " in lines[3], lines
    assert all(f" {alice} " in line for line in lines), lines

    lines = by_status.out().splitlines()
    assert len(lines) == 1, lines  # bob's one NO (his OKs and alice's NO are not shown)
    assert f" {bob} S< " in lines[0] and " NO " in lines[0], lines

    records = _records(as_json.out())
    assert records, as_json.err()
    users = set()
    for record in records:
        assert record["v"] == 1
        assert record["type"] in {"session_start", "command", "client_line", "response",
                                  "session_end"}, record  # fmt: skip
        assert isinstance(record["t"], str) and record["t"].endswith("Z")
        assert str(record["client"]).startswith(f"{HOST}:"), record
        assert {"session", "user"} <= record.keys()
        users.add(record["user"])
    assert {alice, bob} <= users
    logins = [r for r in records if r["type"] == "command" and r["name"] == "LOGIN"]
    expected = [f"{r['tag']} LOGIN {u} ***" for r, u in zip(logins, (alice, bob), strict=True)]
    assert [r["text"] for r in logins] == expected
    everything = as_json.out() + by_command.out() + by_status.out()
    assert alice_pw not in everything and bob_pw not in everything


def test_follows_a_transcript_file_across_rotation(
    live_proxy: tuple[ProxyProcess, int, Path, Path], new_user: NewUser, tmp_path: Path
) -> None:
    proxy, port, _, transcript = live_proxy
    user, password = new_user()
    tail = Tail(["--file", str(transcript), "--user", user], tmp_path, "file").attached()

    def session(mailbox: str) -> None:
        conn = imaplib.IMAP4(HOST, port, timeout=WAIT)
        conn.login(user, password)
        conn.select(mailbox)
        conn.logout()

    try:
        session("INBOX")
        tail.wait_for(lambda: "SELECT INBOX" in tail.out() and "session end" in tail.out(),
                      "the first session")  # fmt: skip
        transcript.rename(transcript.with_name("transcript.jsonl.1"))  # logrotate's rename
        os.kill(proxy.pid, signal.SIGUSR1)  # ... and its postrotate: the proxy reopens
        deadline = time.monotonic() + WAIT
        while not transcript.exists():  # (the proxy makes it on its next write)
            session("Rotated")
            assert time.monotonic() < deadline, "the proxy did not reopen its transcript"
            time.sleep(0.1)
        tail.wait_for(lambda: "SELECT Rotated" in tail.out(), "a session after the rotation")
    finally:
        assert tail.interrupt() == 0, tail.err()
    assert "was rotated: following the new file" in tail.err()
    assert password not in tail.out()
    assert tail.out().index("SELECT INBOX") < tail.out().index("SELECT Rotated")


def test_a_stuck_tail_does_not_slow_sessions_and_is_told_what_it_lost(
    live_proxy: tuple[ProxyProcess, int, Path, Path], new_user: NewUser, tmp_path: Path
) -> None:
    """A tail that stops reading (SIGSTOP): its socket buffer, then its queue (10,000
    records) fill up; sessions go on (thousands of pipelined NOOPs complete); when it
    resumes it is told exactly how many records it lost."""
    _, port, control, transcript = live_proxy
    user, password = new_user()
    tail = Tail(["--socket", str(control), "--json", "--user", user], tmp_path, "stuck")
    tail.attached()
    noops = 15_000  # 30,000 records: more than the queue and the socket buffer hold
    os.kill(tail.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with socket.create_connection((HOST, port), timeout=WAIT) as sock:
            f = sock.makefile("rb")
            f.readline()  # greeting
            sock.sendall(b'L LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
            assert f.readline().startswith(b"L OK"), "login failed"
            for start in range(0, noops, 2500):  # (the proxy allows 10,000 in flight)
                sock.sendall(b"".join(b"n%d NOOP\r\n" % i for i in range(start, start + 2500)))
                last = b"n%d " % (start + 2499)
                while not (line := f.readline()).startswith(last):
                    assert line, "the proxy closed the session"
            sock.sendall(b"Z LOGOUT\r\n")
            while not f.readline().startswith(b"Z "):
                pass
        # an ordinary session, while the tail is still stuck
        conn = imaplib.IMAP4(HOST, port, timeout=WAIT)
        conn.login(user, password)
        conn.logout()
        elapsed = time.monotonic() - started
    finally:
        os.kill(tail.proc.pid, signal.SIGCONT)
    assert elapsed < WAIT, f"sessions took {elapsed:.1f} s with a stuck tail"

    def lost_reported() -> bool:
        return any('"lost":' in line for line in tail.out().splitlines()[-3:])

    try:
        tail.wait_for(lost_reported, "the notice of what was lost")
    finally:
        assert tail.interrupt() == 0, tail.err()
    records = _records(tail.out())
    lost = sum(int(r.get("lost", 0)) for r in records)  # type: ignore[call-overload]
    got = [r for r in records if r["type"] != "notice"]
    # the proxy's own transcript file (a queue large enough) has every record of the
    # user's two sessions (those from before the login included: a tail filtered by user
    # is sent them too)
    every = _session_records(transcript, user, sessions=2)
    assert lost > 0
    assert len(got) + lost == len(every), (len(got), lost, len(every))
    # told in-band: on the next record after the losses, or in a notice when none followed
    assert any("lost" in r for r in records)


def _session_records(transcript: Path, user: str, sessions: int) -> list[dict[str, object]]:
    """The records of the user's sessions in the proxy's transcript (and its rotated
    predecessor), once ``sessions`` of them have ended there (its writer may lag)."""
    deadline = time.monotonic() + WAIT
    while True:
        text = "".join(p.read_text() for p in transcript.parent.glob("transcript.jsonl*"))
        records = _records(text)
        ids = {r["session"] for r in records if r.get("user") == user}
        mine = [r for r in records if r["session"] in ids]
        if sum(r["type"] == "session_end" for r in mine) >= sessions:
            return mine
        assert time.monotonic() < deadline, "the transcript file lacks the sessions"
        time.sleep(0.1)


def _exchange(control: Path, send: bytes) -> list[dict[str, object]]:
    """What the proxy says to a client that sends ``send``, up to its closing."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(WAIT)
        sock.connect(str(control))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(send)
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


def test_control_socket_protocol_errors(
    live_proxy: tuple[ProxyProcess, int, Path, Path],
) -> None:
    _, _, control, _ = live_proxy
    lines = _exchange(control, b'{"filter": {"colour": ["red"]}}\n')
    assert lines[0]["type"] == "hello" and lines[0]["protocol"] == 1
    assert lines[-1]["type"] == "notice"
    assert "bad request: unknown filter field 'colour'" in str(lines[-1]["text"])
    lines = _exchange(control, b"x" * 100_000)  # a line without end
    assert lines[-1]["type"] == "notice"
    assert "bad request: a line longer than 65536 bytes" in str(lines[-1]["text"])


def test_at_most_eight_tails(live_proxy: tuple[ProxyProcess, int, Path, Path]) -> None:
    _, _, control, _ = live_proxy
    with contextlib.ExitStack() as stack:
        for _ in range(8):
            sock = stack.enter_context(socket.socket(socket.AF_UNIX))
            sock.settimeout(WAIT)
            sock.connect(str(control))
            assert b'"type": "hello"' in sock.recv(4096)  # attached
        err = subprocess.run(
            [sys.executable, "-m", "imapproxy", "tail", "--socket", str(control)],
            capture_output=True, text=True, timeout=WAIT, cwd=ROOT,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
    assert err.returncode == 2, err
    assert err.stderr == (f"imapproxy tail: error: {control}: the proxy says: too many tails "
                          "attached (at most 8)\n")  # fmt: skip
