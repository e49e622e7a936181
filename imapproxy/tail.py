"""``imapproxy tail``: the live inspector.

Attaches to a running proxy's control socket (``--socket PATH``, the proxy runs with
``--control-socket PATH``) or follows a JSONL transcript file (``--file PATH``, like
``tail -F``: from its end unless ``--from-start``, through logrotate's rename and the
proxy's reopen), and prints each record readably::

    12:00:01.234 4f2a-3 alice C> a1 SELECT INBOX
    12:00:01.236 4f2a-3 alice S< a1 OK [READ-WRITE] Select completed (1.2 ms)

``C>`` is the client's (towards the server), ``S<`` the server's (towards the client),
``--`` the session's start and end and notices.  A command a filter refused or answered
(or the relay refused) is marked ``[BLOCKED ...]``, one a filter rewrote ``[REWRITTEN
...]``; records lost on the way (a slow tail, a slow disk) are announced where they were
lost.  Filters (``--user`` ... ``--status``, each repeatable: any of its values; all
given options must match) are sent to the proxy, which queues only matching records for
this tail, and applied again here (a file has no proxy to do it).  ``--json`` prints the
matching records as they came.

Everything shown comes from the records, which the proxy has already redacted (no
password, no SASL data, literal bodies as ``<N bytes>``); what is printed is escaped once
more, so a record cannot send terminal escapes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any, TextIO

from .filters.live import RecordFilter
from .logsafe import safe

PROTOCOL = 1
FOLLOW_INTERVAL = 0.2  # seconds between looks at a file that has not grown (as tail -F)
MAX_LINE = 1 << 20  # bytes of one record line; the proxy's are far shorter (text <= 300)

BLOCKS = frozenset({"reject", "answer", "refuse", "disconnect", "abandoned"})

# ANSI SGR colours, used only on a terminal (or with --color always)
_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD_RED = "\x1b[1;31m"
_RED = "\x1b[31m"
_GREEN = "\x1b[32m"
_YELLOW = "\x1b[33m"
_BOLD_YELLOW = "\x1b[1;33m"
_CYAN = "\x1b[36m"
_MAGENTA = "\x1b[35m"


class TailError(Exception):
    """An operator's problem: one line, exit status 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--socket",
        metavar="PATH",
        help="a running proxy's control socket (imapproxy run --control-socket PATH)",
    )
    source.add_argument(
        "--file", metavar="PATH", help='a JSONL transcript file to follow (format = "jsonl")'
    )
    parser.add_argument("--user", action="append", default=[], help="only this user's records")
    parser.add_argument("--session", action="append", default=[], metavar="ID",
                        help="only this session's records")  # fmt: skip
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ADDR",
        help="only sessions from this client address (HOST or HOST:PORT)",
    )
    parser.add_argument(
        "--command",
        action="append",
        dest="commands",  # ("command" is the subcommand's)
        default=[],
        metavar="NAME",
        help="only commands of this name (FETCH covers UID FETCH) and their completions",
    )
    parser.add_argument(
        "--status",
        action="append",
        default=[],
        type=str.upper,
        choices=["OK", "NO", "BAD", "BYE", "PREAUTH"],
        help="only status responses with this status",
    )
    parser.add_argument("--json", action="store_true", help="print the records as JSON lines")
    parser.add_argument(
        "--color",
        choices=["auto", "always", "never"],
        default="auto",
        help="colour the output (default: auto, on a terminal unless NO_COLOR is set)",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        help="with --file: print what the file holds first (default: only new records)",
    )


# ----------------------------------------------------------------------------- rendering


def _clean(value: object, limit: int = 2000) -> str:
    return safe("" if value is None else value, limit)


