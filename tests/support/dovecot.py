"""A throwaway, real Dovecot IMAP server for integration tests.

Everything lives in one short temp dir (unix socket paths under ``base_dir`` must stay
below 108 bytes) and the generated ``dovecot.conf`` never includes ``/etc/dovecot``.
Dovecot runs in the foreground (``dovecot -F``) as our child process, so stopping it is
just terminating that PID.

Test-only settings that matter:

* plaintext auth allowed on the plain port (it still offers STARTTLS);
* no login penalty after failed logins (``auth_failure_delay = 0`` and no
  ``anvil-auth-penalty`` socket) - otherwise one failed-login test slows every later
  login from 127.0.0.1 by seconds. A failed login itself still takes ~0.5 s on 2.3.19
  (its auth process answers failures on a fixed 500 ms tick);
* ``mail_max_userip_connections`` and process limits raised for concurrency tests;
* ``imap_zlib`` loaded so that ``COMPRESS=DEFLATE`` is advertised after login.

Typical use::

    with DovecotServer() as server:
        server.seed_message("alice", b"Subject: hi\\r\\n\\r\\nbody\\r\\n", flags="S")
        imaplib.IMAP4(server.host, server.port).login("alice", server.users["alice"])
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from .certs import TlsCerts, client_ssl_context, make_tls_certs

DOVECOT_NOT_FOUND = "Dovecot not found: apt-get install -y dovecot-imapd"

DEFAULT_USERS: dict[str, str] = {"alice": "alicepw", "bob": "bobpw"}

# Maildir "info" flags Dovecot understands (must appear sorted in the file name).
_MAILDIR_FLAGS = frozenset("DFPRST")
# Longest unix socket path Dovecot creates below base_dir is ~30 bytes; sun_path is 108.
_MAX_BASE_DIR_LEN = 70


class DovecotNotFoundError(RuntimeError):
    """The ``dovecot`` binary is not installed."""


class DovecotStartError(RuntimeError):
    """Dovecot did not come up (the message carries the tail of its logs)."""


def find_dovecot() -> str:
    """Path of the ``dovecot`` binary, or raise :class:`DovecotNotFoundError`."""
    path = shutil.which("dovecot") or shutil.which("dovecot", path="/usr/sbin:/usr/local/sbin")
    if path is None:
        raise DovecotNotFoundError(DOVECOT_NOT_FOUND)
    return path


def dovecot_version() -> str:
    return subprocess.run(
        [find_dovecot(), "--version"], check=True, capture_output=True, text=True
    ).stdout.strip()


def _free_ports(count: int) -> list[int]:
    """Ports the kernel considers free on 127.0.0.1 (all bound at once, so distinct)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"<{path} unreadable or missing>"
    return "\n".join(text.splitlines()[-lines:]) or f"<{path} empty>"


