"""The server's configuration: the documented TOML example loads, bad ones are refused."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tidelog
from tidelog.security.acl import Permission
from tidelog.server import load_config

DOC = Path(__file__).parent.parent / "docs" / "http-api.md"


def _example() -> str:
    match = re.search(r"```toml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    assert match is not None, "docs/http-api.md has a TOML example"
    return match.group(1)


def test_the_documented_example_loads_and_flags_win(tmp_path: Path) -> None:
    path = tmp_path / "tidelog.toml"
    path.write_text(_example())
    cfg = load_config(path, {"port": 9000}, environ={"TIDELOG_PORT": "8080"})
    assert cfg.port == 9000  # the flag wins over the variable over the file
    assert load_config(path, environ={"TIDELOG_PORT": "8080"}).port == 8080
    assert load_config(path, environ={}).port == 7070
    assert cfg.tls_client_ca == "clients-ca.pem"
    assert cfg.jwt is not None and cfg.jwt.algorithms == ("RS256",)
    assert [(g.principal, g.permission, g.resource) for g in cfg.grants] == [
        ("billing", Permission.READ, "category:order"),
        ("billing", Permission.WRITE, "prefix:invoice-"),
        ("billing", Permission.READ, "group:billing"),
    ]
    assert cfg.limits.max_subscriptions_per_principal == 16


@pytest.mark.parametrize(
    "text",
    [
        'port = "many"',
        "[[grants]]\nprincipal = 'a'\npermission = 'read'\nresource = 'prefix:orders'",
        "[[grants]]\nprincipal = 'a'\npermission = 'own'\nresource = '*'",
        "[jwt]\nalgorithms = ['none']\nsecret = 'x'",
        "[jwt]\nalgorithms = ['HS256', 'RS256']\nsecret = 'x'\npublic_key_file = 'k.pem'",
        "tls_client_ca = 'ca.pem'",
        "this is not toml",
    ],
)
def test_bad_configuration_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(tidelog.InvalidInput):
        load_config(path, environ={})
