"""`tidelog serve`: the server on the embedded default, or any engine URL."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tidelog._connect import resolved_url

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    store: Annotated[
        str | None,
        typer.Option("--store", envvar="TIDELOG_STORE", help="Store URL behind the server."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 7070).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", envvar="TIDELOG_CONFIG", help="TOML config file.")
    ] = None,
    tls_cert: Annotated[str | None, typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[str | None, typer.Option(help="Server private key (PEM).")] = None,
    tls_client_ca: Annotated[
        str | None, typer.Option(help="CA for client certificates: turns on mutual TLS.")
    ] = None,
) -> None:
    """Serve the store over HTTP: API, live subscriptions, metrics and the dashboard."""
    from tidelog.server._config import load_config
    from tidelog.server._serve import Server, prepare_config

    console = Console(stderr=True, soft_wrap=True)  # never break a key, path or URL
    cfg = load_config(
        config,
        {
            "store_url": store,
            "host": host,
            "port": port,
            "tls_cert": tls_cert,
            "tls_key": tls_key,
            "tls_client_ca": tls_client_ca,
        },
    )
    cfg = prepare_config(cfg, lambda line: console.print(line, highlight=False))
    from tidelog.telemetry import configure_logging

    configure_logging(cfg.log_format)  # JSON lines, or text on a terminal ("auto")
    scheme = "https" if cfg.tls_cert else "http"

    async def run() -> None:
        server = Server(cfg)
        await server.start()
        # What start-up built (the app, its routes and schemas, the libraries) lives as
        # long as the process: out of the collector's sight, a full collection no longer
        # walks it. Profiling http_append found one such collection taking 0.35 s (a
        # loaded machine) in the middle of appends. Only here, in a process that only
        # serves: frozen objects are never collected, not even as garbage cycles.
        gc.freeze()
        # One line per fact, never wrapped (`soft_wrap`): a path or URL broken at the
        # terminal's edge cannot be copied, and scripts look for whole lines.
        base = f"{scheme}://{cfg.host}:{server.port}"
        for line in (
            f"tidelog serving {resolved_url(cfg.store_url)} at {base}/ (dashboard)",
            f"  API {base}/v1, OpenAPI {base}/schema",
            "  authenticate with 'Authorization: Bearer <key>' (the dashboard asks for the key)",
        ):
            console.print(line, highlight=False)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await server.stop()
        console.print("tidelog stopped", highlight=False)

    asyncio.run(run())
