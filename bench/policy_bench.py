"""Policy evaluation cost at the codec level (run by hand): ``python bench/policy_bench.py``.

Each command is decoded once into frames; the timed loop is the command gate deciding
about it (``CommandGate.command_part``), as the relay calls it, with:

* ``none``     no filter: the gate skips the command (today's relay);
* ``hold``     one deciding filter that passes everything: the gate holds the command,
               parses it into a view and runs the chain (the cost of deciding at all);
* ``policy``   a 100-rule policy (the issue's example scaled up: per-user mailbox denies,
               command/client denies, read-only auditors, hidden mailboxes, allows, a
               per-user rate and a login rate: every command is decided).

``policy - hold`` is what the rules themselves cost, measured again without the gate (a
second table): the chain deciding about a command already parsed, with a filter that
passes everything (``pass``) and with the policy.  Median of several runs, one core,
microseconds per command.  Target (issue 10): a 100-rule policy under 5 us per command.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from imapproxy.filters import ChainEntry, Filter, FilterChain, OnError, SessionInfo, SessionView
from imapproxy.filters.api import PASS, Phase
from imapproxy.filters.policy import make_policy
from imapproxy.filters.views import command_view, literal_info
from imapproxy.relay.gate import Collect, CommandGate
from imapproxy.wire import NEED_DATA, PAUSED, Decoder, Frame, Limits, Side

LIMITS = Limits()
INFO = SessionInfo("bench", "192.168.7.9", 50000, "imap@0.0.0.0:143")

COMMANDS: dict[str, tuple[bytes, str | None]] = {
    "SELECT": (b'a1 SELECT "INBOX" (CONDSTORE)\r\n', "alice"),
    "SELECT lit": (b"a1 SELECT {12}\r\nArchive.2024\r\n", "alice"),
    "UID FETCH": (
        b"a1 UID FETCH 4711:4799 (UID FLAGS BODY.PEEK[HEADER.FIELDS (FROM TO)])\r\n",
        "alice",
    ),
    "UID STORE": (b"a1 UID STORE 4711 +FLAGS.SILENT (\\Seen)\r\n", "alice"),
    "APPEND head": (b"a1 APPEND Sent (\\Seen) {5000000}\r\n", "alice"),
    "UID MOVE": (b"a1 UID MOVE 4711 Trash\r\n", "alice"),
    "LOGIN": (b'a1 LOGIN "alice" "secret"\r\n', None),
}


def hundred_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for i in range(30):  # per-user mailbox denies (do not apply to alice)
        rules.append({"match": {"user": f"user{i}", "mailbox": f"Finance.{i}.*"},
                      "action": "deny"})  # fmt: skip
    for i in range(20):  # mailbox denies for everyone
        rules.append({"match": {"mailbox": [f"Restricted{i}.*", f"Legal.{i}"]}, "action": "deny"})
    for i in range(15):  # mailbox changes refused from some networks
        rules.append({"match": {"command": ["DELETE", "RENAME"], "client": f"10.{i}.0.0/16"},
                      "action": "deny", "code": "NOPERM", "text": "not from here"})  # fmt: skip
    for i in range(10):  # auditors
        rules.append({"match": {"user": f"auditor{i}@example.com"}, "action": "read-only"})
    for i in range(15):  # hidden mailboxes
        rules.append({"match": {"user": "intern*", "mailbox": f"HR.{i}.*"}, "action": "hide"})
    for i in range(8):  # allows
        rules.append({"match": {"user": f"boss{i}", "mailbox": "*"}, "action": "allow"})
    rules.append({"match": {"command": ["LOGIN", "AUTHENTICATE"]}, "rate": "1000000/s"})
    rules.append({"match": {"user": "*"}, "rate": "1000000/s"})
    assert len(rules) == 100
    return rules


class PassAll(Filter):
    name = "pass"

    def command(self, cmd, session):  # type: ignore[no-untyped-def]
        return PASS


def frames(data: bytes) -> list[Frame]:
    dec = Decoder(Side.CLIENT, LIMITS)
    dec.authenticated = True
    dec.nonsync_as_sync = True
    dec.receive_data(data)
    out: list[Frame] = []
    while True:
        ev = dec.next_event()
        if ev is NEED_DATA:
            return out
        if ev is PAUSED:
            dec.continuation()
            continue
        if isinstance(ev, Frame):
            out.append(ev)
            if not ev.final and not ev.streamed:
                dec.continuation()
            elif ev.streamed:
                return out


def make_gate(kind: str, user: str | None) -> CommandGate:
    entries = []
    if kind == "hold":
        entries = [ChainEntry("pass", lambda info: PassAll(), OnError.CLOSED)]
    elif kind == "policy":
        factory = make_policy({"rules": hundred_rules(), "delimiter": "."}, "bench")
        entries = [ChainEntry("policy", factory, OnError.CLOSED)]
    filters = FilterChain(entries).open(INFO, lambda *a: None)
    view = SessionView(INFO, phase=Phase.AUTHENTICATED if user else Phase.NOT_AUTHENTICATED,
                       user=user, selected="INBOX")  # fmt: skip
    return CommandGate(filters, view, LIMITS, clock=time.monotonic)


def per_command_us(kind: str, data: bytes, user: str | None, n: int) -> float:
    gate = make_gate(kind, user)
    parts = frames(data)
    step = gate.command_part
    for part in parts:  # warm up (and check it passes)
        d = step(part)
        assert d is None or type(d).__name__ in ("Forward", "Collect"), d
    t0 = time.perf_counter()
    for _ in range(n):
        for part in parts:
            d = step(part)
            if type(d) is Collect:
                pass
    return (time.perf_counter() - t0) / n * 1e6


def chain_view(data: bytes, user: str | None) -> tuple[Any, Any]:
    """The view the gate builds for ``data`` (once), and a session view."""
    parts = frames(data)
    raw = b"".join(p.raw for p in parts)
    lits = [literal_info(p.literal, inline=not p.streamed) for p in parts if p.literal]
    last = parts[-1]
    view = command_view(raw, last, lits, complete=last.final, limits=LIMITS)
    session = SessionView(INFO, phase=Phase.AUTHENTICATED if user else Phase.NOT_AUTHENTICATED,
                          user=user, selected="INBOX")  # fmt: skip
    return view, session


def chain_us(kind: str, data: bytes, user: str | None, n: int) -> float:
    """The chain alone deciding about an already parsed command."""
    if kind == "pass":
        entries = [ChainEntry("pass", lambda info: PassAll(), OnError.CLOSED)]
    else:
        factory = make_policy({"rules": hundred_rules(), "delimiter": "."}, "bench")
        entries = [ChainEntry("policy", factory, OnError.CLOSED)]
    filters = FilterChain(entries).open(INFO, lambda *a: None)
    view, session = chain_view(data, user)
    decide = filters.command
    verdict, _ = decide(view, session)
    assert type(verdict).__name__ in ("Pass", "Replace"), verdict
    t0 = time.perf_counter()
    for _ in range(n):
        decide(view, session)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=20000, help="commands per run")
    ap.add_argument("-r", "--runs", type=int, default=7, help="runs (the median is shown)")
    args = ap.parse_args()
    print(f"{'command':<12} {'none':>8} {'hold':>8} {'policy':>8} {'rules':>8}   (us/command)")
    worst = 0.0
    for name, (data, user) in COMMANDS.items():
        med = {}
        for kind in ("none", "hold", "policy"):
            med[kind] = statistics.median(
                per_command_us(kind, data, user, args.n) for _ in range(args.runs)
            )
        rules = med["policy"] - med["hold"]
        worst = max(worst, med["policy"] - med["none"])
        print(f"{name:<12} {med['none']:8.2f} {med['hold']:8.2f} {med['policy']:8.2f} "
              f"{rules:8.2f}")  # fmt: skip
    print(f"worst policy - none: {worst:.2f} us per command (the gate's hold included)\n")
    print(f"{'command':<12} {'pass':>8} {'policy':>8} {'rules':>8} {'(best)':>8}"
          "   (us/command, chain only)")  # fmt: skip
    worst = worst_best = 0.0
    for name, (data, user) in COMMANDS.items():
        runs = {
            kind: [chain_us(kind, data, user, args.n) for _ in range(args.runs)]
            for kind in ("pass", "policy")
        }
        med = {kind: statistics.median(r) for kind, r in runs.items()}
        rules = med["policy"] - med["pass"]
        best = min(runs["policy"]) - min(runs["pass"])  # (least disturbed by other load)
        worst, worst_best = max(worst, rules), max(worst_best, best)
        print(f"{name:<12} {med['pass']:8.2f} {med['policy']:8.2f} {rules:8.2f} {best:8.2f}")
    print(f"worst rules: {worst:.2f} us per command, median ({worst_best:.2f} best run); "
          "target: under 5 us")


if __name__ == "__main__":
    main()
