"""Start a throwaway Dovecot and the proxy in front of it, transcript on stdout."""

from __future__ import annotations

import argparse
import imaplib
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.certs import make_tls_certs  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-sample", action="store_true", help="do not run the sample session")
    ap.add_argument("--port", type=int, default=0, help="plain/STARTTLS port (default: free)")
    ap.add_argument("--tls-port", type=int, default=0, help="implicit TLS port (default: free)")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="imapproxy-demo-"))
    certs = make_tls_certs(work)
    with DovecotServer(certs=certs) as dovecot:
        port = args.port or free_port()
        tls_port = args.tls_port or free_port()
        cmd = [
            sys.executable, "-m", "imapproxy", "run",
            "--listen", f"127.0.0.1:{port}", "--listen-tls", f"127.0.0.1:{tls_port}",
            "--cert", str(certs.cert_path), "--key", str(certs.key_path),
            "--upstream", f"127.0.0.1:{dovecot.tls_port}", "--upstream-tls", "implicit",
            "--upstream-ca", str(certs.ca_path), "--upstream-name", "localhost",
            "--transcript",
        ]  # fmt: skip
        print("dovecot:", f"127.0.0.1:{dovecot.port} (plain), :{dovecot.tls_port} (TLS)")
        print("proxy:  ", " ".join(cmd[1:]))
        print(f"connect: localhost:{port} (STARTTLS) or localhost:{tls_port} (TLS), "
              f"users alice/alicepw, bob/bobpw, CA {certs.ca_path}")
        print("-" * 78, flush=True)
        proxy = subprocess.Popen(cmd, cwd=ROOT)
        try:
            time.sleep(1.0)
            if not args.no_sample:
                sample_session(port, certs.ca_path)
            print("-" * 78)
            print("proxy running; Ctrl-C to stop", flush=True)
            proxy.wait()
        except KeyboardInterrupt:
            pass
        finally:
            if proxy.poll() is None:
                proxy.send_signal(signal.SIGTERM)
                proxy.wait(15)


if __name__ == "__main__":
    main()
