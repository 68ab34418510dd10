"""The HTTP application: the store's API over Litestar, with auth, ACLs and limits.

This module only assembles: the routes live in one module per family
(`_streams_api`, `_log_api`, `_live_api`, `_groups_api`, `_consumers_api`,
`_cloudevents`, `_registry_api`, `_retention_api`, `_scheduled_api`,
`_asyncapi`, `_dashboard`, `_ops_api`, `_admin_api`, `_dlq_api`), each a leaf
over the shared dependencies of `_deps`. Request and response bodies are the
msgspec types of `tidelog.wire`, so the OpenAPI document at `/schema` is
generated from the same definitions the remote engine decodes. Every error
from the store is turned into a 4xx (or a 503 when the backend is down) by one
exception handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from litestar import Litestar, Request, Response
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.types import ASGIApp, ControllerRouterHandler, Message, Receive, Scope, Send

import tidelog
from tidelog import wire
from tidelog.engines.contract import Engine
from tidelog.errors import NotSupported, StoreClosed, StoreUnavailable, TidelogError
from tidelog.security.keystore import StoreCredentials
from tidelog.security.tokens import Authenticator
from tidelog.server._admin_api import ROUTES as ADMIN_ROUTES
from tidelog.server._asyncapi import ROUTES as ASYNCAPI_ROUTES
from tidelog.server._cloudevents import ROUTES as CLOUDEVENTS_ROUTES
from tidelog.server._config import ServerConfig
from tidelog.server._connections import ConnectionLimit
from tidelog.server._consumers_api import ROUTES as CONSUMERS_ROUTES
from tidelog.server._dashboard import HISTORY_KEY, History
from tidelog.server._dashboard import ROUTES as DASHBOARD_ROUTES
from tidelog.server._deps import Runtime, auth_challenge, principal, provide_access, runtime
from tidelog.server._dlq_api import ROUTES as DLQ_ROUTES
from tidelog.server._group_quota import GroupQuota
from tidelog.server._groups_api import ROUTES as GROUPS_ROUTES
from tidelog.server._live_api import ROUTES as LIVE_ROUTES
from tidelog.server._log_api import ROUTES as LOG_ROUTES
from tidelog.server._metrics import Metrics
from tidelog.server._openapi import asset_routes, render_plugins
from tidelog.server._ops_api import ROUTES as OPS_ROUTES
from tidelog.server._registry_api import ROUTES as REGISTRY_ROUTES
from tidelog.server._registry_wire import confluent_error, is_registry_path, keep_encoded_slashes
from tidelog.server._retention_api import ROUTES as RETENTION_ROUTES
from tidelog.server._scheduled_api import ROUTES as SCHEDULED_ROUTES
from tidelog.server._streams_api import ROUTES as STREAMS_ROUTES

__all__ = ["create_app"]

log = logging.getLogger(__name__)

ROUTES: list[ControllerRouterHandler] = [
    *STREAMS_ROUTES,
    *LOG_ROUTES,
    *LIVE_ROUTES,
    *GROUPS_ROUTES,
    *OPS_ROUTES,
    *DASHBOARD_ROUTES,
    *CLOUDEVENTS_ROUTES,
    *CONSUMERS_ROUTES,
    *REGISTRY_ROUTES,
    *RETENTION_ROUTES,
    *ASYNCAPI_ROUTES,
    *ADMIN_ROUTES,
    *DLQ_ROUTES,
    *SCHEDULED_ROUTES,
]
"""Every route, in the order of the OpenAPI document's paths."""


_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def _parameter_problems(problems: list[Any]) -> str:
    """`invalid query parameter 'limit': Expected `int`, got `str`` for each problem."""
    said = []
    for problem in problems:
        if not isinstance(problem, dict):
            said.append(str(problem))
            continue
        source = getattr(problem.get("source"), "value", problem.get("source")) or "request"
        said.append(f"invalid {source} parameter {problem.get('key')!r}: {problem.get('message')}")
    return "; ".join(said)


