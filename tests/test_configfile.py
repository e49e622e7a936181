"""The TOML configuration file: the [[filters]] contract and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from imapproxy.configfile import load
from imapproxy.filters import ConfigError, OnError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "proxy.toml"
    p.write_text(text)
    return p


def test_the_documented_example(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, """
[[filters]]
use = "transcript"
path = "transcript.jsonl"        # "-" for stdout
on_error = "open"
"""))
    [entry] = cfg.filters.entries
    assert entry.name == "transcript" and entry.on_error is OnError.OPEN


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[[filters]]\nuse = "transcrpt"\n', "filters[0].use: unknown filter 'transcrpt'"),
        ('[[filters]]\nuse = "transcript"\n[[filters]]\nuse = "transcript"\nname = "b"\n'
         'on_error = "opne"\n', "filters[1].on_error: expected one of closed, open; got 'opne'"),
        ('[[filters]]\nuse = "transcript"\nformat = "xml"\n',
         "filters[0].format: expected one of jsonl, text; got 'xml'"),
        ('filter = []\n', "filter: unknown key"),
        ('filters = "transcript"\n', "filters: expected an array of tables"),
        ('[[filters]\n', "not valid TOML"),
    ],
)  # fmt: skip
def test_errors_are_one_line_with_the_key_path(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_file_says_which(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.toml: not found"):
        load(tmp_path / "nope.toml")
