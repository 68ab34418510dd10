"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import asyncio

from litestar import Response, get
from litestar.datastructures import State

from tidelog.errors import TidelogError
from tidelog.server._deps import runtime

__all__ = ["ROUTES"]


@get("/livez", summary="The process is alive", include_in_schema=True)
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@get("/readyz", summary="The store answers and accepts writes")
async def readyz(state: State) -> Response[dict[str, str]]:
    rt = runtime(state)
    failure = await rt.readiness.check(rt.store)
    if failure is not None:
        return Response({"status": "unavailable", "reason": failure}, status_code=503)
    try:
        await asyncio.wait_for(rt.store.last_position(), 2.0)
    except (TidelogError, TimeoutError) as exc:
        return Response({"status": "unavailable", "reason": type(exc).__name__}, status_code=503)
    return Response({"status": "ok"})


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> Response[bytes]:
    rt = runtime(state)
    rt.metrics.scraped()  # lag is computed in the background (Metrics.run_refresh)
    return Response(rt.metrics.render(), media_type="text/plain; version=0.0.4")


ROUTES = [livez, readyz, metrics]
