"""Relay benchmark (run by hand): direct Dovecot vs HAProxy vs our proxy, in one run.

    python bench/relay_bench.py [--targets direct,haproxy,proxy] [--quick]
                                [--sessions 1000,5000] [--only a,b,...] [--json out.json]
                                [--metrics [--metrics-interval 5]]

``--metrics --targets proxy,base --base-root .`` compares the proxy with metrics on (its
``/metrics`` scraped every 5 s all along) against the same code without, in one run.

One throwaway Dovecot (``tests/support/dovecot.py``) serves every target:

* ``direct``  - Dovecot's plain port (baseline, no TLS);
* ``haproxy`` - HAProxy in TCP mode terminating TLS (``bind ... ssl crt combined.pem``)
  and forwarding to Dovecot's plain port;
* ``proxy``   - ``python -m imapproxy run --listen-tls ... --upstream-tls none``, also
  terminating TLS and forwarding to Dovecot's plain port. If it does not start (or fails
  a LOGIN/SELECT smoke test) its column says ``not available: <error>``.

Load comes from separate client processes (``bench/relay_clients.py``: raw sockets +
``ssl``, not imaplib). Each figure is the median of ``--reps`` repetitions (default 3),
repetitions interleaved across targets. Measurements:

a. bulk: ``UID FETCH uid BODY[]`` of seeded 1 MiB and 10 MiB messages, 3 in flight per
   connection, one connection in each of 2 client processes; MB/s (10^6 bytes) of literal
   payload received.
b. pipelined: batches of 100 ``NOOP`` / ``UID FETCH uid (FLAGS)`` written back to back,
   all 100 tagged completions read before the next batch; 2 client processes; commands/s.
c. latency: one command at a time on an established session (``NOOP``, ``UID FETCH uid
   (FLAGS)``); median and p99 round trip, and the median added over ``direct``.
d. session set-up: connect, TLS (if the target has TLS), greeting, LOGIN, SELECT INBOX,
   LOGOUT in a loop by N concurrent client processes (``--setup-workers``, default 8);
   sessions/s.
e. idle sessions: logged-in, SELECTed, idle TLS sessions opened on a freshly started
   relay up to each N of ``--sessions`` in turn (default 1000, then 5000); relay RSS
   (VmRSS, process tree) before and at each N: KiB per session, marginal KiB per session
   between levels, and how it scales. Only the first ``--idle-full-reps`` (default 1)
   repetitions go up to the largest N: 5000 sessions cost about a minute per relay,
   mostly Dovecot starting one imap process per session.
f. CPU: utime+stime of the relay (process tree, ``/proc/PID/stat``) over the measured
   phase of a, b and d: CPU-seconds per GB of payload, per 10,000 commands, per session.

``--quick`` is a smoke test (one repetition, short phases, 200 idle sessions): ~30 s.
A full default run takes ~5-6 minutes on 2 cores. See ``bench/relay_README.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import imaplib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from relay_clients import worker_entry  # noqa: E402
from relay_targets import (  # noqa: E402
    BenchDovecot,
    DirectTarget,
    HaproxyTarget,
    ProxyTarget,
    Target,
    count_processes,
    cpu_seconds,
    machine_busy_seconds,
    rss_kib,
    smoke_test,
)

from tests.support.certs import client_ssl_context, make_tls_certs  # noqa: E402
from tests.support.dovecot import dovecot_version  # noqa: E402

ALL_TARGETS = ("direct", "haproxy", "proxy", "base")
DEFAULT_TARGETS = ("direct", "haproxy", "proxy")
ALL_MEASUREMENTS = ("a", "b", "c", "d", "e", "f")
MIB = 1024 * 1024

# Constants shown for reference only (not measured by this script).
REFERENCE = {
    "nginx mail proxy (published)": {
        "bulk_mbps": 220,
        "pipe_cmds": 2300,
        "added_ms": None,
        "kib_session": 22,
    },
    "HAProxy (earlier, these machines)": {
        "bulk_mbps": 500,
        "pipe_cmds": 35000,
        "added_ms": 0.0,
        "kib_session": 17,
    },
}


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- client process groups ----------------------------------------------------------------


class WorkerGroup:
    """Client processes running one worker kind, synchronised with the parent by a barrier."""

    def __init__(self, kind: str, specs: list[dict[str, Any]]) -> None:
        ctx = mp.get_context("fork")
        self.barrier = ctx.Barrier(len(specs) + 1)
        self.q: Any = ctx.Queue()
        self.opened: dict[int, dict[int, dict[str, Any]]] = {}  # step -> idx -> report
        self._results: dict[int, Any] = {}
        self._errors: list[str] = []
        for i, spec in enumerate(specs):
            spec["idx"] = i
        self.n = len(specs)
        self.procs = [
            ctx.Process(target=worker_entry, args=(kind, spec, self.barrier, self.q), daemon=True)
            for spec in specs
        ]
        for p in self.procs:
            p.start()

    def _drain(self, block_until: float) -> None:
        while True:
            timeout = block_until - time.monotonic()
            try:
                msg = self.q.get(timeout=max(timeout, 0.01)) if timeout > 0 else self.q.get_nowait()
            except queue.Empty:
                return
            status, idx, payload = msg
            if status == "opened":
                self.opened.setdefault(payload["step"], {})[idx] = payload
            elif status == "ok":
                self._results[idx] = payload
            else:
                self._errors.append(f"client {idx}: {payload}")
            if len(self._results) + len(self._errors) >= self.n:
                return

    def _fail(self, what: str) -> BenchError:
        self._drain(time.monotonic() + 5.0)
        return BenchError(f"{what}: {'; '.join(self._errors) or 'no error reported'}")

    def sync(self, timeout: float) -> None:
        """Wait until every client reached the barrier (raises if one failed)."""
        try:
            self.barrier.wait(timeout)
        except threading.BrokenBarrierError:
            raise self._fail("client failed") from None
        # "opened" messages are put before the barrier; pick them up.
        self._drain(time.monotonic() + 0.05)

    def wait_opened(self, step: int, timeout: float) -> list[dict[str, Any]]:
        """The per-client reports of idle-session ``step`` (sent just before the barrier)."""
        deadline = time.monotonic() + timeout
        while len(self.opened.get(step, {})) < self.n and time.monotonic() < deadline:
            self._drain(min(deadline, time.monotonic() + 0.1))
        reports = self.opened.get(step, {})
        if len(reports) < self.n:
            raise BenchError(f"missing step reports from clients: {self._errors}")
        return list(reports.values())

    def results(self, timeout: float) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self._results) + len(self._errors) < self.n and time.monotonic() < deadline:
            self._drain(deadline)
        if self._errors:
            raise BenchError("; ".join(self._errors))
        if len(self._results) < self.n:
            raise BenchError(f"clients did not finish within {timeout:.0f}s")
        return [self._results[i] for i in range(self.n)]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.barrier.abort()
        for p in self.procs:
            p.join(5.0)
            if p.is_alive():
                p.terminate()  # by PID (our own child)
                p.join(5.0)

    def __enter__(self) -> WorkerGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the bench ------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.quick: bool = args.quick
        self.reps: int = args.reps or (1 if self.quick else 3)
        self.results: dict[str, dict[str, Any]] = {}
        self.last_foreign: float | None = None
        self.unavailable: dict[str, str] = {}
        self.targets: list[Target] = []
        self.dovecot: BenchDovecot | None = None
        self.workdir: Path | None = None
        self.params = self._params()

    def _params(self) -> dict[str, Any]:
        q = self.quick
        return {
            "reps": self.reps,
            "clients": self.args.clients,
            "bulk_depth": 3,
            "bulk_seconds": 0.7 if q else 3.0,
            "pipe_batch": 100,
            "pipe_seconds": 0.7 if q else 2.5,
            "lat_count": 300 if q else 2000,
            "lat_warmup": 50 if q else 200,
            "setup_workers": self.args.setup_workers,
            "setup_seconds": 1.0 if q else 3.0,
            "sessions": self.args.sessions or ([200] if q else [1000, 5000]),
            "idle_concurrency": 32,
            "idle_reps": self.args.idle_reps or self.reps,
            "idle_full_reps": self.args.idle_full_reps,
        }

    # -- set-up ---------------------------------------------------------------------------

    def setup(self) -> None:
        p = self.params
        self.workdir = Path(tempfile.mkdtemp(prefix="relay", dir="/tmp"))
        self.workdir.chmod(0o755)  # Dovecot's unprivileged processes must traverse it
        max_sessions = max(p["sessions"]) if "e" in self.args.only else 1000
        n_users = max(4, math.ceil(max_sessions / 500))
        self.users = {f"bench{i:02d}": f"pw{i:02d}" for i in range(n_users)}
        certs = make_tls_certs(self.workdir / "tls")
        self.ca_path = str(certs.ca_path)
        log(f"starting Dovecot ({n_users} users, room for {max_sessions} sessions)")
        self.dovecot = BenchDovecot(
            users=dict(self.users),
            certs=certs,
            workdir=self.workdir / "dv",
            max_sessions=max_sessions,
        )
        self.dovecot.start()
        self._seed()
        for name in self.args.targets:
            target: Target
            if name == "direct":
                target = DirectTarget(self.dovecot)
            elif name == "haproxy":
                target = HaproxyTarget(self.dovecot, self.workdir, self.args.haproxy_threads)
            elif name == "base":
                # the same proxy command from another checkout, for A/B runs in one window
                target = ProxyTarget(
                    self.dovecot,
                    self.workdir,
                    self.args.proxy_arg,
                    max_sessions=max_sessions,
                    name="base",
                    root=Path(self.args.base_root).resolve(),
                )
            else:
                target = ProxyTarget(
                    self.dovecot,
                    self.workdir,
                    [*self.args.proxy_arg, *self.args.proxy_only_arg, *self._metrics_args()],
                    max_sessions=max_sessions,
                )
            self.targets.append(target)
            self.results[name] = {}
            try:
                target.start()
                cipher = smoke_test(target, client_ssl_context(self.ca_path), *self.main_user)
                target.info["cipher"] = cipher
                log(f"{name}: ready on 127.0.0.1:{target.port} ({cipher})")
            except Exception as exc:
                target.stop()
                msg = f"{type(exc).__name__}: {exc}".strip()
                self.unavailable[name] = " ".join(msg.split())[:400]
                log(f"{name}: not available: {self.unavailable[name]}")

    def _metrics_args(self) -> list[str]:
        """``--metrics``: the proxy target (not base) serves metrics, scraped every
        ``--metrics-interval`` seconds for the whole run, as Prometheus would."""
        if not self.args.metrics:
            return []
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}/metrics"
        self.metrics_scrapes = {"ok": 0, "failed": 0}

        def scrape() -> None:
            while True:
                time.sleep(self.args.metrics_interval)
                try:
                    with urllib.request.urlopen(url, timeout=10) as resp:
                        resp.read()
                    self.metrics_scrapes["ok"] += 1
                except OSError:
                    self.metrics_scrapes["failed"] += 1  # (while the relay restarts)

        threading.Thread(target=scrape, daemon=True, name="metrics-scraper").start()
        log(f"proxy: --metrics 127.0.0.1:{port}, scraped every {self.args.metrics_interval:g} s")
        return ["--metrics", f"127.0.0.1:{port}"]

    def _seed(self) -> None:
        assert self.dovecot is not None
        rnd = random.Random(1)
        alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"

        def message(size: int, subject: str) -> bytes:
            head = (
                f"From: bench@example.org\r\nTo: user@example.org\r\nSubject: {subject}\r\n"
                f"Message-ID: <{subject}@bench>\r\nMIME-Version: 1.0\r\n"
                "Content-Type: application/octet-stream\r\n"
                "Content-Transfer-Encoding: base64\r\n\r\n"
            ).encode()
            line = bytes(rnd.choice(alphabet) for _ in range(76)) + b"\r\n"
            body = line * ((size - len(head)) // len(line) + 1)
            return (head + body)[: size - 2] + b"\r\n"

        small = [message(2000 + 300 * i, f"small{i}") for i in range(10)]
        # Small messages first (UIDs 1..10), then the bulk ones, all \Seen so that
        # FETCH BODY[] changes no flags.
        for user in self.users:
            for raw in small:
                self.dovecot.seed_message(user, raw, flags="S")
        self.main_user = ("bench00", self.users["bench00"])
        for i in range(4):
            self.dovecot.seed_message("bench00", message(MIB, f"bulk1m{i}"), flags="S")
        for i in range(2):
            self.dovecot.seed_message("bench00", message(10 * MIB, f"bulk10m{i}"), flags="S")
        # Let Dovecot index every mailbox once (direct, imaplib is fine outside the load).
        self.uids_by_size: dict[int, list[int]] = {}
        for user, pw in self.users.items():
            imap = imaplib.IMAP4(self.dovecot.host, self.dovecot.port)
            imap.login(user, pw)
            imap.select("INBOX")
            if user == "bench00":
                _, data = imap.uid("FETCH", "1:*", "(RFC822.SIZE)")
                for item in data:
                    text = item.decode() if isinstance(item, bytes) else str(item)
                    parts = text.replace("(", " ").replace(")", " ").split()
                    uid = int(parts[parts.index("UID") + 1])
                    size = int(parts[parts.index("RFC822.SIZE") + 1])
                    self.uids_by_size.setdefault(size, []).append(uid)
            imap.logout()
        self.small_uid = min(self.uids_by_size[min(self.uids_by_size)])
        log(f"seeded: sizes->uids {sorted((s, len(u)) for s, u in self.uids_by_size.items())}")

    def live(self) -> list[Target]:
        return [t for t in self.targets if t.name not in self.unavailable]

    def spec(self, target: Target, **extra: Any) -> dict[str, Any]:
        user, pw = self.main_user
        return {
            "endpoint": target.endpoint(),
            "ca_path": self.ca_path,
            "user": user,
            "password": pw,
            **extra,
        }

    def record(self, target: str, key: str, value: Any) -> None:
        self.results[target][key] = value

    def error(self, target: Target, key: str, exc: BaseException) -> None:
        msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        self.results[target.name][key] = {"error": msg}
        log(f"{target.name} {key}: ERROR {msg}")
        # A dead relay makes every later measurement fail: mark it unavailable.
        if target.proc is not None and target.proc.poll() is not None:
            self.unavailable[target.name] = f"died during {key} (status {target.proc.returncode})"

    def interleaved(self, key: str, one_rep: Callable[[Target, int], dict[str, Any]]) -> None:
        """Run ``one_rep`` for each repetition, targets interleaved; keep per-rep dicts."""
        reps: dict[str, list[dict[str, Any]]] = {t.name: [] for t in self.live()}
        for rep in range(self.reps):
            for target in self.live():
                if target.name not in reps or isinstance(reps[target.name], dict):
                    continue
                try:
                    self.last_foreign = None
                    out = one_rep(target, rep)
                    out["foreign_cpu_share"] = self.last_foreign
                    if self.last_foreign is not None and self.last_foreign > 0.1:
                        log(f"  (other processes used {self.last_foreign:.0%} of the CPUs)")
                    reps[target.name].append(out)
                except Exception as exc:
                    self.error(target, key, exc)
                    reps[target.name] = {"error": self.results[target.name][key]["error"]}  # type: ignore[assignment]
        for name, value in reps.items():
            if isinstance(value, list):
                self.record(name, key, {"reps": value})

    def _timed_group(
        self, target: Target, kind: str, specs: list[dict[str, Any]], seconds: float
    ) -> tuple[list[dict[str, Any]], float | None]:
        """Run a worker group; returns (results, relay CPU-seconds over the measured phase)."""
        with WorkerGroup(kind, specs) as group:
            group.sync(timeout=60.0)
            cpu0 = cpu_seconds(target.pid) if target.has_process and target.pid else None
            noise0 = self._noise_sample()
            res = group.results(timeout=seconds + 120.0)
            cpu1 = cpu_seconds(target.pid) if target.has_process and target.pid else None
            noise1 = self._noise_sample()
        cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
        # Share of the machine's CPU capacity used by processes that are not ours (other
        # users of a shared box): a figure measured while it is high is not trustworthy.
        busy, total = (noise1[i] - noise0[i] for i in range(2))
        ours = noise1[2] - noise0[2]
        self.last_foreign = max(0.0, (busy - ours) / total) if total > 0 else None
        return res, cpu

    @staticmethod
    def _noise_sample() -> tuple[float, float, float]:
        busy, total = machine_busy_seconds()
        return busy, total, cpu_seconds(os.getpid(), reaped=True)

    # -- a: bulk ---------------------------------------------------------------------------

    def bench_bulk(self) -> None:
        p = self.params
        for label, size in (("1MiB", MIB), ("10MiB", 10 * MIB)):
            uids = self.uids_by_size[size]

            def rep(target: Target, i: int, uids: list[int] = uids, label: str = label) -> dict:
                specs = [
                    self.spec(
                        target,
                        uids=uids[c::2] or uids,
                        depth=p["bulk_depth"],
                        count=100000,
                        max_seconds=p["bulk_seconds"],
                    )
                    for c in range(p["clients"])
                ]
                res, cpu = self._timed_group(target, "bulk", specs, p["bulk_seconds"])
                nbytes = sum(r["bytes"] for r in res)
                secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
                out = {
                    "bytes": nbytes,
                    "seconds": secs,
                    "mbps": nbytes / secs / 1e6,
                    "cpu_s": cpu,
                    "messages": sum(r["messages"] for r in res),
                    "client_cpu_s": [r["client_cpu_s"] for r in res],
                }
                log(
                    f"a {label:5} {target.name:8} rep {i + 1}: {out['mbps']:8.1f} MB/s"
                    + (f"  cpu {cpu:.2f}s" if cpu is not None else "")
                )
                return out

            self.interleaved(f"bulk_{label}", rep)

    # -- b: pipelined ------------------------------------------------------------------------

    def bench_pipeline(self) -> None:
        p = self.params
        for label, command in (("noop", "NOOP"), ("flags", f"UID FETCH {self.small_uid} (FLAGS)")):

            def rep(target: Target, i: int, command: str = command, label: str = label) -> dict:
                specs = [
                    self.spec(
                        target,
                        command=command,
                        batch=p["pipe_batch"],
                        max_batches=10**7,
                        max_seconds=p["pipe_seconds"],
                    )
                    for _ in range(p["clients"])
                ]
                res, cpu = self._timed_group(target, "pipeline", specs, p["pipe_seconds"])
                n = sum(r["commands"] for r in res)
                secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
                out = {
                    "commands": n,
                    "seconds": secs,
                    "cmds_per_s": n / secs,
                    "cpu_s": cpu,
                    "client_cpu_s": [r["client_cpu_s"] for r in res],
                }
                log(
                    f"b {label:5} {target.name:8} rep {i + 1}: {out['cmds_per_s']:9.0f} cmd/s"
                    + (f"  cpu {cpu:.2f}s" if cpu is not None else "")
                )
                return out

            self.interleaved(f"pipe_{label}", rep)

    # -- c: latency --------------------------------------------------------------------------

    def bench_latency(self) -> None:
        p = self.params
        commands = {"noop": "NOOP", "flags": f"UID FETCH {self.small_uid} (FLAGS)"}

        def rep(target: Target, i: int) -> dict:
            spec = self.spec(
                target, commands=commands, count=p["lat_count"], warmup=p["lat_warmup"]
            )
            res, _ = self._timed_group(target, "latency", [spec], 60.0)
            out = {}
            for name, samples in res[0]["rtt_ns"].items():
                ms = sorted(s / 1e6 for s in samples)
                out[name] = {
                    "p50_ms": statistics.median(ms),
                    "p99_ms": _pct(ms, 0.99),
                    "n": len(ms),
                }
            log(
                f"c       {target.name:8} rep {i + 1}: "
                + "  ".join(
                    f"{k} p50 {v['p50_ms']:.3f} ms p99 {v['p99_ms']:.3f} ms" for k, v in out.items()
                )
            )
            return out

        self.interleaved("latency", rep)

    # -- d: session set-up -------------------------------------------------------------------

    def bench_setup(self) -> None:
        p = self.params
        users = list(self.users.items())

        def rep(target: Target, i: int) -> dict:
            specs = [
                self.spec(
                    target,
                    users=users[w % len(users) :] + users[: w % len(users)],
                    max_sessions=10**7,
                    max_seconds=p["setup_seconds"],
                )
                for w in range(p["setup_workers"])
            ]
            res, cpu = self._timed_group(target, "setup", specs, p["setup_seconds"])
            n = sum(r["sessions"] for r in res)
            secs = max(r["t1"] for r in res) - min(r["t0"] for r in res)
            out = {"sessions": n, "seconds": secs, "per_s": n / secs, "cpu_s": cpu}
            log(
                f"d       {target.name:8} rep {i + 1}: {out['per_s']:7.1f} sessions/s"
                + (f"  cpu {cpu:.2f}s" if cpu is not None else "")
            )
            return out

        self.interleaved("setup", rep)

    # -- e: idle sessions --------------------------------------------------------------------

    def bench_idle(self) -> None:
        p = self.params
        ns = sorted(set(p["sessions"]))
        users = list(self.users.items())
        ctx = client_ssl_context(self.ca_path)
        reps: dict[str, list[dict[int, dict[str, Any]]]] = {
            t.name: [] for t in self.live() if t.has_process
        }
        errors: dict[str, str] = {}
        for i in range(p["idle_reps"]):
            # Only the first --idle-full-reps repetitions go up to the largest N (opening
            # 5000 sessions costs ~1 min per relay, mostly Dovecot forking imap processes).
            levels = ns if i < p["idle_full_reps"] else ns[:1]
            for target in [t for t in self.live() if t.name in reps and t.name not in errors]:
                steps: dict[int, dict[str, Any]] = {}
                try:
                    self._idle_rep(target, levels, i, users, ctx, steps)
                except Exception as exc:
                    missing = [n for n in levels if n not in steps]
                    self.error(target, f"idle_{missing[0] if missing else ns[-1]}", exc)
                    errors[target.name] = self.results[target.name].pop(
                        f"idle_{missing[0] if missing else ns[-1]}"
                    )["error"]
                reps[target.name].append(steps)
                self._wait_dovecot_idle()
        for name, rep_list in reps.items():
            for n in ns:
                values = [r[n] for r in rep_list if n in r]
                if values:
                    self.record(name, f"idle_{n}", {"reps": values})
                elif name in errors:
                    self.record(name, f"idle_{n}", {"error": errors[name]})

    def _idle_rep(
        self,
        target: Target,
        ns: list[int],
        i: int,
        users: list[tuple[str, str]],
        ctx: Any,
        steps: dict[int, dict[str, Any]],
    ) -> None:
        """One repetition on a fresh relay: open sessions up to each N in turn, measure."""
        assert self.dovecot is not None and self.dovecot.pid is not None
        p = self.params
        target.restart()  # fresh process: no memory left over from earlier measurements
        for _ in range(10):  # warm-up: first TLS handshakes, lazy imports, pools
            smoke_test(target, ctx, *self.main_user)
        time.sleep(0.5)
        assert target.pid is not None
        before = rss_kib(target.pid)
        procs = max(1, min(p["clients"], ns[-1] // 100))
        specs = [
            self.spec(
                target,
                users=users[c:] + users[:c],
                steps=[n // procs + (c < n % procs) for n in ns],
                concurrency=p["idle_concurrency"],
            )
            for c in range(procs)
        ]
        prev_rss, prev_n = before, 0
        with WorkerGroup("idle", specs) as group:
            for step, n in enumerate(ns):
                t0 = time.monotonic()
                group.sync(timeout=1200.0)
                reports = group.wait_opened(step, timeout=30.0)
                opened = sum(r["opened"] for r in reports)
                open_s = time.monotonic() - t0
                if opened < n:
                    errs = [e for r in reports for e in r["errors"]]
                    raise BenchError(
                        f"only {opened}/{n} sessions opened "
                        f"({sum(r['n_errors'] for r in reports)} errors: {errs[:3]})"
                    )
                time.sleep(1.0)
                rss = max(rss_kib(target.pid), (time.sleep(1.0), rss_kib(target.pid))[1])
                imap_procs = count_processes("imap", self.dovecot.pid)
                out = {
                    "sessions": opened,
                    "rss_before_kib": before,
                    "rss_after_kib": rss,
                    "kib_per_session": (rss - before) / opened,
                    "marginal_kib_per_session": (rss - prev_rss) / (opened - prev_n),
                    "open_seconds": open_s,
                    "dovecot_imap_processes": imap_procs,
                }
                steps[n] = out
                log(
                    f"e {n:5}  {target.name:8} rep {i + 1}: "
                    f"RSS {before / 1024:.1f} -> {rss / 1024:.1f} MiB"
                    f" = {out['kib_per_session']:.1f} KiB/session"
                    f" (marginal {out['marginal_kib_per_session']:.1f}; opened in {open_s:.1f}s,"
                    f" {imap_procs} dovecot imap processes)"
                )
                prev_rss, prev_n = rss, opened
                group.sync(timeout=60.0)
            group.results(timeout=120.0)

    def _wait_dovecot_idle(self, timeout: float = 60.0) -> None:
        """After dropping thousands of sessions, let Dovecot's imap processes exit."""
        assert self.dovecot is not None and self.dovecot.pid is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if count_processes("imap", self.dovecot.pid) <= 5:
                return
            time.sleep(0.5)

    # -- run ------------------------------------------------------------------------------

    def run(self) -> None:
        only = self.args.only
        steps = [
            ("a", self.bench_bulk),
            ("b", self.bench_pipeline),
            ("c", self.bench_latency),
            ("d", self.bench_setup),
            ("e", self.bench_idle),  # last: restarts the relays
        ]
        for letter, fn in steps:
            if letter in only and self.live():
                log(f"--- {letter} ---")
                fn()

    def stop(self) -> None:
        for t in self.targets:
            with contextlib.suppress(Exception):
                t.stop()
        if self.dovecot is not None:
            with contextlib.suppress(Exception):
                self.dovecot.stop()
        if self.workdir is None:
            return
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)
        else:
            log(f"kept {self.workdir}")


