"""Reload under load (issue 12): a real ``imapproxy run --config`` in front of Dovecot gets
SIGHUP (through ``imapproxy reload --pid-file``) while sessions are in flight - one in IDLE,
one half-way through a large APPEND literal, one on a listener the reload removes, one on a
TLS listener whose certificate is replaced.  None of them notices; the next command of an
open session meets the new policy (and Dovecot shows it never got there); a new listener
accepts, the removed one refuses; new handshakes get the new certificate; a bad file is
refused in one log line naming the key and the old policy stays; the metrics count both.
"""

from __future__ import annotations

import imaplib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import trustme

from tests.integration.conftest import RawClient
from tests.support.certs import make_tls_certs
from tests.support.dovecot import DovecotServer
from tests.support.proxy import ROOT, ProxyProcess, free_port

HOST = "127.0.0.1"
TIMEOUT = 15.0
NewUser = Callable[[], tuple[str, str]]


def _config(
    dovecot: DovecotServer,
    listeners: list[str],
    cert: Path,
    key: Path,
    metrics: int,
    rules: str = "",
    extra: str = "",
    transcript: Path | None = None,
) -> str:
    out = [f'metrics = "{HOST}:{metrics}"', "", "[tls]", f'cert = "{cert}"', f'key = "{key}"']
    for block in listeners:
        out += ["", "[[listeners]]", block]
    out += ["", "[upstream]", f'address = "{dovecot.host}:{dovecot.port}"']
    if rules:
        out += ["", "[[filters]]", 'use = "policy"', 'name = "acl"', 'delimiter = "."', rules]
    if transcript is not None:  # after the policy: the same table at another place
        out += ["", "[[filters]]", 'use = "transcript"', f'path = "{transcript}"',
                'format = "jsonl"']  # fmt: skip
    return "\n".join(out) + "\n" + extra


def _plain(port: int, name: str) -> str:
    return f'address = "{HOST}:{port}"\ntls = "none"\nname = "{name}"'


def _raw(port: int, user: str, password: str) -> RawClient:
    c = RawClient(socket.create_connection((HOST, port), timeout=TIMEOUT))
    c.greeting = c.readline()
    assert c.command(b"L", f"LOGIN {user} {password}".encode())[-1].startswith(b"L OK")
    return c


def _wait_log(proxy: ProxyProcess, pattern: str, count: int = 1) -> str:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        log = proxy.log()
        if len(re.findall(pattern, log)) >= count:
            return log
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the log:\n{proxy.log()}")


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=TIMEOUT) as resp:
        return str(resp.read().decode())


def _reloads(text: str, result: str) -> float:
    m = re.search(rf'^imapproxy_config_reloads_total\{{result="{result}"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def _mailboxes(dovecot: DovecotServer, user: str, password: str) -> list[bytes]:
    """Straight from Dovecot, not through the proxy."""
    with imaplib.IMAP4(dovecot.host, dovecot.port, timeout=TIMEOUT) as m:
        m.login(user, password)
        return [line for line in m.list()[1] if isinstance(line, bytes)]


def _peer_cert(port: int, ca: Path) -> bytes:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    with ctx.wrap_socket(sock) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text().split("-----END CERTIFICATE-----")[0]
                                    + "-----END CERTIFICATE-----\n")  # fmt: skip


