"""Prometheus metrics and health probes of a worker: `tidelog worker --metrics-port N`.

`/metrics` is Prometheus' text format; `/livez` and `/readyz` are the
Kubernetes probes (`_health`): 200 or 503 with a JSON body saying why.

The figures are the runtime's `Stats`, read when Prometheus scrapes: the
consumers only ever add to plain integers, and prometheus-client's HTTP thread
reads them, so a worker pays nothing per event for being scraped. Lag is not
here: it is a property of the store, which the server's `/metrics` reports for
every group, whoever consumes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

import tidelog

if TYPE_CHECKING:
    from ._app import App

__all__ = ["COUNTERS", "GAUGES", "serve_metrics"]

COUNTERS: dict[str, str] = {
    "handled": "Successful handler calls (events, or batches)",
    "events_handled": "Events handled successfully",
    "retries": "Handler failures that were retried",
    "parked": "Events parked in the group's DLQ after their last attempt",
    "held": "Events held in the DLQ behind a parked event of their stream",
    "skipped_parked": "Redelivered events the DLQ already holds or settled",
    "commits": "Checkpoint commits",
    "refused_commits": "Commits the engine refused: this member was fenced",
    "stale_heartbeats": "Heartbeats refused because the lease was gone",
    "rejoins": "Times this worker joined its groups again after losing its lease",
    "partitions_started": "Partitions this worker started consuming",
    "partitions_revoked": "Partitions this worker gave up (rebalance, lease lost, stop)",
    "breaker_opens": "Times a handler's circuit breaker opened: failures of many streams in a row",
    "breaker_probes": "Calls let through a paused handler to test its dependency",
}
"""`Stats` fields exported as `tidelog_worker_<field>_total`, with their help text."""

GAUGES: dict[str, str] = {
    "peak_in_flight": "Most events fetched and not yet finished at once, per group consumer",
    "paused_handlers": "Handlers paused by their circuit breaker (their dependency is down)",
}
"""`Stats` fields that go up and down, exported as they are (`tidelog_worker_<field>`).

Every field of `Stats` is in one of the two tables, so a new counter is
exported by adding one line of help text, never a collector branch."""


class _StatsCollector(Collector):
    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        info = InfoMetricFamily("tidelog_build", "tidelog build information")
        info.add_metric([], {"version": tidelog.__version__})
        yield info
        stats = self.app.stats  # None until the app runs
        labels = [self.app.name]
        for field, text in COUNTERS.items():
            family = CounterMetricFamily(f"tidelog_worker_{field}", text, labels=["app"])
            family.add_metric(labels, getattr(stats, field) if stats is not None else 0)
            yield family
        for field, text in GAUGES.items():
            gauge = GaugeMetricFamily(f"tidelog_worker_{field}", text, labels=["app"])
            gauge.add_metric(labels, getattr(stats, field) if stats is not None else 0)
            yield gauge


class _Server(ThreadingMixIn, WSGIServer):
    """One thread per request: a slow scrape never delays a probe."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds: no access log line for each."""


_StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_WsgiApp = Callable[[dict[str, Any], _StartResponse], Iterable[bytes]]


def _probes(app: App, metrics: _WsgiApp) -> _WsgiApp:
    """`/livez` and `/readyz` from the app's `Health`; every other path goes to `metrics`."""

    def wsgi(environ: dict[str, Any], start_response: _StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/livez", "/readyz"):
            return metrics(environ, start_response)
        health = app.health
        body: dict[str, Any]
        if health is None:  # the app has not started running yet
            ok, body = path == "/livez", {"status": "starting"}
        elif path == "/livez":
            ok, why = health.live()
            body = {"status": why}
        else:
            ok, reasons = health.ready()
            body = {"status": "ready" if ok else "not ready", "consumers": reasons}
        payload = json.dumps(body).encode()
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
        )
        return [payload]

    return wsgi


def serve_metrics(app: App, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """Serve `app`'s `/metrics`, `/livez` and `/readyz` at http://host:port from a daemon thread."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(_StatsCollector(app))
    server = make_server(
        host,
        port,
        _probes(app, make_wsgi_app(registry)),
        server_class=_Server,
        handler_class=_QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, name="tidelog-metrics", daemon=True)
    thread.start()
    return server, thread
