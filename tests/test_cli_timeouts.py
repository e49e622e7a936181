"""``--login-timeout``: parsed into ``Timeouts.login_timeout``, default shown in --help,
nonsense refused with a usage error.  (The other flags are tested in tests/test_cli.py.)"""

from __future__ import annotations

import pytest

from imapproxy.cli import build_parser, config_from_args, main
from imapproxy.config import Timeouts

BASE = ["run", "--listen", "127.0.0.1:1143", "--upstream", "127.0.0.1:143"]


def config(*extra: str) -> Timeouts:
    return config_from_args(build_parser().parse_args([*BASE, *extra])).timeouts


def test_login_timeout_default() -> None:
    assert config().login_timeout == Timeouts().login_timeout == 60.0


def test_login_timeout_parsed() -> None:
    timeouts = config("--login-timeout", "12.5")
    assert timeouts.login_timeout == 12.5
    # the other timeouts keep their values
    assert timeouts.idle_unauthenticated == Timeouts().idle_unauthenticated
    assert timeouts.answer_timeout == Timeouts().answer_timeout


def test_help_shows_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["run", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--login-timeout SECONDS" in text
    option = text.rsplit("--login-timeout SECONDS", 1)[1].split(" --", 1)[0]  # its help
    assert "default: 60)" in option, option


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_login_timeout_must_be_positive(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*BASE, "--login-timeout", value]) == 2
    err = capsys.readouterr().err
    assert "--login-timeout must be positive" in err and err.count("\n") == 1


def test_login_timeout_not_a_number(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([*BASE, "--login-timeout", "soon"])
    assert exc.value.code == 2
    assert "--login-timeout" in capsys.readouterr().err
