"""The rewrite filter's options: the TOML shape, and every mistake naming its key path."""

from __future__ import annotations

from typing import Any

import pytest

from imapproxy.configfile import from_mapping
from imapproxy.filters import ConfigError
from imapproxy.filters.rewrite import RewriteFactory, make_rewrite


def error(options: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        make_rewrite(options, "filters[0]")
    return str(info.value)


def test_the_documented_shape_loads_through_the_config_file() -> None:
    config = from_mapping(
        {
            "filters": [
                {
                    "use": "rewrite",
                    "delimiter": ".",
                    "capabilities": {"add": ["ID"], "remove": ["QUOTA", "X-*"]},
                    "users": {"add_domain": "example.com"},
                    "mailboxes": [
                        {"client": "Archive", "server": "INBOX.Archive"},
                        {"client": "Sent", "server": "Sent Items", "exact": True},
                    ],
                }
            ]
        }
    )
    (entry,) = config.filters.entries
    assert entry.name == "rewrite"
    assert isinstance(entry.factory, RewriteFactory)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"colour": 1}, "filters[0].colour: unknown key"),
        ({"delimiter": ".."}, "filters[0].delimiter: expected one character"),
        ({"capabilities": {"add": "ID"}}, "filters[0].capabilities.add: expected list"),
        ({"capabilities": {"add": ["a b"]}}, "filters[0].capabilities.add[0]: expected a capab"),
        ({"capabilities": {"add": ["STARTTLS"]}}, "filters[0].capabilities.add[0]: STARTTLS is "),
        ({"capabilities": {"add": ["COMPRESS=DEFLATE"]}}, "capabilities.add[0]: COMPRESS=DEF"),
        ({"capabilities": {"add": ["AUTH=SCRAM-SHA-1-PLUS"]}}, "capabilities.add[0]: AUTH=SC"),
        ({"capabilities": {"remove": ["LOGINDISABLED"]}}, "capabilities.remove[0]: LOGINDIS"),
        (
            {"capabilities": {"remove": ["*"]}},
            "filters[0].capabilities.remove[0]: expected a capability name",
        ),
        ({"capabilities": {"add": ["X*"]}}, "filters[0].capabilities.add[0]: a capability to add"),
        ({"users": {}}, "filters[0].users: expected exactly one of add_domain"),
        (
            {"users": {"add_domain": "a.b", "strip_domain": True}},
            "filters[0].users: expected exactly one of add_domain, strip_domain, table, regex; "
            "got add_domain, strip_domain",
        ),
        ({"users": {"add_domain": "a@b"}}, "filters[0].users.add_domain: expected a domain"),
        ({"users": {"strip_domain": False}}, "filters[0].users.strip_domain: expected true"),
        ({"users": {"table": {"alice": 3}}}, "filters[0].users.table.alice: expected a user"),
        ({"users": {"regex": {"match": "x"}}}, "filters[0].users.regex.replace: required"),
        (
            {"users": {"regex": {"match": "(", "replace": ""}}},
            "filters[0].users.regex.match: not a valid regular expression: missing ),",
        ),
        (
            {"users": {"regex": {"match": "(a)", "replace": "\\2"}}},
            "filters[0].users.regex.replace: not a valid replacement: invalid group reference 2",
        ),
        (
            {"users": {"regex": {"match": "a", "replace": "x", "flags": "i"}}},
            "filters[0].users.regex.flags: unknown key",
        ),
        ({"mailboxes": {"client": "a"}}, "filters[0].mailboxes: expected list"),
        ({"mailboxes": ["a"]}, "filters[0].mailboxes[0]: expected a table"),
        ({"mailboxes": [{"client": "A"}]}, "filters[0].mailboxes[0].server: required"),
        (
            {"mailboxes": [{"client": "inbox", "server": "X"}]},
            "filters[0].mailboxes[0].client: INBOX itself is never renamed",
        ),
        (
            {"mailboxes": [{"client": "A*", "server": "X"}]},
            "filters[0].mailboxes[0].client: a mailbox name cannot hold * or %",
        ),
        (
            {"delimiter": "/", "mailboxes": [{"client": "A/", "server": "X"}]},
            "filters[0].mailboxes[0].client: a mailbox name cannot begin or end with the delim",
        ),
        ({"mailboxes": [{"client": "A", "server": "A"}]}, "filters[0].mailboxes[0]: client and"),
        (
            {"mailboxes": [{"client": "A", "server": "X"}, {"client": "A", "server": "Y"}]},
            "filters[0].mailboxes[1].client: 'A' is mapped twice (also filters[0].mailboxes[0])",
        ),
        (
            {"mailboxes": [{"client": "A", "server": "X", "exact": "yes"}]},
            "filters[0].mailboxes[0].exact: expected bool",
        ),
    ],
)
def test_mistakes_name_their_key(options: dict[str, Any], message: str) -> None:
    assert message in error(options)


def test_a_bad_option_is_one_line_without_the_user_table() -> None:
    text = error({"users": {"table": {"alice": "a\nb"}}})
    assert "\n" not in text.replace("'a\\nb'", "")
