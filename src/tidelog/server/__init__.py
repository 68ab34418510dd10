"""The tidelog server: the store over HTTP with auth, ACLs, metrics and a dashboard.

Names are loaded on first use so that `tidelog --help` (which imports the
`serve` command from this package) works on a base install without the
`server` extra.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tidelog.server._app import create_app
    from tidelog.server._config import Limits, ServerConfig, load_config
    from tidelog.server._serve import Server, prepare_config

__all__ = ["Limits", "Server", "ServerConfig", "create_app", "load_config", "prepare_config"]

_WHERE = {
    "create_app": "tidelog.server._app",
    "Limits": "tidelog.server._config",
    "ServerConfig": "tidelog.server._config",
    "load_config": "tidelog.server._config",
    "Server": "tidelog.server._serve",
    "prepare_config": "tidelog.server._serve",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'tidelog.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
