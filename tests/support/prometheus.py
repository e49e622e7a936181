"""A real Prometheus server (the Debian ``prometheus`` binary) for tests, and ``promtool``.

``PrometheusServer`` writes a config that scrapes the given targets every second into a temp
dir, starts ``prometheus`` on 127.0.0.1 with its TSDB in that dir, waits for ``/-/ready``,
answers instant queries through the HTTP API (``/api/v1/query``) and is stopped by PID.
A missing binary is a failure that names the package to install, never a skip.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from tests.support.proxy import free_port

INSTALL_HINT = "apt-get install prometheus"


class ToolMissingError(RuntimeError):
    pass


def find_tool(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``, or a ToolMissingError naming the package."""
    path = shutil.which(name)
    if path is None:
        raise ToolMissingError(
            f"{name} not found on PATH: the dashboard and alert tests need it "
            f"(Debian/Ubuntu: {INSTALL_HINT})"
        )
    return path


@dataclass(frozen=True)
class QueryResult:
    """What ``/api/v1/query`` answered: ``error`` (None when it succeeded) or the result."""

    expr: str
    error: str | None
    result_type: str = ""
    result: tuple[Any, ...] = ()

    @property
    def series(self) -> int:
        """How many series (or 1 for a scalar) came back."""
        if self.result_type == "scalar":
            return 1
        return len(self.result)


class PrometheusServer:
    """``prometheus`` scraping ``targets`` (``host:port`` strings) as ``job``, every
    ``scrape_interval``; ``workdir`` holds its config, TSDB and log."""

    def __init__(
        self,
        targets: Sequence[str],
        *,
        workdir: Path,
        job: str = "imapproxy",
        scrape_interval: str = "1s",
        rule_files: Sequence[Path] = (),
        startup_timeout: float = 30.0,
    ) -> None:
        """``rule_files`` are loaded and evaluated every ``scrape_interval`` too."""
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.workdir = workdir
        self.job = job
        self.scrape_interval = scrape_interval
        self.startup_timeout = startup_timeout
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"
        self._log_file: BinaryIO | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def render_config(self) -> str:
        targets = ", ".join(json.dumps(t) for t in self.targets)
        rules = "".join(f"  - {json.dumps(str(p))}\n" for p in self.rule_files)
        return (
            "global:\n"
            f"  scrape_interval: {self.scrape_interval}\n"
            f"  evaluation_interval: {self.scrape_interval}\n"
            + (f"rule_files:\n{rules}" if rules else "")
            + "scrape_configs:\n"
            f"  - job_name: {json.dumps(self.job)}\n"
            f"    scrape_timeout: {self.scrape_interval}\n"
            "    static_configs:\n"
            f"      - targets: [{targets}]\n"
        )

    def start(self) -> PrometheusServer:
        """Spawn it and wait until it is ready."""
        self.spawn()
        return self.wait_ready()

    def spawn(self) -> None:
        """Start the process (do something else meanwhile, then ``wait_ready``)."""
        binary = find_tool("prometheus")
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(self.render_config())
        self._log_file = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.console.templates=/nonexistent",
                "--web.console.libraries=/nonexistent",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self._log_file,
            cwd=self.workdir,
        )

    def wait_ready(self) -> PrometheusServer:
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited at start-up:\n{self.log()}")
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return self
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"prometheus not ready in {self.startup_timeout} s:\n{self.log()}"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM to the process this started (by its PID), SIGKILL if it lingers."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- HTTP API

    def _get(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=15) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the error as JSON
            body = exc.read()
            try:
                return json.loads(body)
            except ValueError:
                return {"status": "error", "error": f"HTTP {exc.code}: {body[:300]!r}"}

    def query(self, expr: str, at: float | None = None) -> QueryResult:
        """An instant query; errors (parse, execution) come back as ``QueryResult.error``."""
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        body = self._get("/api/v1/query", params)
        if body.get("status") != "success":
            return QueryResult(expr, f"{body.get('errorType', '')}: {body.get('error', body)}")
        data = body["data"]
        result = data["result"]
        if data["resultType"] == "scalar" or data["resultType"] == "string":
            result = [result]
        return QueryResult(expr, None, data["resultType"], tuple(result))

    def value(self, expr: str) -> float | None:
        """The single value of ``expr`` (an instant vector of one series), or None."""
        res = self.query(expr)
        if res.error is not None:
            raise AssertionError(f"{expr}: {res.error}")
        if res.result_type == "scalar":
            return float(res.result[0][1])
        if len(res.result) != 1:
            return None
        return float(res.result[0]["value"][1])

    def metric_names(self, selector: str) -> set[str]:
        """The names of the series ``selector`` matches (``/api/v1/label/__name__/values``)."""
        body = self._get("/api/v1/label/__name__/values", {"match[]": selector})
        return set(body.get("data", []))

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule as ``/api/v1/rules`` shows it (name, health, lastError, ...)."""
        body = self._get("/api/v1/rules", {})
        groups = body.get("data", {}).get("groups", [])
        return [rule for group in groups for rule in group.get("rules", [])]

    def targets_health(self) -> list[dict[str, Any]]:
        body = self._get("/api/v1/targets", {"state": "active"})
        return list(body.get("data", {}).get("activeTargets", []))

    def wait_scrapes(self, count: int = 2, timeout: float = 30.0) -> None:
        """Wait until every target has been scraped successfully ``count`` times, each scrape
        started after this call (so what it saw is what the caller did before it)."""
        mark = time.time()
        deadline = time.monotonic() + timeout
        done = 0
        while done < count:
            # timestamp() of the selector itself: of anything computed it is the query time
            res = self.query(f'timestamp(up{{job="{self.job}"}})')
            stamps = [float(s["value"][1]) for s in res.result] if res.error is None else []
            up = self.query(f'up{{job="{self.job}"}} == 1')
            healthy = up.error is None and up.series == len(self.targets)
            if healthy and len(stamps) == len(self.targets) and min(stamps) > mark:
                mark = min(stamps)
                done += 1
                continue
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"prometheus did not scrape {self.targets} {count} times in {timeout} s: "
                    f"targets {self.targets_health()}\n{self.log()[-2000:]}"
                )
            time.sleep(0.2)


def promtool(
    *args: str, cwd: Path | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``promtool ARGS``; its output is in the result (the caller asserts on it)."""
    return subprocess.run(
        [find_tool("promtool"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        check=False,
    )
