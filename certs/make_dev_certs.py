"""Make a throwaway CA and a server certificate for trying the proxy locally.

    python certs/make_dev_certs.py [DIR]      (default: certs/dev)

Writes ca.pem, cert.pem and key.pem for localhost, 127.0.0.1 and ::1.  For development only:
the CA key is not kept, and nothing here is meant for production.  Needs `trustme`
(installed with the test extras: pip install -e '.[test]').
"""

from __future__ import annotations

import sys
from pathlib import Path

import trustme


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "dev"
    out.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1", "::1")
    ca.cert_pem.write_to_path(str(out / "ca.pem"))
    cert.cert_chain_pems[0].write_to_path(str(out / "cert.pem"))
    for extra in cert.cert_chain_pems[1:]:
        extra.write_to_path(str(out / "cert.pem"), append=True)
    key = out / "key.pem"
    cert.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    print(f"wrote {out}/ca.pem, cert.pem, key.pem")


if __name__ == "__main__":
    main()
