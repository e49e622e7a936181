"""An example third-party filter: refuses the commands named in its options.

    [[filters]]
    use = "example-deny"
    commands = ["DELETE", "EXPUNGE"]
    text = "not through this proxy"
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from imapproxy.filters import PASS, CommandView, ConfigError, Filter, Reject, SessionView, Verdict
from imapproxy.filters.registry import check_options


class DenyCommands(Filter):
    name = "example-deny"

    def __init__(self, commands: frozenset[str], text: str) -> None:
        self.denied = commands
        self.text = text
        self.wants_commands = commands  # type: ignore[misc]  # shown only these

    def command(self, cmd: CommandView, session: SessionView) -> Verdict:
        if cmd.name in self.denied:
            return Reject(self.text, code="NOPERM")
        return PASS


def make(options: Mapping[str, Any], path: str):  # type: ignore[no-untyped-def]
    check_options(options, path, {"commands": list, "text": str})
    commands = options.get("commands", [])
    if not all(isinstance(c, str) for c in commands):
        raise ConfigError(f"{path}.commands", "expected a list of command names")
    denied = frozenset(c.upper() for c in commands)
    text = options.get("text", "refused by policy")

    def factory(info: object) -> Filter:
        return DenyCommands(denied, text)

    return factory
