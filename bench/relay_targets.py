"""Servers for ``bench/relay_bench.py``: one Dovecot plus the relays put in front of it.

* :class:`BenchDovecot` - the test fixture's throwaway Dovecot with limits raised for
  thousands of concurrent sessions (imap process limit, client limits, per-user/IP limit);
* :class:`DirectTarget` - Dovecot's plain port itself (the baseline);
* :class:`HaproxyTarget` - HAProxy in TCP mode, TLS terminated on the client leg;
* :class:`ProxyTarget` - ``python -m imapproxy run`` (our proxy), TLS on the client leg.

Every process started here is stopped by its own PID (``Popen.terminate``/``kill``).
Process-level figures (RSS, CPU time) come from ``/proc/PID/{status,stat}``, summed over
the target process and its descendants.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.dovecot import DovecotServer  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


class TargetUnavailableError(RuntimeError):
    """A relay could not be started (the message says why)."""


# -- /proc helpers ---------------------------------------------------------------------


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # comm may contain spaces and parentheses: the fields start after the last ')'.
        fields = stat[stat.rindex(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    kids = _children_map()
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_seconds(pid: int, *, reaped: bool = False) -> float:
    """utime + stime (seconds) of ``pid`` and its live descendants; with ``reaped``, also
    the CPU time of descendants that already exited and were waited for (cutime+cstime)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
        if reaped:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime
    return total / CLK_TCK


def machine_busy_seconds() -> tuple[float, float]:
    """(busy CPU-seconds, elapsed CPU-seconds) of the whole machine since boot."""
    with open("/proc/stat") as fh:
        vals = [int(v) for v in fh.readline().split()[1:9]]  # guest time is inside user
    # user + nice + system + steal. Not irq/softirq: loopback networking runs there and
    # is not charged to any process, so it would count our own traffic as someone else's.
    busy = vals[0] + vals[1] + vals[2] + vals[7]
    return busy / CLK_TCK, sum(vals) / CLK_TCK


def rss_kib(pid: int) -> int:
    """VmRSS (KiB) of ``pid`` plus its live descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def count_processes(name: str, parent: int) -> int:
    """Live descendants of ``parent`` whose comm is ``name`` (e.g. Dovecot's ``imap``)."""
    n = 0
    for p in process_tree(parent):
        try:
            with open(f"/proc/{p}/comm") as fh:
                if fh.read().strip() == name:
                    n += 1
        except OSError:
            continue
    return n


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM ``proc`` (by its PID), SIGKILL it if it lingers."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def wait_port(
    port: int, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path | None
) -> None:
    """Wait until 127.0.0.1:``port`` accepts TCP connections (or ``proc`` dies)."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = _tail(log) if log else ""
            raise TargetUnavailableError(
                f"exited with status {proc.returncode}" + (f": {tail}" if tail else "")
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    tail = _tail(log) if log else ""
    raise TargetUnavailableError(
        f"port {port} not accepting after {timeout:.0f}s ({last!r})" + (f": {tail}" if tail else "")
    )


# -- Dovecot ---------------------------------------------------------------------------


class BenchDovecot(DovecotServer):
    """The fixture's Dovecot with room for thousands of idle sessions.

    The fixture allows 1000 processes per service (one ``imap`` process per session) and
    1000 connections per user and IP. The benchmark opens up to ``--sessions`` idle
    sessions at once, spread over several users, so both limits are raised here.
    """

    def __init__(
        self,
        *,
        max_sessions: int = 5000,
        login_service_count: int = 0,
        login_processes: int = 2,
        **kwargs: object,
    ) -> None:
        self.max_sessions = max_sessions
        self.login_service_count = login_service_count
        self.login_processes = login_processes
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def render_config(self) -> str:
        conf = super().render_config()
        procs = max(1000, self.max_sessions + 500)
        clients = max(4000, 2 * procs)
        replacements = {
            "default_process_limit = 1000": f"default_process_limit = {procs}",
            "default_client_limit = 4000": f"default_client_limit = {clients}",
            "mail_max_userip_connections = 1000": f"mail_max_userip_connections = {procs}",
        }
        for old, new in replacements.items():
            if old in conf:
                conf = conf.replace(old, new)
            else:  # fixture changed: append an override instead (later settings win)
                conf += f"\n{new}\n"
        # Dovecot's built-in "service imap" has its own process_limit (1024), and each
        # session is one imap process. imap-login in high-performance mode (reused login
        # processes) so that session set-up measures the relays more than Dovecot's
        # fork+exec of a login process per connection.
        conf += f"""
