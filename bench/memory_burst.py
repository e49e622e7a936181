"""Memory after a burst (issue 8 section 5), run by hand:

    python bench/memory_burst.py [--tls] [--rounds 6] [--sessions 100] [--literal-kib 1024]
                                 [--later 3] [--env NAME=VALUE ...] [-- extra proxy args]

Starts a throwaway Dovecot and ``python -m imapproxy run`` as a subprocess (plain TCP on
both legs; ``--tls``: implicit TLS on both), then runs rounds of ``--sessions`` logged-in
sessions that each send the first ``--literal-kib`` of a ``{50000000+}`` APPEND, stall,
and close (``tests/support/burst.py``).  Prints the proxy's RSS idle and, per round: while
stalled; while stalled but after one more session ended and the proxy trimmed its heap
(what the stalled sessions hold); when first back within 32 MiB of idle after the close
(or after 10 s), how long that took; and ``--later`` seconds after the close.  ``--env``
sets environment variables for the proxy (e.g. ``MALLOC_TRIM_THRESHOLD_=...``) to compare
malloc settings.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.burst import run_rounds  # noqa: E402
from tests.support.dovecot import DovecotServer  # noqa: E402
from tests.support.proxy import ProxyProcess, free_port  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--literal-kib", type=int, default=1024)
    parser.add_argument(
        "--later", type=float, default=3.0, help="also sample RSS this long after the close"
    )
    parser.add_argument("--tls", action="store_true", help="implicit TLS on both legs")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("proxy_args", nargs="*")
    args = parser.parse_args()
    for item in args.env:
        name, _, value = item.partition("=")
        os.environ[name] = value
    with tempfile.TemporaryDirectory(prefix="membench") as tmp, DovecotServer() as dovecot:
        port = free_port()
        certs = dovecot.certs
        proxy_args = ["--max-sessions-per-address", "10000", *args.proxy_args]
        if args.tls:
            proxy_args += [
                "--listen-tls", f"127.0.0.1:{port}",
                "--cert", str(certs.cert_path), "--key", str(certs.key_path),
                "--upstream", f"{dovecot.host}:{dovecot.tls_port}",
                "--upstream-tls", "implicit",
                "--upstream-ca", str(certs.ca_path), "--upstream-name", "localhost",
            ]  # fmt: skip
        else:
            proxy_args += [
                "--listen", f"127.0.0.1:{port}",
                "--upstream", f"{dovecot.host}:{dovecot.port}",
                "--upstream-tls", "none",
            ]  # fmt: skip
        with ProxyProcess(proxy_args, workdir=Path(tmp), wait_ports=[("127.0.0.1", port)]) as proxy:
            result = run_rounds(
                proxy.pid,
                port,
                lambda: ("alice", "alicepw"),
                rounds=args.rounds,
                sessions=args.sessions,
                literal_bytes=args.literal_kib * 1024,
                ctx=certs.client_context() if args.tls else None,
                later=args.later,
                held_after=2.0,
            )
    legs = "TLS" if args.tls else "plain"
    env = " ".join(args.env) or "-"
    print(f"{legs}: {args.sessions} sessions x {args.literal_kib} KiB per round; env: {env}")
    print(result.table())
    return 0


if __name__ == "__main__":
    sys.exit(main())
