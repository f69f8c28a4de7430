"""Prometheus exposition of :mod:`.metrics`: the daemon's ``/metrics`` endpoint and the
node-exporter textfile ``scan`` writes.

Each scrape asks for a fresh :class:`~.metrics.Figures` snapshot through a private
``CollectorRegistry`` (never the process-wide default), so two engines in one process
(tests, a daemon and a scan) never share or clash over metrics.

The endpoint has no authentication, so it listens on a loopback address unless the
configuration says ``allow_remote = true``: the figures are counts, no addresses, but
rule and action names and the decision rate still tell an attacker how close they
came to a threshold.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, write_to_textfile
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from .metrics import SPECS, Figures

log = logging.getLogger("smtpguard_logwatch.metrics")


class FiguresCollector(Collector):
    """Turns one snapshot per scrape into metric families."""

    def __init__(self, figures: Callable[[], Figures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        return iter(families(self._figures()))


def families(figures: Figures) -> list[Metric]:
    out: list[Metric] = []
    for name, spec in SPECS.items():
        if spec.kind == "histogram":
            hist = figures.checkpoint
            buckets = [("+Inf" if math.isinf(le) else repr(le), n)
                       for le, n in hist.cumulative()]
            out.append(HistogramMetricFamily(name, spec.help, buckets=buckets,
                                             sum_value=hist.total))
            continue
        make = CounterMetricFamily if spec.kind == "counter" else GaugeMetricFamily
        family = make(name, spec.help, labels=list(spec.labels))
        for labels, value in sorted(figures.values.get(name, {}).items()):
            family.add_metric(list(labels), value)
        out.append(family)
    return out


def registry_for(figures: Callable[[], Figures]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FiguresCollector(figures))
    return registry


def write_textfile(path: str, figures: Figures) -> None:
    """Write ``path`` for node-exporter's textfile collector: a temporary file in the
    same directory renamed over it, so the collector never reads half a file."""
    write_to_textfile(path, registry_for(lambda: figures))


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the API's name
        pass  # one line per scrape would flood the daemon's log


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class MetricsServer:
    """``/metrics`` over HTTP on a thread of its own; ``close`` stops it."""

    def __init__(self, host: str, port: int, figures: Callable[[], Figures]) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        server_class = type("_MetricsServer", (_Server,), {"address_family": family})
        self.httpd = make_server(host, port, make_wsgi_app(registry_for(figures)),
                                 server_class=server_class, handler_class=_Quiet)
        self.host = host
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       name="metrics-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()  # waits for serve_forever, so only once it runs
            self.thread.join(5)
        self.httpd.server_close()