def _error_response(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    if is_registry_path(request.url.path):
        # Confluent's clients read `error_code` even from an unknown route or method
        return confluent_error(request, exc)
    if isinstance(exc, StoreUnavailable) and request.method not in _READ_METHODS:
        # a write the store refused (full disk, I/O error): /readyz says 503 until a
        # probe write succeeds (see _readiness)
        runtime(request.app.state).readiness.write_failed(exc)
    if isinstance(exc, TidelogError):
        body, status = wire.error_to_wire(exc)
    elif isinstance(exc, ValidationException) and isinstance(exc.extra, list) and exc.extra:
        # a malformed query or path parameter: the API's own code and words, not
        # Litestar's "Validation failed …: [{… <ParamType.QUERY: 'query'>}]"
        body = wire.WireError(code="invalid_input", message=_parameter_problems(exc.extra))
        status = 400
    elif isinstance(exc, HTTPException):
        body = wire.WireError(code="http_error", message=str(exc.detail))
        status = exc.status_code
        if exc.status_code == 400 and getattr(exc, "extra", None):
            body.message = f"{exc.detail}: {exc.extra}"
    else:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        body, status = wire.WireError(code="internal", message="internal error"), 500
    headers = {}
    if status == 401:
        headers["WWW-Authenticate"] = auth_challenge(request.headers.get("authorization"))
    return Response(body, status_code=status, headers=headers)


def _send_timeout(seconds: float) -> Callable[[ASGIApp], ASGIApp]:
    """Drop a client that does not take a response chunk within `seconds` (slow readers)."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def bounded(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return

            async def timed_send(message: Message) -> None:
                await asyncio.wait_for(send(message), seconds)

            await app(scope, receive, timed_send)

        return bounded

    return middleware


def create_app(store: Engine, config: ServerConfig, *, close_store: bool = False) -> Litestar:
    """The ASGI app serving `store`. The caller owns the store unless `close_store`."""
    rt = Runtime(
        store=store,
        config=config,
        auth=Authenticator(config.api_keys, config.jwt, more_keys=lambda: rt.credentials.keys),
        metrics=Metrics(config.scaling),
        subscriptions=ConnectionLimit(config.limits.max_subscriptions_per_principal),
        connections=ConnectionLimit(config.limits.max_connections_per_principal),
        group_quota=GroupQuota(config.limits.max_groups_per_principal),
    )

    # a revoke or a removed grant ends the open live subscriptions (see `StoreCredentials`)
    credentials = rt.credentials = StoreCredentials(on_narrowed=rt.end_subscriptions)

    def authenticate(scope: Scope) -> str:
        return principal(ASGIConnection(scope), rt)

    background: list[asyncio.Task[None]] = []
    history = History()

    async def on_startup() -> None:
        # the store is looked up per tick: tests lend a running app to other stores
        background.append(asyncio.create_task(rt.readiness.run(lambda: rt.store)))
        refresh = rt.metrics.run_refresh(lambda: rt.store, config.limits.metrics_refresh_interval)
        background.append(asyncio.create_task(refresh))
        # the store's keys and grants before the first request, then kept fresh
        with contextlib.suppress(Exception):  # a store down now: `run` retries and logs
            await credentials.refresh(rt.store)
        background.append(asyncio.create_task(credentials.run(lambda: rt.store)))
        background.append(asyncio.create_task(history.run(lambda: rt.store)))
        # The server delivers scheduled events, its clients' included (see docs/scheduling.md).
        with contextlib.suppress(NotSupported, StoreClosed):
            rt.metrics.observe_scheduler(store.start_scheduler())

    async def on_shutdown() -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        background.clear()
        if close_store:
            await store.close()

    app = Litestar(
        route_handlers=[*ROUTES, *asset_routes()],  # the API docs' scripts, served here
        dependencies={"access": Provide(provide_access)},
        exception_handlers={Exception: _error_response},
        request_max_body_size=config.limits.max_body_bytes,
        state=State({"runtime": rt, HISTORY_KEY: history}),
        openapi_config=OpenAPIConfig(
            title="tidelog",
            version=tidelog.__version__,
            path="/schema",
            render_plugins=render_plugins(),  # the JSON completed with hand-decoded bodies
        ),
        on_startup=[on_startup],
        on_shutdown=[on_shutdown],
        middleware=[
            rt.metrics.middleware,
            _send_timeout(config.limits.send_timeout),
            rt.connections.middleware(authenticate),
        ],
        debug=False,
        logging_config=None,  # the embedding process configures logging, not the app
    )
    # before the router, which Litestar's `middleware` only wraps the routes of
    app.asgi_handler = keep_encoded_slashes(app.asgi_handler)
    return app