def _pct(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return math.nan
    k = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[k]


def _median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


# -- summarising ---------------------------------------------------------------------------


def summarise(bench: Bench) -> dict[str, dict[str, Any]]:
    """Per target: metric -> median value (or an error string)."""
    out: dict[str, dict[str, Any]] = {}
    for name, res in bench.results.items():
        s: dict[str, Any] = {}
        for key, val in res.items():
            if "error" in val:
                s[key] = f"error: {val['error']}"
                continue
            reps = val["reps"]
            if key.startswith("bulk_"):
                s[key] = _median([r["mbps"] for r in reps])
                s["cpu_" + key] = _median(
                    [
                        r["cpu_s"] / r["bytes"] * 1e9 if r["cpu_s"] is not None else None
                        for r in reps
                    ]
                )
            elif key.startswith("pipe_"):
                s[key] = _median([r["cmds_per_s"] for r in reps])
                s["cpu_" + key] = _median(
                    [
                        r["cpu_s"] / r["commands"] * 1e4 if r["cpu_s"] is not None else None
                        for r in reps
                    ]
                )
            elif key == "latency":
                for cmd in [k for k, v in reps[0].items() if isinstance(v, dict)]:
                    s[f"lat_{cmd}_p50"] = _median([r[cmd]["p50_ms"] for r in reps])
                    s[f"lat_{cmd}_p99"] = _median([r[cmd]["p99_ms"] for r in reps])
            elif key == "setup":
                s["setup"] = _median([r["per_s"] for r in reps])
                s["cpu_setup"] = _median(
                    [
                        r["cpu_s"] / r["sessions"] * 1e3 if r["cpu_s"] is not None else None
                        for r in reps
                    ]
                )
            elif key.startswith("idle_"):
                s[key] = _median([r["kib_per_session"] for r in reps])
                s[key.replace("idle_", "marginal_")] = _median(
                    [r["marginal_kib_per_session"] for r in reps]
                )
                s[key.replace("idle_", "rss_")] = _median([r["rss_after_kib"] / 1024 for r in reps])
        out[name] = s
    base = out.get("direct", {})
    for name, s in out.items():
        for cmd in ("noop", "flags"):
            if name == "direct":
                continue
            k = f"lat_{cmd}_p50"
            if isinstance(s.get(k), float) and isinstance(base.get(k), float):
                s[f"lat_{cmd}_added"] = s[k] - base[k]
        idle = sorted(
            int(k[5:]) for k, v in s.items() if k.startswith("idle_") and isinstance(v, float)
        )
        if len(idle) >= 2 and s[f"idle_{idle[0]}"] > 0:
            s["idle_scaling"] = s[f"idle_{idle[-1]}"] / s[f"idle_{idle[0]}"]
    return out


def rows(bench: Bench) -> list[tuple[str, str, str, int]]:
    """(key, label, unit, decimals)."""
    p = bench.params
    r: list[tuple[str, str, str, int]] = [
        ("bulk_1MiB", "a. bulk UID FETCH BODY[] 1 MiB msgs", "MB/s", 0),
        ("bulk_10MiB", "a. bulk UID FETCH BODY[] 10 MiB msgs", "MB/s", 0),
        ("pipe_noop", "b. pipelined NOOP, batches of 100", "cmd/s", 0),
        ("pipe_flags", "b. pipelined UID FETCH (FLAGS) x100", "cmd/s", 0),
        ("lat_noop_p50", "c. NOOP round trip, median", "ms", 3),
        ("lat_noop_p99", "c. NOOP round trip, p99", "ms", 3),
        ("lat_noop_added", "c. NOOP added median vs direct", "ms", 3),
        ("lat_flags_p50", "c. UID FETCH (FLAGS) RTT, median", "ms", 3),
        ("lat_flags_p99", "c. UID FETCH (FLAGS) RTT, p99", "ms", 3),
        ("lat_flags_added", "c. UID FETCH (FLAGS) added median", "ms", 3),
        ("setup", f"d. session set-up, {p['setup_workers']} workers", "sess/s", 1),
    ]
    ns = sorted(set(p["sessions"]))
    for n in ns:
        k = p["idle_reps"] if n == ns[0] else min(p["idle_reps"], p["idle_full_reps"])
        r.append(
            (f"idle_{n}", f"e. RSS per idle TLS session @{n} ({k} rep{'s' * (k > 1)})", "KiB", 1)
        )
        r.append((f"rss_{n}", f"e. relay RSS with {n} sessions", "MiB", 1))
    if len(ns) >= 2:
        a, b = ns[0], ns[-1]
        r.append((f"marginal_{b}", f"e. marginal KiB/session {a}->{b}", "KiB", 1))
        r.append(("idle_scaling", f"e. KiB/session @{b} / @{a}", "x", 2))
    r += [
        ("cpu_bulk_1MiB", "f. relay CPU per GB, 1 MiB msgs", "CPU-s", 2),
        ("cpu_bulk_10MiB", "f. relay CPU per GB, 10 MiB msgs", "CPU-s", 2),
        ("cpu_pipe_noop", "f. relay CPU per 10k NOOP", "CPU-s", 3),
        ("cpu_pipe_flags", "f. relay CPU per 10k FETCH (FLAGS)", "CPU-s", 3),
        ("cpu_setup", "f. relay CPU per session set-up", "CPU-ms", 2),
    ]
    return r


def _fmt(v: Any, decimals: int) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return "error" if v.startswith("error") else v
    if isinstance(v, float) and math.isnan(v):
        return "-"
    return f"{v:,.{decimals}f}"


def render(bench: Bench, summary: dict[str, dict[str, Any]]) -> str:
    names = [t.name for t in bench.targets]
    only = bench.args.only
    want = {
        "bulk": "a",
        "pipe": "b",
        "lat": "c",
        "setup": "d",
        "idle": "e",
        "rss": "e",
        "marginal": "e",
        "cpu": "f",
    }
    table = []
    for key, label, unit, dec in rows(bench):
        if want[key.split("_")[0]] not in only:
            continue
        cells = []
        for n in names:
            if n in bench.unavailable and not summary.get(n, {}).get(key):
                cells.append("n/a")
            else:
                cells.append(_fmt(summary.get(n, {}).get(key), dec))
        ph, pp = summary.get("haproxy", {}).get(key), summary.get("proxy", {}).get(key)
        ratio = f"{pp / ph:.2f}" if isinstance(ph, float) and isinstance(pp, float) and ph else "-"
        if key.endswith("_added"):
            ratio = "-"  # a ratio of two near-zero differences means nothing
        table.append([label, unit, *cells, ratio])
    header = ["measurement", "unit", *names, "proxy/haproxy"]
    lines = [_table(header, table)]

    ref_rows = []
    for name in names:
        s = summary.get(name, {})
        if name in bench.unavailable and not s:
            ref_rows.append([name, "n/a", "n/a", "n/a", "n/a"])
            continue
        bulk = " / ".join(_fmt(s.get(k), 0) for k in ("bulk_1MiB", "bulk_10MiB"))
        first = bench.params["sessions"][0]
        ref_rows.append(
            [
                name + " (this run)",
                bulk,
                _fmt(s.get("pipe_noop"), 0),
                _fmt(s.get("lat_noop_added"), 3),
                _fmt(s.get(f"idle_{first}"), 1),
            ]
        )
    for name, ref in REFERENCE.items():
        ref_rows.append(
            [
                name,
                _fmt(ref["bulk_mbps"], 0),
                _fmt(ref["pipe_cmds"], 0),
                "none measurable" if ref["added_ms"] == 0 else _fmt(ref["added_ms"], 3),
                _fmt(ref["kib_session"], 0),
            ]
        )
    lines.append("")
    lines.append("Summary and reference figures (reference rows are constants, not measured now):")
    lines.append(
        _table(
            [
                "",
                "bulk MB/s (1 / 10 MiB)",
                "pipelined cmd/s",
                "added ms (NOOP)",
                "KiB/idle session",
            ],
            ref_rows,
        )
    )
    notes = []
    for name, why in bench.unavailable.items():
        notes.append(f"{name}: not available: {why}")
    for name, s in summary.items():
        for key, v in s.items():
            if isinstance(v, str) and v.startswith("error"):
                notes.append(f"{name} {key}: {v}")
    if notes:
        lines.append("")
        lines += [f"* {n}" for n in notes]
    return "\n".join(lines)


def _table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *body]) for i in range(len(header))]

    def line(r: list[str]) -> str:
        first = str(r[0]).ljust(widths[0])
        rest = [str(c).rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep, *(line(r) for r in body)])