# Added by bench/relay_targets.py (BenchDovecot)
service imap {{
  process_limit = {procs}
}}
service imap-login {{
  service_count = {self.login_service_count}
  process_min_avail = {self.login_processes}
  process_limit = {procs}
}}
"""
        return conf


# -- targets ---------------------------------------------------------------------------


@dataclass
class Target:
    """Something an IMAP client can connect to."""

    name: str
    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = False
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def has_process(self) -> bool:
        return False

    def start(self) -> None:
        pass

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def endpoint(self) -> dict[str, object]:
        """What a client process needs (picklable)."""
        return {"name": self.name, "host": self.host, "port": self.port, "tls": self.tls}


class DirectTarget(Target):
    def __init__(self, dovecot: DovecotServer) -> None:
        super().__init__(name="direct", port=dovecot.port, tls=False)


class HaproxyTarget(Target):
    """``haproxy -db`` in TCP mode: ``bind ... ssl crt combined.pem`` -> Dovecot plain."""

    def __init__(self, dovecot: DovecotServer, workdir: Path, threads: int = 0) -> None:
        super().__init__(name="haproxy", tls=True)
        self.dovecot = dovecot
        self.workdir = workdir
        self.threads = threads
        self.starts = 0
        self.log = workdir / "haproxy.log"

    @property
    def has_process(self) -> bool:
        return True

    def start(self) -> None:
        binary = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
        if binary is None:
            raise TargetUnavailableError("haproxy not found: apt-get install -y haproxy")
        certs = self.dovecot.certs
        combined = self.workdir / "combined.pem"
        combined.write_bytes(certs.cert_path.read_bytes() + certs.key_path.read_bytes())
        combined.chmod(0o600)
        self.port = free_port()
        nbthread = f"  nbthread {self.threads}\n" if self.threads else ""
        # HAProxy needs ~2 fds per connection and refuses to start if it cannot get them.
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        maxconn = max(1000, min(30000, (nofile - 500) // 2))
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(
            "global\n"
            f"  maxconn {maxconn}\n"
            f"{nbthread}"
            "defaults\n"
            "  mode tcp\n"
            f"  maxconn {maxconn}\n"
            "  timeout connect 5s\n"
            "  timeout client 1h\n"
            "  timeout server 1h\n"
            "frontend imaps\n"
            f"  bind 127.0.0.1:{self.port} ssl crt {combined}\n"
            "  default_backend dovecot\n"
            "backend dovecot\n"
            f"  server s 127.0.0.1:{self.dovecot.port}\n"
        )
        self.starts += 1
        self.log = self.workdir / f"haproxy-{self.starts}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [binary, "-db", "-f", str(cfg)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, self.proc, 10.0, self.log)
        except BaseException:
            self.stop()
            raise
        version = subprocess.run([binary, "-v"], capture_output=True, text=True).stdout
        self.info |= {
            "version": version.splitlines()[0] if version else "?",
            "nbthread": f"nbthread {self.threads or 'auto (one per CPU)'}",
            "maxconn": maxconn,
            "config": str(cfg),
        }


class ProxyTarget(Target):
    """``python -m imapproxy run --listen-tls ... --upstream-tls none`` (our proxy)."""

    def __init__(
        self,
        dovecot: DovecotServer,
        workdir: Path,
        extra_args: list[str] | None = None,
        startup_timeout: float = 20.0,
        max_sessions: int = 5000,
        name: str = "proxy",
        root: Path = REPO_ROOT,
    ) -> None:
        super().__init__(name=name, tls=True)
        self.root = root  # the checkout whose imapproxy runs (the cwd of `python -m`)
        self.dovecot = dovecot
        self.workdir = workdir
        self.extra_args = extra_args or []
        self.startup_timeout = startup_timeout
        self.max_sessions = max_sessions
        self._limit_args: list[str] | None = None
        self.starts = 0
        self.log = workdir / "proxy.log"

    @property
    def has_process(self) -> bool:
        return True

    def session_limit_args(self) -> list[str]:
        """Raise the proxy's per-address session cap if it has one (all clients are
        127.0.0.1; the default cap of 100 would refuse the idle-session measurement)."""
        if self._limit_args is None:
            self._limit_args = []
            try:
                helptext = subprocess.run(
                    [sys.executable, "-m", "imapproxy", "run", "--help"],
                    cwd=self.root,
                    capture_output=True,
                    text=True,
                    timeout=30,
                ).stdout
            except (OSError, subprocess.SubprocessError):
                helptext = ""
            n = str(max(10_000, self.max_sessions + 1000))
            for opt in ("--max-sessions", "--max-sessions-per-address"):
                if f"{opt} " in helptext and opt not in self.extra_args:
                    self._limit_args += [opt, n]
        return self._limit_args

    def command(self) -> list[str]:
        certs = self.dovecot.certs
        return [
            sys.executable,
            "-m",
            "imapproxy",
            "run",
            "--listen-tls",
            f"127.0.0.1:{self.port}",
            "--cert",
            str(certs.cert_path),
            "--key",
            str(certs.key_path),
            "--upstream",
            f"127.0.0.1:{self.dovecot.port}",
            "--upstream-tls",
            "none",
            *self.session_limit_args(),
            *self.extra_args,
        ]

    def start(self) -> None:
        self.port = free_port()
        cmd = self.command()
        self.starts += 1
        self.log = self.workdir / f"{self.name}-{self.starts}.log"
        with self.log.open("ab") as out:
            # stderr goes to a file, never a pipe: a chatty proxy must not block on it.
            self.proc = subprocess.Popen(
                cmd,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_port(self.port, self.proc, self.startup_timeout, self.log)
        except BaseException:
            self.stop()
            raise
        self.info |= {"command": " ".join(cmd), "log": str(self.log)}


# -- session smoke test (used to decide that a target is usable) ----------------------


def smoke_test(target: Target, ctx: ssl.SSLContext, user: str, password: str) -> str:
    """Greeting + LOGIN + SELECT + LOGOUT through ``target``; returns the TLS cipher."""
    raw = socket.create_connection((target.host, target.port), timeout=10.0)
    sock: socket.socket = raw
    cipher = "none (plain)"
    try:
        if target.tls:
            sock = ctx.wrap_socket(raw, server_hostname="localhost")
            c = sock.cipher()  # type: ignore[attr-defined]
            cipher = f"{c[1]} {c[0]}" if c else "?"
        data = b""

        def until(tag: bytes) -> bytes:
            nonlocal data
            while True:
                for line in data.split(b"\r\n")[:-1]:
                    if line.startswith(tag + b" "):
                        if not line.startswith(tag + b" OK"):
                            raise TargetUnavailableError(f"smoke test: {line!r}")
                        data = b""
                        return line
                chunk = sock.recv(65536)
                if not chunk:
                    raise TargetUnavailableError(f"smoke test: connection closed after {data!r}")
                data += chunk

        until(b"*")
        sock.sendall(b"s1 LOGIN %s %s\r\n" % (user.encode(), password.encode()))
        until(b"s1")
        sock.sendall(b"s2 SELECT INBOX\r\n")
        until(b"s2")
        sock.sendall(b"s3 LOGOUT\r\n")
        until(b"s3")
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    return cipher
