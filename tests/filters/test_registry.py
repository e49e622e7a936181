"""Building the chain from [[filters]] tables: names, entry points, module paths, errors."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from imapproxy.filters import ConfigError, Filter, OnError, SessionInfo
from imapproxy.filters.registry import ENTRY_POINT_GROUP, build_chain, check_options

INFO = SessionInfo("s-1", "127.0.0.1", 1, "imap@x")


class Hello(Filter):
    name = "hello"


def make_hello(options: Mapping[str, Any], path: str):  # type: ignore[no-untyped-def]
    check_options(options, path, {"greeting": str, "limit": int})
    return lambda info: Hello()


BUILTINS = {"hello": make_hello}


def error_of(tables: list[Any]) -> str:
    with pytest.raises(ConfigError) as info:
        build_chain(tables, BUILTINS)
    return str(info.value)


def test_builtin_by_name_in_order_with_on_error() -> None:
    chain = build_chain(
        [{"use": "hello"}, {"use": "hello", "name": "second", "on_error": "open"}], BUILTINS
    )
    assert [(e.name, e.on_error) for e in chain.entries] == [
        ("hello", OnError.CLOSED),
        ("second", OnError.OPEN),
    ]
    assert isinstance(chain.entries[0].factory(INFO), Hello)


@pytest.mark.parametrize(
    ("tables", "message"),
    [
        ([{"use": "helo"}], "filters[0].use: unknown filter 'helo' (known: hello"),
        ([{}], "filters[0].use: required"),
        ([{"use": "hello"}, {"use": "hello", "on_error": "opne"}],
         "filters[1].on_error: expected one of closed, open; got 'opne'"),
        ([{"use": "hello"}, {"use": "hello"}], "filters[1].name: 'hello' is used twice"),
        ([{"use": "hello", "greting": "x"}], "filters[0].greting: unknown key"),
        ([{"use": "hello", "limit": "10"}], "filters[0].limit: expected int; got '10'"),
        ([{"use": "hello", "limit": True}], "filters[0].limit: expected int; got True"),
        (["hello"], "filters[0]: expected a table, got str"),
        ([{"use": "no_such_module_xyz:make"}], "filters[0].use: cannot import"),
        ([{"use": "tests.filters.test_registry:nothing"}], "has no 'nothing'"),
    ],
)  # fmt: skip
def test_errors_name_the_key_path(tables: list[Any], message: str) -> None:
    text = error_of(tables)
    assert message in text
    assert "\n" not in text


def test_module_path_form() -> None:
    chain = build_chain([{"use": "tests.filters.test_registry:make_hello"}], {})
    assert chain.entries[0].name == "tests.filters.test_registry:make_hello"


def test_a_maker_that_raises_is_a_config_error_with_the_path() -> None:
    def broken(options: Mapping[str, Any], path: str):  # type: ignore[no-untyped-def]
        raise KeyError("oops")

    with pytest.raises(ConfigError, match=r"^filters\[0\]: filter 'b' rejected its options"):
        build_chain([{"use": "b"}], {"b": broken})


def test_third_party_filter_through_its_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package installed the usual way (a dist-info with entry_points.txt on sys.path,
    as pip leaves it) is found by its entry point name."""
    pkg = tmp_path / "shouty_filter"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            from imapproxy.filters import Filter, PASS
            from imapproxy.filters.registry import check_options

            class Shouty(Filter):
                name = "shouty"

            def make(options, path):
                check_options(options, path, {"volume": int})
                volume = options.get("volume", 1)
                def factory(info):
                    f = Shouty()
                    f.volume = volume
                    return f
                return factory
            """
        )
    )
    dist = tmp_path / "shouty_filter-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: shouty-filter\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nshouty = shouty_filter:make\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "shouty_filter", raising=False)
    chain = build_chain([{"use": "shouty", "volume": 11}], BUILTINS)
    made = chain.entries[0].factory(INFO)
    assert type(made).__name__ == "Shouty" and made.volume == 11  # type: ignore[attr-defined]
    assert "filters[0].volume: expected int" in error_of([{"use": "shouty", "volume": "x"}])
    assert "known: hello, shouty" in error_of([{"use": "shoutyy"}])
