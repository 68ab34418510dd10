"""The server's configuration: one object, read from a TOML file and `TIDELOG_*` variables."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from tidelog._connect import DEFAULT_STORE_URL
from tidelog.errors import InvalidInput
from tidelog.security.acl import Grant
from tidelog.security.tokens import JWTConfig

__all__ = ["Limits", "ServerConfig", "load_config"]


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Bounds on what one request or client may cost. Every rejection is a 4xx."""

    max_body_bytes: int = 4 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    max_events_per_append: int = 1000
    max_page: int = 1000
    max_subscriptions_per_principal: int = 64
    max_connections_per_principal: int = 256
    """In-flight requests + open SSE streams + WebSockets at once, per principal (429 over)."""
    max_connections_per_address: int = 256
    """Open connections per client IP address, before authentication (429 and closed over);
    0: no cap (behind a reverse proxy, where every client has the proxy's address)."""
    header_timeout: float = 10.0
    """Seconds from a new connection, or a request's first byte, to its complete head (408)."""
    body_timeout: float = 60.0
    """Seconds from a request's head to the end of its body (the connection is closed)."""
    max_json_depth: int = 32
    max_groups_per_principal: int = 100
    """Consumer groups one principal may create through this server (429 beyond)."""
    metrics_refresh_interval: float = 15.0
    """Seconds between background refreshes of consumer lag for /metrics (sooner after a
    scrape, but at most a fifth of the time): a scrape never computes it."""
    send_timeout: float = 10.0
    """A subscriber that does not take an event within this many seconds is dropped."""
    keepalive_interval: float = 15.0
    live_queue_events: int = 1024
    """Events the server holds for one live subscriber that has not taken them; one more and
    the subscriber reads the store on its own until it caught up (nothing is lost)."""

    def __post_init__(self) -> None:
        if self.live_queue_events < 1:
            raise InvalidInput("limits.live_queue_events must be >= 1")


class Scaling(msgspec.Struct, frozen=True, kw_only=True):
    """The scaling signal `tidelog_group_desired_members` (deploy/kubernetes: KEDA or HPA)."""

    drain_seconds: float = 60.0
    """Workers should drain a group's lag within this time: the members needed to do so at
    the measured per-member rate is the signal."""
    rate_window_seconds: float = 120.0
    """The per-member rate is the checkpoints' advance over about this window: long enough
    to smooth a burst, short enough to follow a handler that got slower."""

    def __post_init__(self) -> None:
        if self.drain_seconds <= 0 or self.rate_window_seconds <= 0:
            raise InvalidInput("scaling.drain_seconds and rate_window_seconds must be > 0")


class ServerConfig(msgspec.Struct, frozen=True, kw_only=True):
    store_url: str = DEFAULT_STORE_URL
    host: str = "127.0.0.1"
    port: int = 7070
    data_dir: str = "tidelog-data"
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    """With a client CA, clients must present a certificate it signed (mutual TLS);
    the certificate's subject common name becomes the principal."""
    api_keys: dict[str, str] = msgspec.field(default_factory=dict)
    """SHA-256 hex digest of a key -> principal."""
    jwt: JWTConfig | None = None
    grants: tuple[Grant, ...] = ()
    limits: Limits = Limits()
    log_format: str = "auto"
    """"json", "text", or "auto" (text on a terminal)."""
    scaling: Scaling = Scaling()

    def __post_init__(self) -> None:
        if self.tls_client_ca and not (self.tls_cert and self.tls_key):
            raise InvalidInput("tls_client_ca needs tls_cert and tls_key")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidInput("tls_cert and tls_key go together")


_ENV_FIELDS = {
    "TIDELOG_STORE": "store_url",
    "TIDELOG_HOST": "host",
    "TIDELOG_PORT": "port",
    "TIDELOG_DATA_DIR": "data_dir",
    "TIDELOG_TLS_CERT": "tls_cert",
    "TIDELOG_TLS_KEY": "tls_key",
    "TIDELOG_TLS_CLIENT_CA": "tls_client_ca",
}


def load_config(
    file: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> ServerConfig:
    """File < environment < flags: a flag wins over a variable, which wins over the file."""
    data: dict[str, Any] = {}
    if file is not None:
        try:
            data.update(tomllib.loads(file.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"cannot read config file {file}: {exc}") from None
    env = os.environ if environ is None else environ
    for var, name in _ENV_FIELDS.items():
        if env.get(var):
            data[name] = env[var]
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(data, ServerConfig, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise InvalidInput(f"invalid server configuration: {exc}") from None