# -- main -------------------------------------------------------------------------------


def machine_busy(seconds: float = 1.0) -> float:
    """Share (0..1) of all CPUs busy over ``seconds`` (other users' work adds noise)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            vals = [int(v) for v in fh.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        return idle, sum(vals)

    i0, t0 = sample()
    time.sleep(seconds)
    i1, t1 = sample()
    return 1.0 - (i1 - i0) / max(1, t1 - t0)


def git_state() -> dict[str, str]:
    root = Path(__file__).resolve().parents[1]

    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *a], capture_output=True, text=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return "?"

    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty_imapproxy": git("status", "--porcelain", "--", "imapproxy"),
    }


def raise_fd_limit(want: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = max(want, hard) if os.geteuid() == 0 else hard
    for lim in (target, hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (lim, max(lim, hard)))
            return lim
        except (ValueError, OSError):
            continue
    return soft


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--targets",
        default=",".join(DEFAULT_TARGETS),
        help="comma-separated subset of direct,haproxy,proxy,base (base: --base-root)",
    )
    ap.add_argument(
        "--base-root",
        default=None,
        help="checkout that the 'base' target runs imapproxy from (an A/B baseline, "
        "e.g. a git worktree of an older commit)",
    )
    ap.add_argument(
        "--only",
        default=",".join(ALL_MEASUREMENTS),
        help="comma-separated subset of a,b,c,d,e,f (f needs a/b/d, added if missing)",
    )
    ap.add_argument("--quick", action="store_true", help="short smoke run (under a minute)")
    ap.add_argument(
        "--sessions",
        default=None,
        help="idle session counts for e (default 1000,5000; --quick: 200)",
    )
    ap.add_argument("--reps", type=int, default=0, help="repetitions (default 3, --quick: 1)")
    ap.add_argument("--idle-reps", type=int, default=0, help="repetitions for e (default: --reps)")
    ap.add_argument(
        "--idle-full-reps",
        type=int,
        default=1,
        help="repetitions of e that go up to the largest session count; the others stop "
        "at the smallest (default 1: 5000 sessions cost ~1 min per relay)",
    )
    ap.add_argument(
        "--clients", type=int, default=2, help="client processes for a and b (default 2)"
    )
    ap.add_argument(
        "--setup-workers", type=int, default=8, help="concurrent client processes for d (default 8)"
    )
    ap.add_argument(
        "--haproxy-threads",
        type=int,
        default=0,
        help="HAProxy nbthread (default: HAProxy's own, one per CPU)",
    )
    ap.add_argument(
        "--proxy-arg",
        action="append",
        default=[],
        help="extra argument for python -m imapproxy run (repeatable)",
    )
    ap.add_argument(
        "--proxy-only-arg",
        action="append",
        default=[],
        help="extra argument for the proxy target only, not base (repeatable): e.g. "
        "--proxy-only-arg=--config=transcript.toml against --base-root . measures a filter",
    )
    ap.add_argument(
        "--metrics",
        action="store_true",
        help="the proxy target (not base) serves Prometheus metrics, scraped all along: "
        "--metrics --targets proxy,base --base-root . measures what metrics cost",
    )
    ap.add_argument(
        "--metrics-interval",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="scrape interval with --metrics (default 5; Prometheus' default is 15; a "
        "scrape takes ~20 ms of CPU with 5000 sessions)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write raw figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs)")
    args = ap.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    bad = set(args.targets) - set(ALL_TARGETS)
    if bad:
        ap.error(f"unknown targets {sorted(bad)}")
    if "base" in args.targets and not args.base_root:
        ap.error("target 'base' needs --base-root")
    only = {m.strip() for m in args.only.split(",") if m.strip()}
    if only - set(ALL_MEASUREMENTS):
        ap.error(f"unknown measurements {sorted(only - set(ALL_MEASUREMENTS))}")
    if "f" in only and not only & {"a", "b", "d"}:
        only |= {"a", "b"}
    args.only = only
    if args.sessions:
        args.sessions = [int(x) for x in args.sessions.split(",") if x.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    fd_limit = raise_fd_limit()
    started = time.monotonic()

    def on_term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    busy_before = machine_busy()
    if busy_before > 0.10:
        log(f"warning: the machine is already {busy_before:.0%} busy: figures will be noisy")
    bench = Bench(args)
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    finally:
        bench.stop()
    elapsed = time.monotonic() - started
    busy_after = machine_busy(0.5)
    summary = summarise(bench)
    print()
    print(
        f"Relay benchmark: {len(bench.targets)} targets in front of one Dovecot, "
        f"{bench.reps} rep(s), medians; {os.cpu_count()} CPUs; total {elapsed:.0f}s"
    )
    for t in bench.targets:
        if t.name in bench.unavailable:
            continue
        bits = [str(t.info.get(k)) for k in ("version", "nbthread", "cipher") if k in t.info]
        if t.name in ("proxy", "base"):
            bits.append(str(t.info.get("command", "")).split(" -m ", 1)[-1])
        print(f"  {t.name}: " + ", ".join(bits))
    print()
    print(render(bench, summary))
    foreign = [
        r["foreign_cpu_share"]
        for res in bench.results.values()
        for val in res.values()
        for r in val.get("reps", [])
        if r.get("foreign_cpu_share") is not None
    ]
    if foreign:
        print(
            f"\nOther processes used {statistics.median(foreign):.0%} (median; max "
            f"{max(foreign):.0%}) of the CPUs during the measured phases of a-d."
        )
    print(
        f"CPU busy before the run (other processes): {busy_before:.0%}, after: "
        f"{busy_after:.0%}. imapproxy at {git_state()['commit']}"
        + (" + uncommitted changes" if git_state()["dirty_imapproxy"] else "")
    )
    if args.json:
        blob = {
            "argv": sys.argv,
            "elapsed_s": elapsed,
            "machine_busy_before": busy_before,
            "machine_busy_after": busy_after,
            "git": git_state(),
            "dovecot": {
                "version": dovecot_version(),
                "login": "high-performance (service_count=0), one imap process per session",
            },
            "cpus": os.cpu_count(),
            "fd_limit": fd_limit,
            "params": bench.params,
            "targets": {
                t.name: {"info": t.info, "unavailable": bench.unavailable.get(t.name)}
                for t in bench.targets
            },
            "summary": summary,
            "raw": bench.results,
            "reference": REFERENCE,
        }
        args.json.write_text(json.dumps(blob, indent=2, default=str))
        log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