class DovecotServer:
    """A real Dovecot listening on 127.0.0.1 with a plain (STARTTLS) and an implicit-TLS port.

    ``workdir`` defaults to a fresh ``/tmp/dvXXXXXXXX`` that is removed by :meth:`stop`;
    a caller-supplied ``workdir`` is left in place. ``certs`` defaults to a new trustme CA
    and ``localhost`` certificate written into the workdir.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        *,
        users: dict[str, str] | None = None,
        certs: TlsCerts | None = None,
        workdir: Path | str | None = None,
        startup_timeout: float = 15.0,
        haproxy: bool = False,
        login_trusted_networks: str | None = None,
    ) -> None:
        """``haproxy``: a third listener (``haproxy_port``) that takes a PROXY protocol
        header from 127.0.0.0/8 (``haproxy_trusted_networks``); ``login_trusted_networks``:
        networks whose ID x-originating-ip Dovecot believes."""
        self.binary = find_dovecot()
        self.haproxy = haproxy
        self.login_trusted_networks = login_trusted_networks
        self.haproxy_port = 0
        self.users: dict[str, str] = dict(DEFAULT_USERS if users is None else users)
        self._certs = certs
        self._given_workdir = Path(workdir) if workdir is not None else None
        self.startup_timeout = startup_timeout
        self.port = 0
        self.tls_port = 0
        self.workdir = Path()
        self._proc: subprocess.Popen[bytes] | None = None
        self._seq = itertools.count()

        if os.geteuid() == 0:
            # Dovecot refuses uid 0 for mail; use nobody's uid/gid for mail processes and
            # Debian's dedicated users for internal and login processes.
            nobody = pwd.getpwnam("nobody")
            self.mail_uid, self.mail_gid = nobody.pw_uid, nobody.pw_gid
            self._internal_user, self._login_user = "dovecot", "dovenull"
            self._internal_group = "dovecot"
        else:
            me = pwd.getpwuid(os.geteuid())
            self.mail_uid, self.mail_gid = me.pw_uid, os.getegid()
            self._internal_user = self._login_user = me.pw_name
            self._internal_group = grp.getgrgid(os.getegid()).gr_name

    # -- paths ---------------------------------------------------------------------------

    @property
    def ca_path(self) -> Path:
        return self.certs.ca_path

    @property
    def certs(self) -> TlsCerts:
        if self._certs is None:
            raise RuntimeError("DovecotServer not started")
        return self._certs

    @property
    def conf_path(self) -> Path:
        return self.workdir / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "dovecot.log"

    @property
    def _stdio_path(self) -> Path:
        return self.workdir / "dovecot.stdio"

    @property
    def passwd_path(self) -> Path:
        return self.workdir / "passwd"

    def home(self, user: str) -> Path:
        return self.workdir / "home" / user

    def maildir(self, user: str, mailbox: str = "INBOX") -> Path:
        """Maildir++ directory of ``mailbox`` (``INBOX`` is the Maildir root)."""
        root = self.home(user) / "Maildir"
        if mailbox.upper() == "INBOX":
            return root
        return root / ("." + mailbox.replace("/", "."))

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> DovecotServer:
        if self._proc is not None:
            raise RuntimeError("DovecotServer already started")
        if self._given_workdir is not None:
            self.workdir = self._given_workdir
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix="dv", dir="/tmp"))
        try:
            if len(str(self.workdir / "run")) > _MAX_BASE_DIR_LEN:
                raise ValueError(f"workdir too long for unix sockets: {self.workdir}")
            # Mail (nobody), auth (dovecot) and login (dovenull) processes must traverse it.
            self.workdir.chmod(0o755)
            if self._certs is None:
                self._certs = make_tls_certs(self.workdir / "tls")
            for sub in ("run", "state"):
                (self.workdir / sub).mkdir(exist_ok=True)
            self._write_passwd()
            for user in self.users:
                self._make_maildir(user)
            self._start_with_retries()
        except DovecotStartError:
            self._terminate()  # keep the workdir: its config and logs explain the failure
            raise
        except BaseException:
            self.stop()
            raise
        return self

    def _start_with_retries(self, attempts: int = 3) -> None:
        for attempt in range(1, attempts + 1):
            self.port, self.tls_port, self.haproxy_port = _free_ports(3)
            self.conf_path.write_text(self.render_config())
            with self._stdio_path.open("ab") as stdio:
                self._proc = subprocess.Popen(
                    [self.binary, "-F", "-c", str(self.conf_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=stdio,
                    stderr=subprocess.STDOUT,
                )
            try:
                self._wait_ready()
                return
            except DovecotStartError as exc:
                self._terminate()
                # Someone grabbed a port between our probe and Dovecot's bind: try again.
                if attempt < attempts and "Address already in use" in str(exc):
                    continue
                raise

    def stop(self) -> None:
        self._terminate()
        if self._given_workdir is None and self.workdir != Path() and self.workdir.exists():
            shutil.rmtree(self.workdir, ignore_errors=True)

    def _terminate(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()  # master SIGTERMs its children and waits for them
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- readiness -----------------------------------------------------------------------

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        ctx = client_ssl_context(self.ca_path)
        pending = {"plain": self.port, "tls": self.tls_port}
        last_error: Exception | None = None
        while pending:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise DovecotStartError(
                    self._failure(f"dovecot exited with status {self._proc.returncode}")
                )
            if time.monotonic() > deadline:
                raise DovecotStartError(
                    self._failure(
                        f"no IMAP greeting within {self.startup_timeout}s on "
                        f"{sorted(pending)} (last error: {last_error!r})"
                    )
                )
            for kind, port in list(pending.items()):
                try:
                    greeting = self._read_greeting(port, ctx if kind == "tls" else None)
                except (OSError, ValueError) as exc:
                    last_error = exc
                    continue
                if not greeting.startswith(b"* OK"):
                    raise DovecotStartError(self._failure(f"bad greeting {greeting!r}"))
                del pending[kind]
            if pending:
                time.sleep(0.05)

    def _read_greeting(self, port: int, ctx: ssl.SSLContext | None) -> bytes:
        with socket.create_connection((self.host, port), timeout=2.0) as raw:
            sock: socket.socket = raw
            if ctx is not None:
                sock = ctx.wrap_socket(raw, server_hostname="localhost")
            with sock:
                data = b""
                while not data.endswith(b"\r\n"):
                    chunk = sock.recv(4096)
                    if not chunk:
                        raise ValueError(f"connection closed after {data!r}")
                    data += chunk
                with contextlib.suppress(OSError):
                    sock.sendall(b"x LOGOUT\r\n")
                return data

    def _failure(self, what: str) -> str:
        return (
            f"Dovecot failed to start: {what}\n"
            f"config: {self.conf_path} (workdir kept for inspection)\n"
            f"--- tail of {self.log_path} ---\n{_tail(self.log_path)}\n"
            f"--- tail of dovecot stdout/stderr ---\n{_tail(self._stdio_path)}"
        )

    # -- users and mail ------------------------------------------------------------------

    def _write_passwd(self) -> None:
        lines = []
        for user, password in self.users.items():
            if any(c in user + password for c in ":\n") or not user:
                raise ValueError(f"unsupported user/password for passwd-file: {user!r}")
            lines.append(
                f"{user}:{{PLAIN}}{password}:{self.mail_uid}:{self.mail_gid}::{self.home(user)}::\n"
            )
        tmp = self.passwd_path.with_suffix(".tmp")
        tmp.write_text("".join(lines))
        tmp.chmod(0o644)  # read by the auth process (default_internal_user)
        tmp.replace(self.passwd_path)

    def add_user(self, user: str, password: str) -> None:
        """Add (or change) a user while Dovecot runs.

        Dovecot re-reads a changed passwd-file, but checks it at most once per second
        (per auth-process clock second), so this returns only after the next whole second
        has begun - then the very next login sees the change.
        """
        self.users[user] = password
        self._make_maildir(user)
        self._write_passwd()
        if self.running:
            now = time.time()
            time.sleep(int(now) + 1 - now + 0.02)

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            os.chown(path, self.mail_uid, self.mail_gid)

    def _mkdir_owned(self, path: Path) -> None:
        if not path.is_dir():
            path.mkdir(mode=0o700)
            self._chown(path)

    def _make_maildir(self, user: str, mailbox: str = "INBOX") -> Path:
        homes = self.workdir / "home"
        homes.mkdir(mode=0o755, exist_ok=True)
        self._mkdir_owned(self.home(user))
        self._mkdir_owned(self.maildir(user))
        box = self.maildir(user, mailbox)
        self._mkdir_owned(box)
        for sub in ("cur", "new", "tmp"):
            self._mkdir_owned(box / sub)
        if box != self.maildir(user):
            marker = box / "maildirfolder"
            if not marker.exists():
                marker.touch()
                self._chown(marker)
        return box

    def seed_message(
        self, user: str, raw: bytes, flags: str = "", *, mailbox: str = "INBOX"
    ) -> Path:
        """Drop ``raw`` straight into ``user``'s Maildir ``cur/`` (much faster than APPEND).

        ``flags`` are Maildir info letters: D(raft) F(lagged) P(assed) R(eplied) S(een)
        T(rashed). Dovecot picks the file up on the next SELECT/NOOP. Returns its path.
        """
        if user not in self.users:
            raise KeyError(f"unknown user {user!r}")
        letters = "".join(sorted(set(flags)))
        if not set(letters) <= _MAILDIR_FLAGS:
            raise ValueError(f"unsupported Maildir flags {flags!r} (use letters of DFPRST)")
        box = self._make_maildir(user, mailbox)
        now = time.time()
        base = (
            f"{int(now)}.M{int(now * 1e6) % 1_000_000}P{os.getpid()}Q{next(self._seq)}"
            f".imapproxy-tests,S={len(raw)}"
        )
        tmp = box / "tmp" / base
        tmp.write_bytes(raw)
        self._chown(tmp)
        final = box / "cur" / f"{base}:2,{letters}"
        os.rename(tmp, final)
        return final

    def seed_messages(
        self, user: str, messages: Iterable[bytes], flags: str = "", *, mailbox: str = "INBOX"
    ) -> int:
        """Write many messages straight into ``user``'s Maildir ``cur/`` (20,000 in about a
        second; APPEND would take minutes).  Faster than :meth:`seed_message`: no ``tmp/``
        and rename, so use it only for a mailbox no session has open yet (Dovecot could
        otherwise see a file half written).  Returns how many were written."""
        if user not in self.users:
            raise KeyError(f"unknown user {user!r}")
        letters = "".join(sorted(set(flags)))
        if not set(letters) <= _MAILDIR_FLAGS:
            raise ValueError(f"unsupported Maildir flags {flags!r} (use letters of DFPRST)")
        box = self._make_maildir(user, mailbox)
        prefix = f"{int(time.time())}.M%09dP{os.getpid()}Q{next(self._seq)}.imapproxy-tests"
        chown = os.geteuid() == 0
        count = 0
        cur = os.open(box / "cur", os.O_RDONLY | os.O_DIRECTORY)
        try:
            for count, raw in enumerate(messages, 1):
                name = f"{prefix % count},S={len(raw)}:2,{letters}"
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=cur)
                try:
                    if chown:
                        os.fchown(fd, self.mail_uid, self.mail_gid)
                    os.write(fd, raw)
                finally:
                    os.close(fd)
        finally:
            os.close(cur)
        return count

    # -- configuration -------------------------------------------------------------------

    def render_config(self) -> str:
        d = self.workdir
        c = self.certs
        non_root = ""
        if os.geteuid() != 0:
            # Unprivileged: no chroots, and no service may ask for another user.
            non_root = """
