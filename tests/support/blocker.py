"""A deciding filter for the metrics tests, written as a policy filter would be: it refuses
SUBSCRIBE, names the rule that did on its verdict (``Reject(rule=...)``) and declares its
rule names on its factory (``rule_names``), so the metrics count its blocks by rule."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imapproxy.filters import CommandView, Filter, Reject, SessionInfo, SessionView, Verdict

RULE = "no-subscribe"


class Blocker(Filter):
    __slots__ = ("filter_name",)

    name = "blocker"
    wants_commands = frozenset({"SUBSCRIBE"})

    def __init__(self, filter_name: str) -> None:
        self.filter_name = filter_name

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        return Reject("subscriptions are managed elsewhere", rule=RULE)


class BlockerFactory:
    rule_names = (RULE, "unused-rule")

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, info: SessionInfo) -> Blocker:
        return Blocker(self.name)


def make(options: Mapping[str, Any], path: str) -> BlockerFactory:
    return BlockerFactory(str(options.get("filter_name", "blocker")))
