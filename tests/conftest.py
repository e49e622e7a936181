from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.certs import TlsCerts, make_tls_certs
from tests.support.dovecot import DovecotNotFoundError, DovecotServer


@pytest.fixture(scope="session")
def tls_certs(tmp_path_factory: pytest.TempPathFactory) -> TlsCerts:
    """A test CA plus a server certificate for localhost / 127.0.0.1 / ::1."""
    return make_tls_certs(Path(tmp_path_factory.mktemp("tls")))


@pytest.fixture(scope="session")
def dovecot(tls_certs: TlsCerts) -> Iterator[DovecotServer]:
    """A real Dovecot (users alice/alicepw, bob/bobpw) for the whole session."""
    try:
        server = DovecotServer(certs=tls_certs)
    except DovecotNotFoundError as exc:
        missing = str(exc)
    else:
        with server:
            yield server
        return
    pytest.fail(missing, pytrace=False)  # never skip: these tests must run