service imap-login {
  chroot =
}
service anvil {
  chroot =
}
service auth-worker {
  user = $default_internal_user
}
"""
        extra = ""
        listeners = ""
        if self.haproxy:
            extra += "haproxy_trusted_networks = 127.0.0.0/8\n"
            listeners = f"""
  inet_listener imap_haproxy {{
    address = 127.0.0.1
    port = {self.haproxy_port}
    haproxy = yes
  }}"""
        if self.login_trusted_networks:
            extra += f"login_trusted_networks = {self.login_trusted_networks}\n"
        return f"""\
# Generated by tests/support/dovecot.py for one test run. Reads nothing from /etc/dovecot.
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
auth_verbose = yes

protocols = imap
listen = 127.0.0.1
default_internal_user = {self._internal_user}
default_internal_group = {self._internal_group}
default_login_user = {self._login_user}
first_valid_uid = {self.mail_uid}
last_valid_uid = 0

# Room for concurrency tests (one login process per connection in high-security mode).
default_process_limit = 1000
default_client_limit = 4000

ssl = yes
ssl_cert = <{c.cert_path}
ssl_key = <{c.key_path}
ssl_min_protocol = TLSv1.2

disable_plaintext_auth = no
auth_mechanisms = plain login
# Tests log in with wrong passwords on purpose: no extra delay after a failure. (2.3.19
# still answers a failed login on its next 500 ms failure-flush tick, ~0.5 s.) ...
auth_failure_delay = 0

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}

mail_location = maildir:~/Maildir

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {self.tls_port}
    ssl = yes
  }}{listeners}
}}
{extra}

# ... and, above all, no anvil penalty: without this socket auth cannot look penalties
# up. With it, every login from 127.0.0.1 after one failure waits 2-15 s.
service anvil {{
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}

# Mail processes run as the mail user, not in the dovecot group: let them report stats.
service stats {{
  unix_listener stats-writer {{
    mode = 0666
  }}
}}
{non_root}
protocol imap {{
  mail_max_userip_connections = 1000
  # imap_zlib advertises COMPRESS=DEFLATE after login.
  mail_plugins = $mail_plugins imap_zlib
}}
"""
