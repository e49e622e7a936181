"""``scripts/demo.py``: its certificates come from ``imapproxy certs init``, and everything it
made is gone once it stops (SIGTERM here; Ctrl-C takes the same path)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.proxy import ROOT


@pytest.mark.dovecot
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_demo_removes_what_it_made(tmp_path: Path, sig: signal.Signals) -> None:
    log = tmp_path / "demo.out"
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(ROOT))
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "scripts/demo.py", "--no-sample"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while b"proxy running" not in log.read_bytes():
            assert demo.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        made = list(tmp_path.glob("imapproxy-demo-*"))
        assert len(made) == 1 and (made[0] / "certs" / "key.pem").exists(), made
        text = log.read_text()
        assert f"made a development CA and a server certificate in {made[0]}/certs/" in text
        demo.send_signal(sig)
        assert demo.wait(30) == 0, log.read_text()
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert not list(tmp_path.glob("imapproxy-demo-*")), log.read_text()
