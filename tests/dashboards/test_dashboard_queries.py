"""Every query of every shipped dashboard, run by a real Prometheus against what it scraped.

Prometheus (the Debian binary) is started on 127.0.0.1 with a generated config that scrapes
the exporter every second; once it has scraped the traffic a few times, each panel query,
variable query and annotation is sent to ``/api/v1/query`` with the template variables
substituted as Grafana would ($job and $instance set to the scraped target, the listener
variable to all, $__rate_interval 15 s).  A panel or variable query that errors or returns
no series fails the test; an annotation (an event marker: restarts) only must not error.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dashboards import grafana
from tests.support.prometheus import PrometheusServer, ToolMissingError
from tests.support.standin_metrics import serving_standin

JOB = "imapproxy"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[PrometheusServer, str]]:
    with serving_standin() as target:
        server = PrometheusServer([target], workdir=tmp_path_factory.mktemp("prom"), job=JOB)
        try:
            server.start()
        except ToolMissingError as exc:
            pytest.fail(str(exc), pytrace=False)
        try:
            server.wait_scrapes(3)
            yield server, target
        finally:
            server.stop()


def _values(target: str) -> dict[str, str]:
    return {"job": JOB, "instance": target, "listener": ".*", "datasource": ""}


@pytest.mark.parametrize("path", grafana.dashboard_files(), ids=lambda p: p.name)
def test_every_dashboard_query_returns_series(
    path: Path, prometheus: tuple[PrometheusServer, str]
) -> None:
    server, target = prometheus
    failures: list[str] = []
    ran = 0
    for query in grafana.queries(path):
        expr = grafana.substitute(query.expr, _values(target))
        res = server.query(expr)
        ran += 1
        if res.error is not None:
            failures.append(f"{query.where}: ERROR {res.error}\n    {expr}")
        elif query.must_return and res.series == 0:
            failures.append(f"{query.where}: no series\n    {expr}")
    assert ran > 0
    assert not failures, f"{len(failures)} of {ran} queries of {path.name} failed:\n" + "\n".join(
        failures
    )
