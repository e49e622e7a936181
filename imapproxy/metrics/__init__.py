"""Prometheus metrics: an observer on the filter API plus the relay's events.

``imapproxy run --metrics HOST:PORT`` (or ``metrics = "HOST:PORT"`` in the config file)
serves ``/metrics``.  The pieces, for a program that embeds the proxy::

    registry = CollectorRegistry()            # the caller's, never the global one
    metrics = ProxyMetrics(registry)
    proxy = Proxy(config, filters=metrics.observe(chain), events=metrics)
    server = MetricsServer(endpoint, registry); server.start()

Every metric, its labels and their closed value sets are listed in the README ("Metrics")
and in :mod:`.labels`.  Several processes on one host: give each its own ``--metrics``
port and let Prometheus scrape each as an instance (the collectors here keep plain
numbers in the process, so prometheus-client's multiprocess mode does not apply).
"""

from .http import MetricsServer
from .proxy import FILTER_NAME, ProxyMetrics

__all__ = ["FILTER_NAME", "MetricsServer", "ProxyMetrics"]
