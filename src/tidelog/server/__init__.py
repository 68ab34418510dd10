"""The tidelog server: the store over HTTP with auth, ACLs, metrics and a dashboard."""

from tidelog.server._app import create_app
from tidelog.server._config import Limits, ServerConfig, load_config
from tidelog.server._serve import Server, prepare_config

__all__ = ["Limits", "Server", "ServerConfig", "create_app", "load_config", "prepare_config"]