def test_reload_under_load(dovecot: DovecotServer, new_user: NewUser, tmp_path: Path) -> None:
    ca = trustme.CA(organization_name="reload test")
    first = make_tls_certs(tmp_path / "first", ca=ca, identities=("imap.first.test",))
    second = make_tls_certs(tmp_path / "second", ca=ca, identities=("imap.second.test",))
    live = tmp_path / "live"  # the files the config names, replaced on disk later
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    shutil.copy(first.cert_path, cert)
    shutil.copy(first.key_path, key)
    main, doomed, added, tls_port, metrics = (free_port() for _ in range(5))
    tls_block = f'address = "{HOST}:{tls_port}"\ntls = "implicit"\nname = "tls"'
    config = tmp_path / "proxy.toml"
    records = tmp_path / "transcript.jsonl"
    config.write_text(_config(dovecot, [_plain(main, "main"), _plain(doomed, "doomed"),
                                        tls_block], cert, key, metrics,
                              transcript=records))  # fmt: skip
    pid_file = tmp_path / "proxy.pid"
    (u1, p1), (u2, p2), (u3, p3), (u4, p4), (u5, p5) = (new_user() for _ in range(5))
    args = ["--config", str(config), "--pid-file", str(pid_file)]
    ports = [(HOST, main), (HOST, doomed), (HOST, tls_port)]
    with ProxyProcess(args, workdir=tmp_path, wait_ports=ports) as proxy:
        assert pid_file.read_text().strip() == str(proxy.pid)
        assert _peer_cert(tls_port, first.ca_path) == _der(first.cert_path)
        # sessions in flight
        plain = imaplib.IMAP4(HOST, main, timeout=TIMEOUT)
        plain.login(u1, p1)
        plain.select("INBOX")
        idle = _raw(main, u2, p2)
        assert idle.command(b"S", b"SELECT INBOX")[-1].startswith(b"S OK")
        idle.send(b"I IDLE\r\n")
        idle.expect_continuation()
        appending = _raw(main, u3, p3)
        body = b"Subject: big\r\n\r\n" + b"x" * (3 << 20) + b"\r\n"
        appending.send(b"A APPEND INBOX {%d}\r\n" % len(body))
        appending.expect_continuation()
        half = len(body) // 2
        appending.send(body[:half])
        on_doomed = _raw(doomed, u4, p4)
        on_tls = imaplib.IMAP4_SSL(HOST, tls_port, ssl_context=_trusting(first.ca_path),
                                   timeout=TIMEOUT)  # fmt: skip
        on_tls.login(u5, p5)

        # the new file: a policy rule, a listener removed and one added, a new certificate
        shutil.copy(second.cert_path, cert)
        shutil.copy(second.key_path, key)
        rules = '[[filters.rules]]\nname = "no-create"\nmatch = { command = "CREATE" }\n' \
                'action = "deny"\ntext = "no new mailboxes"'  # fmt: skip
        new_listeners = [_plain(main, "main"), tls_block, _plain(added, "added")]
        restart_only = "\n[timeouts]\nlogin = 30\n"  # needs a restart: named, not applied
        config.write_text(_config(dovecot, new_listeners, cert, key, metrics, rules,
                                  restart_only, records))  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "imapproxy", "reload", "--pid-file", str(pid_file)],
            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        log = _wait_log(proxy, r"reload: configuration applied")
        assert "WARNING imapproxy.server: reload: timeouts changed: it takes effect only " \
               "after a restart" in log, log  # fmt: skip

        # the next command of an open session meets the new rule; Dovecot never saw it
        typ, data = plain.create("Reloaded")
        assert typ == "NO" and b"no new mailboxes" in data[0], (typ, data)
        assert not any(b"Reloaded" in line for line in _mailboxes(dovecot, u1, p1))
        assert plain.noop()[0] == "OK"
        # the sessions in flight went on
        appending.send(body[half:] + b"\r\n")
        assert appending.read_until_tagged(b"A")[-1].startswith(b"A OK")
        idle.send(b"DONE\r\n")
        assert idle.read_until_tagged(b"I")[-1].startswith(b"I OK")
        assert idle.command(b"N", b"NOOP")[-1].startswith(b"N OK")
        assert on_doomed.command(b"N", b"NOOP")[-1].startswith(b"N OK")
        assert on_tls.noop()[0] == "OK"
        # listeners: the removed one refuses, the added one serves
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, doomed), timeout=TIMEOUT).close()
        with imaplib.IMAP4(HOST, added, timeout=TIMEOUT) as m:
            assert m.login(u1, p1)[0] == "OK"
            assert m.create("ViaAdded")[0] == "NO"
        # new handshakes: the new certificate
        assert _peer_cert(tls_port, second.ca_path) == _der(second.cert_path)
        assert _reloads(_scrape(metrics), "success") == 1

        # a bad file: refused in one line naming the key; the old policy stays
        config.write_text(_config(dovecot, new_listeners, cert, key, metrics,
                                  rules.replace("action =", "acton ="), restart_only,
                                  records))  # fmt: skip
        os.kill(proxy.pid, signal.SIGHUP)
        log = _wait_log(proxy, r"reload refused")
        refused = [line for line in log.splitlines() if "reload refused" in line]
        assert len(refused) == 1 and "ERROR" in refused[0], refused
        after = log.split("reload: configuration applied")[1].splitlines()[1:]
        assert [line for line in after if " session " not in line] == [
            next(line for line in after if "got SIGHUP" in line), refused[0]
        ], after  # the refusal is the one line it logs
        assert "filters[0].rules[0]" in refused[0] and "acton" in refused[0], refused
        assert "the running configuration stays" in refused[0]
        assert plain.create("StillNo")[0] == "NO"
        text = _scrape(metrics)
        assert _reloads(text, "failure") == 1 and _reloads(text, "success") == 1
        assert re.search(r"^imapproxy_config_last_reload_successful 0", text, re.M), text

        # every session is still there
        for c in (idle, appending, on_doomed):
            assert c.command(b"Z", b"NOOP")[-1].startswith(b"Z OK")
        assert plain.noop()[0] == "OK" and on_tls.noop()[0] == "OK"
        ended = re.findall(r"session \S+ end .* user=(\S+) .*reason=(\S+)", proxy.log())
        # of these users' sessions only the one on the added listener ended (logged out)
        assert [e for e in ended if e[0] in (u1, u2, u3, u4, u5)] == [(u1, "logout")], ended
        for c in (idle, appending, on_doomed):
            c.close()
        plain.logout()
        on_tls.logout()
    assert not pid_file.exists()
    # the transcript (unchanged, moved after the policy) kept its one writer: the refused
    # CREATE is written once, with the rule that refused it
    creates = [json.loads(line) for line in records.read_text().splitlines()
               if '"CREATE"' in line and "Reloaded" in line]  # fmt: skip
    assert len(creates) == 1 and creates[0].get("rule") == "no-create", creates
    session = creates[0]["session"]  # its filter instance too: one start, one end
    kinds = [r["type"] for r in map(json.loads, records.read_text().splitlines())
             if r.get("session") == session]  # fmt: skip
    assert kinds.count("session_start") == 1 and kinds.count("session_end") == 1, kinds


def _trusting(ca: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    return ctx


def test_reload_command_errors(tmp_path: Path) -> None:
    """``imapproxy reload``: a missing pid file and a stale one are one line, exit 2."""

    def reload(path: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imapproxy", "reload", "--pid-file", str(path)],
            cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        )  # fmt: skip

    missing = reload(tmp_path / "nope.pid")
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "cannot read --pid-file" in missing.stderr
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "stale.pid"
    stale.write_text(f"{dead.pid}\n")
    result = reload(stale)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "stale" in result.stderr, result.stderr
