"""The README's promise, kept by a test: on this machine, from a fresh clone, with the
system's own python3 and nothing else on PATH (no `python`, no venv active, PEP 668 in
force), the two commands the README shows first do all the set-up: ``scripts/test`` runs
tests, ``scripts/demo`` runs the proxy in front of a real Dovecot with its transcript
visible, and a client can use it.

It clones the committed HEAD (what a new user would get), so work not yet committed is not
in it.  It needs git, the system python3 with venv support, Dovecot and the package
registry pip is configured for; where one is missing it fails and says which.
"""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from tests.support.proxy import ROOT

CLEAN_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def readme_commands() -> list[str]:
    """The commands in the README's first code block (under "The two commands")."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## The two commands", 1)[1]
    block = section.split("```sh", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_the_readme_shows_two_commands() -> None:
    assert readme_commands() == ["scripts/demo", "scripts/test"]


def test_the_two_commands_from_a_fresh_clone(tmp_path: Path) -> None:
    git = shutil.which("git", path=CLEAN_PATH)
    assert git, "this test needs git (apt-get install git)"
    assert shutil.which("python3", path=CLEAN_PATH), "this test needs the system python3"
    clone = tmp_path / "clone"
    subprocess.run([git, "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": CLEAN_PATH, "HOME": str(home), "LANG": "C.UTF-8"}
    # pip's wheel cache from this machine, so that the clone's venv does not download
    # everything again (the index configuration is the system's, in /etc)
    cache = Path(os.environ.get("PIP_CACHE_DIR", Path.home() / ".cache" / "pip"))
    if cache.is_dir():
        env["PIP_CACHE_DIR"] = str(cache)

    test = subprocess.run(["scripts/test", "-q", "-p", "no:cacheprovider",
                           "tests/wire/test_mutf7.py"], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=900, check=False)  # fmt: skip
    assert test.returncode == 0, f"scripts/test:\n{test.stdout[-3000:]}\n{test.stderr[-3000:]}"
    assert re.search(r"\d+ passed", test.stdout), test.stdout[-2000:]
    assert (clone / ".venv" / "bin" / "imapproxy").exists()

    out = tmp_path / "demo.out"
    with out.open("wb") as sink:
        demo = subprocess.Popen(["scripts/demo"], cwd=clone, env=env, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while "proxy running" not in out.read_text(errors="replace"):
            assert demo.poll() is None, f"scripts/demo stopped:\n{out.read_text()}"
            assert time.monotonic() < deadline, f"scripts/demo did not start:\n{out.read_text()}"
            time.sleep(0.2)
        text = out.read_text()
        # the sample session's transcript is on the screen, password redacted
        assert " C: " in text and " S: " in text and "LOGIN alice ***" in text, text
        transcript = [line for line in text.splitlines() if " C: " in line or " S: " in line]
        assert not any("alicepw" in line for line in transcript), transcript
        port = int(re.search(r"connect: localhost:(\d+) \(STARTTLS\)", text).group(1))  # type: ignore[union-attr]
        with imaplib.IMAP4("127.0.0.1", port, timeout=15) as m:  # a client of your own
            assert m.login("bob", "bobpw")[0] == "OK"
            assert m.select("INBOX")[0] == "OK"
        deadline = time.monotonic() + 15
        while "LOGIN bob ***" not in out.read_text():
            assert time.monotonic() < deadline, out.read_text()
            time.sleep(0.1)
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        demo.wait(30)
    assert demo.returncode in (0, 130, -signal.SIGINT), out.read_text()
