"""`tidelog schema list|show|register|check` on a SQLite store."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tidelog.cli import app

V1 = """
import msgspec
import tidelog

@tidelog.event("CliOrderPlaced", version=1)
class OrderPlaced(msgspec.Struct):
    order_id: str
    total: int
"""

V2_OK = """
import msgspec
import tidelog

@tidelog.event("CliOrderPlaced", version=2)
class OrderPlaced(msgspec.Struct):
    order_id: str
    total: int
    note: str = ""
"""

V2_BAD = """
import msgspec
import tidelog

@tidelog.event("CliOrderPlaced", version=2)
class OrderPlaced(msgspec.Struct):
    order_id: str
    total: int
    currency: str
"""

V1_EDITED = """
import msgspec
import tidelog

@tidelog.event("CliOrderPlaced", version=1)
class OrderPlaced(msgspec.Struct):
    order_id: str
    total: float
"""


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[CliRunner, list[str], Path]:
    monkeypatch.syspath_prepend(str(tmp_path))
    store = ["--store", f"sqlite:///{tmp_path}/cli.db"]
    # the store exists: `schema list` and `show` refuse a missing one
    assert CliRunner().invoke(app, [*store, "migrate-schema"]).exit_code == 0
    return CliRunner(), store, tmp_path


def write(directory: Path, name: str, source: str) -> str:
    (directory / f"{name}.py").write_text(textwrap.dedent(source))
    return name


def test_register_list_show_and_check(cli: tuple[CliRunner, list[str], Path]) -> None:
    runner, store, tmp = cli
    v1 = write(tmp, "cli_events_v1", V1)
    result = runner.invoke(app, [*store, "schema", "register", v1])
    assert result.exit_code == 0, result.output
    assert "CliOrderPlaced v1" in result.output

    result = runner.invoke(app, [*store, "--json", "schema", "list"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert rows == [{"subject": "CliOrderPlaced", "versions": [1], "compatibility": "BACKWARD"}]

    result = runner.invoke(app, [*store, "schema", "show", "CliOrderPlaced"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["$defs"]["OrderPlaced"]["required"] == ["order_id", "total"]

    # the registered classes themselves check clean
    assert runner.invoke(app, [*store, "schema", "check", v1]).exit_code == 0

    ok = write(tmp, "cli_events_v2_ok", V2_OK)
    result = runner.invoke(app, [*store, "schema", "check", ok])
    assert result.exit_code == 0, result.output
    assert "ok CliOrderPlaced v2" in result.output

    bad = write(tmp, "cli_events_v2_bad", V2_BAD)
    result = runner.invoke(app, [*store, "--json", "schema", "check", bad])
    assert result.exit_code == 1
    [report] = [json.loads(line) for line in result.stdout.splitlines()]
    assert report["ok"] is False and any("currency" in p for p in report["problems"])

    edited = write(tmp, "cli_events_v1_edited", V1_EDITED)
    assert runner.invoke(app, [*store, "schema", "check", edited]).exit_code == 1

    # register refuses the incompatible one with a one-line error
    result = runner.invoke(app, [*store, "schema", "register", bad])
    assert result.exit_code == 1
    assert "IncompatibleSchema" in result.output
    result = runner.invoke(app, [*store, "schema", "register", ok])
    assert result.exit_code == 0, result.output


def test_errors_are_one_line(cli: tuple[CliRunner, list[str], Path]) -> None:
    runner, store, _ = cli
    result = runner.invoke(app, [*store, "schema", "show", "Nope"])
    assert result.exit_code == 1 and "UnknownEventType" in result.output
    # the registry's words (#14 item 9): a subject without a schema, not a missing class
    assert "no schema registered for subject 'Nope'" in result.output
    assert "event class" not in result.output
    result = runner.invoke(app, [*store, "schema", "check", "no_such_module_here"])
    assert result.exit_code == 1 and "cannot import" in result.output
