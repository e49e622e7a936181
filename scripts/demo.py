"""Start a throwaway Dovecot and the proxy in front of it, transcript on stdout.

Its certificates come from ``imapproxy certs init`` in a temporary directory, removed (with
everything else the demo made) when it stops: Ctrl-C, SIGTERM or SIGHUP."""

from __future__ import annotations

import argparse
import imaplib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.certs import TlsCerts  # noqa: E402
from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.proxy import free_port  # noqa: E402


def sample_session(port: int, ca: Path) -> None:
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca))
    with imaplib.IMAP4(host="localhost", port=port) as m:
        m.starttls(ssl_context=ctx)
        m.login("alice", "alicepw")
        m.append("INBOX", None, None, b"Subject: hello via imapproxy\r\n\r\nHi!\r\n")
        m.select("INBOX")
        m.fetch("1:*", "(FLAGS ENVELOPE BODY.PEEK[])")
        m.logout()


def _stop(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # unwinds through the finally blocks that clean up


def listening_ports() -> set[int]:
    """Local TCP ports in LISTEN state (Linux /proc), seen without connecting (a probe
    connection would show in the transcript as an empty session)."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def wait_listening(proc: subprocess.Popen[bytes], *ports: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not set(ports) <= listening_ports():
        if proc.poll() is not None:
            sys.exit(f"the proxy exited (status {proc.returncode})")
        if time.monotonic() > deadline:
            sys.exit(f"the proxy did not listen on 127.0.0.1:{ports} in {timeout:g} s")
        time.sleep(0.05)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-sample", action="store_true", help="do not run the sample session")
    ap.add_argument("--port", type=int, default=0, help="plain/STARTTLS port (default: free)")
    ap.add_argument("--tls-port", type=int, default=0, help="implicit TLS port (default: free)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGHUP, _stop)
    work = Path(tempfile.mkdtemp(prefix="imapproxy-demo-"))
    try:
        run(args, work)
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    imapproxy = [sys.executable, "-m", "imapproxy"]
    subprocess.run([*imapproxy, "certs", "init", "--dir", str(work / "certs")], check=True)
    certs = TlsCerts(
        ca_path=work / "certs" / "ca.pem",
        cert_path=work / "certs" / "cert.pem",
        key_path=work / "certs" / "key.pem",
    )
    with DovecotServer(certs=certs) as dovecot:
        port = args.port or free_port()
        tls_port = args.tls_port or free_port()
        cmd = [
            *imapproxy, "run",
            "--listen", f"127.0.0.1:{port}", "--listen-tls", f"127.0.0.1:{tls_port}",
            "--cert", str(certs.cert_path), "--key", str(certs.key_path),
            "--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit",
            "--upstream-ca", str(certs.ca_path), "--upstream-name", "localhost",
            "--transcript",
        ]  # fmt: skip
        print("-" * 78)
        print("dovecot:", f"127.0.0.1:{dovecot.port} (plain), :{dovecot.tls_port} (TLS)")
        print("proxy:  ", "imapproxy", " ".join(cmd[len(imapproxy) :]))
        print(f"connect: localhost:{port} (STARTTLS) or localhost:{tls_port} (TLS), "
              f"users alice/alicepw, bob/bobpw, CA {certs.ca_path}")
        print("-" * 78, flush=True)
        proxy = subprocess.Popen(cmd, cwd=ROOT)
        try:
            wait_listening(proxy, port, tls_port)
            if not args.no_sample:
                sample_session(port, certs.ca_path)
            print("-" * 78)
            print("proxy running; Ctrl-C to stop (the demo's files are removed then)", flush=True)
            proxy.wait()
        finally:
            if proxy.poll() is None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(15)


if __name__ == "__main__":
    main()
