"""The filter chain from the command line: a third-party filter installed from
tests/thirdparty/example_filter and configured by its entry point name in ``--config``,
and ``--config`` mistakes (exit 2, one error line naming the key path, no traceback)."""

from __future__ import annotations

import imaplib
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.dovecot import DovecotServer
from tests.support.proxy import ROOT, ProxyProcess, free_port

PACKAGE = ROOT / "tests" / "thirdparty" / "example_filter"
NewUser = Callable[[], tuple[str, str]]


def pip_install_target(target: Path, workdir: Path) -> None:
    """``pip install --target`` the example package (from a copy, so the source tree
    gets no build/ or egg-info).  First without build isolation (offline: the venv's own
    setuptools, which needs the ``wheel`` package before setuptools 70.1), then with it
    (setuptools from the configured index, the way the project itself is installed)."""
    source = workdir / "example_filter"
    shutil.copytree(PACKAGE, source)
    base = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "-q",
            "--no-deps", "--target", str(target)]  # fmt: skip
    outputs = []
    for extra in (["--no-build-isolation"], []):
        result = subprocess.run(
            [*base, *extra, str(source)], capture_output=True, text=True, timeout=240
        )
        if result.returncode == 0:
            return
        outputs.append(f"$ pip install {' '.join(extra)}: exit {result.returncode}\n"
                       f"{result.stderr[-1500:]}")  # fmt: skip
    pytest.fail(
        "cannot pip-install tests/thirdparty/example_filter here: without build isolation "
        "the venv's setuptools cannot build a wheel (it needs setuptools>=70.1 or the "
        "'wheel' package), and with build isolation pip could not get setuptools from "
        "the configured index:\n" + "\n".join(outputs),
        pytrace=False,
    )


def test_third_party_filter_by_entry_point_name(
    dovecot: DovecotServer, new_user: NewUser, tmp_path: Path
) -> None:
    target = tmp_path / "site"
    pip_install_target(target, tmp_path)
    assert (target / "imapproxy_example_filter").is_dir()
    user, password = new_user()
    direct = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=15)
    direct.login(user, password)
    assert direct.create("Precious")[0] == "OK"
    direct.logout()

    config = tmp_path / "proxy.toml"
    config.write_text(
        '[[filters]]\nuse = "example-deny"\ncommands = ["DELETE"]\ntext = "not through me"\n'
    )
    port = free_port()
    args = ["--listen", f"127.0.0.1:{port}", "--upstream", f"{dovecot.host}:{dovecot.port}",
            "--config", str(config)]  # fmt: skip
    with ProxyProcess(
        args, workdir=tmp_path, wait_ports=[("127.0.0.1", port)], pythonpath=[str(target)]
    ) as proxy:
        conn = imaplib.IMAP4("127.0.0.1", port, timeout=15)
        conn.login(user, password)
        typ, data = conn.delete("Precious")
        assert (typ, data) == ("NO", [b"[NOPERM] not through me"]), (typ, data, proxy.log())
        assert conn.noop()[0] == "OK"
        assert conn.create("Other")[0] == "OK"  # only DELETE is refused
        conn.logout()
    direct = imaplib.IMAP4(dovecot.host, dovecot.port, timeout=15)
    direct.login(user, password)
    typ, lines = direct.list()
    direct.logout()
    names = b"\n".join(x for x in lines if isinstance(x, bytes))
    assert b"Precious" in names and b"Other" in names, names


@pytest.mark.parametrize(
    ("toml", "path"),
    [
        ('[[filters]]\nuse = "no-such-filter"\n', "filters[0].use: unknown filter"),
        ('[[filters]]\nuse = "transcript"\nformat = "jsonl"\ncolour = "red"\n',
         "filters[0].colour"),
        ('[[filters]]\nuse = "transcript"\n[[filters]]\nuse = "example-deny"\n',
         "filters[1].use: unknown filter"),  # not installed in this process's path
        ('[[filters]]\nuse = "transcript"\non_error = "sometimes"\n', "filters[0].on_error"),
        ('[[filters]]\nuse = "nosuchmodule_xyz:Factory"\n', "filters[0].use"),
        ('[filter]\nuse = "transcript"\n', "filter: unknown key"),
    ],
    ids=["unknown_filter", "bad_key", "second_entry", "bad_on_error", "bad_module", "top_key"],
)  # fmt: skip
def test_config_errors_exit_2_with_the_key_path(tmp_path: Path, toml: str, path: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    result = subprocess.run(
        [sys.executable, "-m", "imapproxy", "run", "--listen", f"127.0.0.1:{free_port()}",
         "--upstream", "127.0.0.1:1", "--config", str(config)],
        capture_output=True, text=True, timeout=30, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stdout == ""
    naming = [ln for ln in result.stderr.splitlines() if path in ln]
    assert len(naming) == 1, result.stderr  # one line names it...
    assert naming[0] == result.stderr.splitlines()[-1], result.stderr  # ...the last one
    assert [ln for ln in result.stderr.splitlines() if "error" in ln] == naming, result.stderr
