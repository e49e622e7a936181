"""``imapproxy certs init`` and ``imapproxy certs show`` (see :mod:`imapproxy.certs`)."""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable
from pathlib import Path

from .certs import DEFAULT_NAMES, CertInfo, init_dev_certs, load_pem_certificates


def add_parser(
    subparser: Callable[..., argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    """``certs`` and its two subcommands; ``subparser(name, help)`` makes a top-level one."""
    certs = subparser("certs", help="make development certificates, or show a certificate")
    sub = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND",
                               title="commands")  # fmt: skip
    formatter = certs.formatter_class
    init = sub.add_parser(
        "init",
        help="make a development CA and a server certificate",
        description="Make ca.pem (the CA certificate clients trust), cert.pem and key.pem "
        "(the proxy's --cert and --key; mode 0600) in --dir.  For development only.",
        parents=[common],
        formatter_class=formatter,
    )
    init.set_defaults(handler=cmd_init, subparser=init)
    init.add_argument(
        "--dir", default="certs", metavar="DIR", help="where to write the files (made if missing)"
    )
    init.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="HOST",
        help="a host name or IP address the certificate is for; repeatable (default: "
        + ", ".join(DEFAULT_NAMES)
        + ")",
    )
    init.add_argument(
        "--force", action="store_true", help="replace existing files (a new CA as well)"
    )
    show = sub.add_parser(
        "show",
        help="print a certificate's subject, names, issuer and validity",
        description="Print each certificate in FILE: subject, names (subjectAltName), "
        "issuer, not before, not after, whether it has expired.  Exit 1 if one has "
        "expired or is not yet valid.",
        parents=[common],
        formatter_class=formatter,
    )
    show.set_defaults(handler=cmd_show, subparser=show)
    show.add_argument("file", metavar="FILE", help="a PEM (or DER) certificate file")


def cmd_init(args: argparse.Namespace) -> int:
    made = init_dev_certs(Path(args.dir), args.name or DEFAULT_NAMES, force=args.force)
    q = shlex.quote
    print(f"made a development CA and a server certificate in {made.ca_path.parent}/:")
    width = max(len(str(p)) for p in (made.ca_path, made.cert_path, made.key_path))
    for path, what in (
        (made.ca_path, "the CA certificate: trust it in test clients (its key is not kept)"),
        (made.cert_path, f"for {', '.join(made.names)}, until {made.not_after:%Y-%m-%d}"),
        (made.key_path, "its private key (mode 0600)"),
    ):
        print(f"  {path!s:{width}}  {what}")
    print("use them:")
    print(
        f"  imapproxy run --listen-tls 127.0.0.1:1993 --cert {q(str(made.cert_path))} "
        f"--key {q(str(made.key_path))} --upstream HOST:PORT ..."
    )
    print(
        f"  openssl s_client -connect 127.0.0.1:1993 -CAfile {q(str(made.ca_path))} "
        f"-verify_hostname {q(made.names[0])}"
    )
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    certs = load_pem_certificates(args.file)
    ok = True
    for n, cert in enumerate(certs):
        info = CertInfo.of(cert)
        ok = ok and info.valid()
        title = args.file if len(certs) == 1 else f"{args.file} [{n + 1} of {len(certs)}]"
        print(f"{title}:")
        for label, value in info.lines():
            print(f"  {label + ':':12} {value}")
    return 0 if ok else 1