def _clock(t: object) -> str:
    """The record's UTC time as local ``HH:MM:SS.mmm``."""
    if isinstance(t, str):
        try:
            stamp = datetime.fromisoformat(t.replace("Z", "+00:00")).astimezone()
        except ValueError:
            return _clean(t, 30)
        return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    if isinstance(t, (int, float)):
        stamp = datetime.fromtimestamp(t).astimezone()
        return stamp.strftime("%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}"
    return "--:--:--.---"


class Renderer:
    """Records to readable lines (colour or not)."""

    def __init__(self, *, color: bool) -> None:
        self.color = color

    def _c(self, code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if self.color else text

    def render(self, record: dict[str, Any]) -> list[str]:
        """The lines for one record: a "records lost" line first when it carries ``lost``."""
        lines = []
        lost = record.get("lost")
        kind = record.get("type")
        if isinstance(lost, int) and lost > 0 and kind != "notice":
            lines.append(self._c(_BOLD_YELLOW, f"-- {lost} records lost here"))
        lines.append(self._line(record, kind))
        return lines

    def _line(self, record: dict[str, Any], kind: object) -> str:
        head = (
            f"{_clock(record.get('t'))} {_clean(record.get('session') or '-', 64)} "
            f"{_clean(record.get('user') or '-', 64)}"
        )
        head = self._c(_DIM, head)
        text = _clean(record.get("text"))
        if kind == "command":
            verdict = record.get("verdict")
            arrow = self._c(_CYAN, "C>")
            if verdict in BLOCKS:
                mark = f"[BLOCKED: {_clean(verdict, 20)} by {_clean(record.get('filter'), 64)}]"
                return f"{head} {arrow} {self._c(_BOLD_RED, text + '  ' + mark)}"
            if verdict == "replace":
                mark = f"[REWRITTEN by {_clean(record.get('filter'), 64)}]"
                return f"{head} {arrow} {self._c(_BOLD_YELLOW, text + '  ' + mark)}"
            if verdict:
                mark = f"[{_clean(verdict, 20)} by {_clean(record.get('filter'), 64)}]"
                return f"{head} {arrow} {text}  {mark}"
            return f"{head} {arrow} {text}"
        if kind == "response":
            arrow = self._c(_MAGENTA, "S<")
            latency = record.get("latency_ms")
            suffix = f" ({latency:.1f} ms)" if isinstance(latency, (int, float)) else ""
            status = record.get("status")
            if status == "BYE" or (record.get("tag") is not None and status in ("NO", "BAD")):
                text = self._c(_RED, text)
            elif record.get("tag") is not None and status == "OK":
                text = self._c(_GREEN, text)
            return f"{head} {arrow} {text}{self._c(_DIM, suffix)}"
        if kind == "client_line":
            arrow = self._c(_CYAN, "C>")
            if record.get("kind") == "idle_done":
                return f"{head} {arrow} DONE"
            return f"{head} {arrow} *** (SASL data, {_clean(record.get('bytes'))} bytes)"
        if kind == "session_start":
            tls = record.get("tls")
            how = f"TLS {_clean(tls.get('version'), 30)}" if isinstance(tls, dict) else "plaintext"
            where = f"{_clean(record.get('client'), 80)} on {_clean(record.get('listener'), 80)}"
            return f"{head} {self._c(_DIM, f'-- session start from {where}, {how}')}"
        if kind == "session_end":
            duration = record.get("duration")
            took = f" {duration:.3f}s" if isinstance(duration, (int, float)) else ""
            end = (
                f"-- session end: {_clean(record.get('reason'), 64)} "
                f"({_clean(record.get('detail'), 200)}), in={_clean(record.get('bytes_in'))} "
                f"out={_clean(record.get('bytes_out'))}{took}"
            )
            return f"{head} {self._c(_DIM, end)}"
        if kind == "notice":
            return self._c(_BOLD_YELLOW, f"{_clock(record.get('t'))} -- {text}")
        return f"{head} -- {_clean(kind, 30)} {text}".rstrip()


# ----------------------------------------------------------------------------- sources


def read_socket(path: str, wanted: RecordFilter, say: Callable[[str], None]) -> Iterator[str]:
    """Lines from a proxy's control socket (the hello consumed)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise TailError(
            f"cannot connect to {path}: {reason}; is the proxy running with "
            f"--control-socket {path}?"
        ) from None
    with sock:
        if wanted:
            sock.sendall(json.dumps({"filter": wanted.to_json()}).encode() + b"\n")
        lines = _socket_lines(sock)
        first = next(lines, None)
        try:
            hello = json.loads(first) if first is not None else None
        except ValueError:
            hello = None
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            if isinstance(hello, dict) and hello.get("type") == "notice":
                raise TailError(f"{path}: the proxy says: {_clean(hello.get('text'))}")
            raise TailError(f"{path}: not an imapproxy control socket (no hello)")
        if hello.get("protocol") != PROTOCOL:
            raise TailError(
                f"{path}: control protocol {_clean(hello.get('protocol'))}, this tail speaks "
                f"{PROTOCOL}: use the imapproxy that runs the proxy"
            )
        say(f"attached to {path} (imapproxy pid {_clean(hello.get('pid'))})")
        yield from lines
        say(f"{path}: the proxy closed the connection")


def _socket_lines(sock: socket.socket) -> Iterator[str]:
    buf = b""
    while True:
        data = sock.recv(1 << 16)
        if not data:
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "replace")
        if len(buf) > MAX_LINE:
            raise TailError(f"a line longer than {MAX_LINE} bytes from the socket")


def follow_file(
    path: str,
    say: Callable[[str], None],
    *,
    from_start: bool,
    sleep: Callable[[float], None] = time.sleep,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[str]:
    """Lines of a growing file, as ``tail -F``: when the path comes to name another file
    (logrotate renamed it and the proxy reopened it) the rest of the old one is read, then
    the new one from its start; a file cut short is read again from its start."""
    try:
        f = open(path, "rb")  # noqa: SIM115 (kept open across yields, closed below)
    except OSError as exc:
        raise TailError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        if not from_start:
            f.seek(0, os.SEEK_END)
        say(f"following {path}" + (" from its start" if from_start else ""))
        buf = b""
        while True:
            data = f.read(1 << 16)
            if data:
                buf += data
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
                if len(buf) > MAX_LINE:
                    buf = b""  # not a transcript line; skip it
                continue
            if stop():
                return
            replaced = _replacement(path, f)
            if replaced is not None:
                f.close()
                f = replaced
                buf = b""
                say(f"{path} was rotated: following the new file")
                continue
            sleep(FOLLOW_INTERVAL)
    finally:
        f.close()


def _replacement(path: str, f: Any) -> Any | None:
    """The file ``path`` names now, opened, if it is not ``f`` any more; ``f`` rewound
    when it was cut short (copytruncate)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None  # renamed, the new one not made yet: keep waiting
    mine = os.fstat(f.fileno())
    if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
        try:
            return open(path, "rb")
        except OSError:
            return None
    if st.st_size < f.tell():
        f.seek(0)
    return None


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """``imapproxy tail``: the exit status (2: the operator's problem, said in one line)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        wanted = RecordFilter.build(
            user=args.user,
            session=args.session,
            client=args.client,
            command=args.commands,
            status=args.status,
        )
    except ValueError as exc:
        print(f"imapproxy tail: error: {exc}", file=err)
        return 2
    color = args.color == "always" or (
        args.color == "auto"
        and out.isatty()
        and not os.environ.get("NO_COLOR")
        and os.environ.get("TERM") != "dumb"
    )
    renderer = Renderer(color=color)

    def say(text: str) -> None:
        print(f"imapproxy tail: {text}", file=err, flush=True)

    try:
        if args.socket:
            lines = read_socket(args.socket, wanted, say)
        else:
            lines = follow_file(args.file, say, from_start=args.from_start)
        _print(lines, wanted, renderer, out, say, as_json=args.json)
    except TailError as exc:
        print(f"imapproxy tail: error: {exc}", file=err)
        return 2
    except KeyboardInterrupt:
        return 0  # Ctrl-C: the normal way to stop; quietly
    except BrokenPipeError:  # `imapproxy tail ... | head`
        _quiet_stdout()
        return 0
    return 0


class Selector:
    """Which records to show, and when.  With ``--user``, a session's records from before
    its login (no user yet: the greeting, CAPABILITY, the LOGIN command) are held until
    the session has a user: shown then if it is a wanted one, dropped otherwise (or when
    the session ends without one).  Bounded: a few records of a few sessions."""

    MAX_SESSIONS = 1024  # sessions with records held (the oldest go first)
    MAX_RECORDS = 64  # records held per session (a login takes about ten)

    def __init__(self, wanted: RecordFilter) -> None:
        self.wanted = wanted
        self.held: dict[str, list[tuple[str, dict[str, Any]]]] = {}

    def select(self, line: str, record: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        wanted = self.wanted
        session = record.get("session")
        if not wanted.user or not isinstance(session, str) or record.get("type") == "notice":
            return [(line, record)] if wanted.matches(record) else []
        if record.get("user") is None:
            if record.get("type") == "session_end":
                self.held.pop(session, None)
            elif wanted.matches(record, before_login=True):
                held = self.held.setdefault(session, [])
                if len(held) < self.MAX_RECORDS:
                    held.append((line, record))
                if len(self.held) > self.MAX_SESSIONS:
                    del self.held[next(iter(self.held))]
            return []
        out = self.held.pop(session, [])
        if record.get("user") not in wanted.user:
            out = []
        if wanted.matches(record):
            out.append((line, record))
        return out


def _print(
    lines: Iterator[str],
    wanted: RecordFilter,
    renderer: Renderer,
    out: TextIO,
    say: Callable[[str], None],
    *,
    as_json: bool,
) -> None:
    warned = False
    selector = Selector(wanted)
    for line in lines:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if not warned:
                say("skipping lines that are not JSON records (is this a JSONL transcript? "
                    'format = "jsonl")')  # fmt: skip
                warned = True
            continue
        shown = selector.select(line, record)
        lost = record.get("lost")
        if not shown and isinstance(lost, int) and lost > 0:
            # what was lost may have matched: say so anyway, as a notice
            notice = {"v": 1, "t": record.get("t"), "type": "notice", "session": None,
                      "client": None, "user": None, "lost": lost,
                      "text": f"{lost} records lost here"}  # fmt: skip
            shown = [(json.dumps(notice, separators=(",", ":")), notice)]
        for text, rec in shown:
            if as_json:
                out.write(text.rstrip("\r") + "\n")
            else:
                out.write("\n".join(renderer.render(rec)) + "\n")
        if shown:
            out.flush()


def _quiet_stdout() -> None:
    """After EPIPE: point stdout at /dev/null so the interpreter's final flush is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
