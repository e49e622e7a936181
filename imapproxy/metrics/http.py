"""Serving ``/metrics``: prometheus-client's WSGI server on a daemon thread.

A thread rather than a handler on the event loop: rendering a few thousand series takes
milliseconds, which the relay must not wait for.  The collectors read plain numbers that
only the event loop writes (see :mod:`.store`), so the thread takes no lock on the hot path.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from ..config import Endpoint

log = logging.getLogger("imapproxy.metrics")


class MetricsServer:
    def __init__(self, endpoint: Endpoint, registry: CollectorRegistry) -> None:
        self.endpoint = endpoint
        self.registry = registry
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> tuple[str, int]:
        """Listen and serve; returns the bound (host, port).  A port in use (or any
        other failure to listen) is an OSError naming ``--metrics`` and the address."""
        try:
            server, thread = start_http_server(
                self.endpoint.port, addr=self.endpoint.host, registry=self.registry
            )
        except OSError as exc:
            raise OSError(
                f"--metrics {self.endpoint}: cannot listen: {exc.strerror or exc} "
                "(choose another HOST:PORT)"
            ) from None
        self._server, self._thread = server, thread
        host, port = server.server_address[:2]
        log.info("metrics on http://%s/metrics", Endpoint(str(host), int(port)))
        return str(host), int(port)

    def close(self) -> None:
        server = self._server
        if server is not None:
            self._server = None
            server.shutdown()
            server.server_close()
