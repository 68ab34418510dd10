"""The `tidelog` command line, against a real SQLite file per test.

Commands run in-process through Typer's `CliRunner`; what needs a real process
(`python -m tidelog`, Ctrl-C on `tail`, a base install without extras) runs in
a subprocess.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from uuid import uuid4

import msgspec
import pytest
import typer
from typer.testing import CliRunner, Result

import tidelog
from tidelog import cli
from tidelog.cli import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/cli.db"


def invoke(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(app, ["--store", url, *args], env=env)


def ok(url: str, *args: str) -> Result:
    result = invoke(url, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    return result


def json_lines(result: Result) -> list[Any]:
    return [msgspec.json.decode(line) for line in result.stdout.splitlines() if line.strip()]


def one_line_error(result: Result) -> str:
    """Assert the result is a clean failure: status 1, one `error:` line, no traceback."""
    assert result.exit_code == 1, (result.exit_code, result.stdout, result.stderr)
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit
    ), result.exception
    assert "Traceback" not in result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""
    return lines[0]


def append(url: str, stream: str, type_: str = "Happened", *extra: str) -> dict[str, Any]:
    [out] = json_lines(ok(url, "append", stream, "--type", type_, *extra))
    assert isinstance(out, dict)
    return out


async def _delete(url: str, stream: str) -> None:
    async with tidelog.connect(url) as store:
        await store.delete_stream(stream)


# --------------------------------------------------------------------------- append


def test_append_prints_the_result_as_json(url: str) -> None:
    first = append(url, "order-1", "OrderPlaced", "--data", '{"total": 42}', "-e", "no_stream")
    assert first["stream"] == "order-1"
    assert (first["version"], first["position"]) == (0, 1)
    second = append(url, "order-1", "OrderPaid", "--expected-version", "0")
    assert (second["version"], second["position"]) == (1, 2)
    third = append(url, "order-2", "OrderPlaced", "--expected-version", "no-stream")
    assert (third["version"], third["position"]) == (0, 3)
    fourth = append(url, "order-2", "OrderPaid", "--expected-version", "STREAM_EXISTS")
    assert fourth["version"] == 1


def test_append_with_the_same_id_is_idempotent(url: str) -> None:
    event_id = str(uuid4())
    first = append(url, "order-1", "OrderPlaced", "--id", event_id, "-e", "no_stream")
    retry = append(url, "order-1", "OrderPlaced", "--id", event_id, "-e", "no_stream")
    assert retry == first
    assert first["id"] == event_id
    assert len(json_lines(ok(url, "--json", "read", "order-1"))) == 1


def test_append_stores_data_and_metadata(url: str) -> None:
    append(
        url, "order-1", "OrderPlaced", "--data", '{"total": 42}', "-m", '{"correlationid": "c1"}'
    )
    [event] = json_lines(ok(url, "--json", "read", "order-1"))
    assert event["data"] == {"total": 42}
    assert event["metadata"] == {"correlationid": "c1"}
    assert event["type"] == "OrderPlaced"
    assert (event["stream"], event["version"], event["position"]) == ("order-1", 0, 1)
    assert event["schema_version"] == 1
    assert "data_base64" not in event


def test_non_json_data_written_by_the_api_reads_as_base64(url: str) -> None:
    async def write() -> None:
        async with tidelog.connect(url) as store:
            await store.append("blob-1", [tidelog.NewEvent(type="Raw", data=b"\xff\x00")])

    asyncio.run(write())
    [event] = json_lines(ok(url, "--json", "read", "blob-1"))
    assert event["data"] is None
    assert event["data_base64"] == "/wA="
    assert "<2 bytes>" in ok(url, "read", "blob-1").stdout


def test_event_data_cannot_break_lines_or_the_terminal(url: str) -> None:
    hostile = '{"a": "\\u001b[31m",\n "b": 1}'  # valid JSON with a newline and an escape
    append(url, "order-1", "X", "--data", hostile)
    raw = '"\x1b[2J\x07"'  # a JSON string holding raw control characters: not valid JSON

    async def write() -> None:
        async with tidelog.connect(url) as store:
            await store.append("order-1", [tidelog.NewEvent(type="Y", data=raw.encode())])

    asyncio.run(write())
    lines = ok(url, "--json", "read", "order-1").stdout.splitlines()
    assert len(lines) == 2
    assert msgspec.json.decode(lines[0])["data"] == {"a": "\x1b[31m", "b": 1}
    human = ok(url, "read", "order-1").stdout
    assert "\x1b" not in human and "\x07" not in human
    assert len(human.splitlines()) == 2
    assert "\\x1b[2J" in human


# --------------------------------------------------------------------------- read, log, streams


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One store, filled through the CLI, that the read-only tests below share.

    Each CLI append opens the store and syncs a commit: filling a store per test
    cost those tests most of their time. No test given `filled` writes to it.
    """
    url = f"sqlite:///{tmp_path_factory.mktemp('filled')}/cli.db"
    for i in range(5):
        append(url, "order-1", "OrderItemAdded", "--data", f'{{"n": {i}}}')
    append(url, "customer-1", "CustomerRegistered")
    append(url, "order-2", "OrderPlaced")
    return url


def test_category_and_type_take_a_comma_separated_list(filled: str, tmp_path: Path) -> None:
    """`log -c order,customer` matched nothing (one category named "order,customer")
    and said so by printing nothing (the #14 walk-through); help says how to give
    several names, not `<list[str]>`."""

    def streams(*args: str) -> list[str]:
        return [e["stream"] for e in json_lines(ok(filled, "--json", *args))]

    assert streams("log", "-c", "order,customer") == streams("log", "-c", "order", "-c", "customer")
    assert len(streams("log", "-c", "order, customer")) == 7
    assert set(streams("log", "-t", "OrderPlaced,CustomerRegistered")) == {"order-2", "customer-1"}
    out = tmp_path / "part.jsonl"
    ok(filled, "export", "-c", "customer,order", "-o", str(out))
    assert len(out.read_text().splitlines()) == 7
    for command in ("log", "tail", "export"):
        help_text = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "100"}).stdout
        assert "list[str]" not in help_text and "<name>[,<name>…]" in help_text


def test_streams_speaks_of_the_low_water_mark_only_when_retention_deleted(
    filled: str, url: str
) -> None:
    """`3 streams; low-water position 1 (retention deleted what is below)` on a store
    where nothing was ever deleted, and `1 streams` (the #14 walk-through)."""
    assert ok(filled, "streams").stdout.splitlines()[-1] == "3 streams"
    for _ in range(3):
        append(url, "order-1", "Placed")
    ok(url, "retention", "set", "-c", "order", "--max-count", "1")
    ok(url, "scavenge")
    last = ok(url, "streams", "--category", "order").stdout.splitlines()[-1]
    assert last == "1 stream; low-water position 3 (retention deleted what is below)"


def test_read_forwards_backwards_from_and_limit(filled: str) -> None:
    versions = [e["version"] for e in json_lines(ok(filled, "--json", "read", "order-1"))]
    assert versions == [0, 1, 2, 3, 4]
    back = json_lines(ok(filled, "--json", "read", "order-1", "--backwards", "--limit", "2"))
    assert [e["version"] for e in back] == [4, 3]
    back_from = json_lines(ok(filled, "--json", "read", "order-1", "--backwards", "--from", "1"))
    assert [e["version"] for e in back_from] == [1, 0]
    window = json_lines(ok(filled, "--json", "read", "order-1", "--from", "2", "-n", "2"))
    assert [e["data"] for e in window] == [{"n": 2}, {"n": 3}]
    assert ok(filled, "--json", "read", "order-404").stdout == ""


def test_read_prints_readable_lines(filled: str) -> None:
    lines = ok(filled, "read", "order-1", "--limit", "2").stdout.splitlines()
    assert len(lines) == 2
    assert "order-1@0" in lines[0] and "OrderItemAdded" in lines[0] and '{"n": 0}' in lines[0]


def test_log_filters(filled: str) -> None:
    everything = json_lines(ok(filled, "--json", "log"))
    assert [e["position"] for e in everything] == list(range(1, 8))
    orders = json_lines(ok(filled, "--json", "log", "--category", "order"))
    assert {e["stream"] for e in orders} == {"order-1", "order-2"} and len(orders) == 6
    placed = json_lines(ok(filled, "--json", "log", "--type", "OrderPlaced"))
    assert [e["stream"] for e in placed] == ["order-2"]
    tail = json_lines(ok(filled, "--json", "log", "--from", "6", "--limit", "1"))
    assert [e["position"] for e in tail] == [6]
    both = json_lines(ok(filled, "--json", "log", "-c", "customer", "-c", "order", "-n", "100"))
    assert len(both) == 7
    assert "customer-1@0" in ok(filled, "log", "--category", "customer").stdout


def test_streams(filled: str) -> None:
    listed = json_lines(ok(filled, "--json", "streams"))
    assert listed == [
        {"name": "customer-1", "version": 0, "deleted": False},
        {"name": "order-1", "version": 4, "deleted": False},
        {"name": "order-2", "version": 0, "deleted": False},
    ]
    only_orders = json_lines(ok(filled, "--json", "streams", "--category", "order"))
    assert [s["name"] for s in only_orders] == ["order-1", "order-2"]
    human = ok(filled, "streams").stdout
    assert "order-1" in human and "3 streams" in human


def test_store_from_the_environment(url: str) -> None:
    result = CliRunner().invoke(
        app, ["append", "order-9", "--type", "X"], env={"TIDELOG_STORE": url}
    )
    assert result.exit_code == 0, result.stderr
    assert [s["name"] for s in json_lines(ok(url, "--json", "streams"))] == ["order-9"]


# --------------------------------------------------------------------------- tail


def test_tail_catches_up_and_stops_after_count(filled: str) -> None:
    events = json_lines(ok(filled, "--json", "tail", "--from", "0", "--count", "3"))
    assert [e["position"] for e in events] == [1, 2, 3]
    customers = json_lines(
        ok(filled, "--json", "tail", "-c", "customer", "--from", "0", "--count", "1")
    )
    assert [e["stream"] for e in customers] == ["customer-1"]


def _readline(proc: subprocess.Popen[str], pool: ThreadPoolExecutor) -> str:
    assert proc.stdout is not None
    line: str = pool.submit(proc.stdout.readline).result(timeout=60)
    assert line, "tail ended early"
    return line


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_tail_follows_another_process_live_and_stops_cleanly(
    url: str, stop: signal.Signals
) -> None:
    append(url, "order-1", "OrderPlaced")
    with subprocess.Popen(
        [sys.executable, "-m", "tidelog", "--store", url, "--json", "tail", "--from", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            with ThreadPoolExecutor(1) as pool:
                caught_up = msgspec.json.decode(_readline(proc, pool))
                assert caught_up["type"] == "OrderPlaced"
                append(url, "order-1", "OrderPaid")  # written after tail started
                live = msgspec.json.decode(_readline(proc, pool))
                assert (live["type"], live["position"]) == ("OrderPaid", 2)
                proc.send_signal(stop)
                _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 0, err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- demo


def test_demo_writes_and_replays_on_sqlite(url: str) -> None:
    [report] = json_lines(ok(url, "--json", "demo", "--events", "600", "--store", url))
    assert report["engine"] == "sqlite"
    assert report["events"] == report["replayed"] == 600
    assert report["read_model_matches"] is True
    assert report["orders"] >= 20 and report["customers"] == 6
    assert report["appends"] == 600
    streams = json_lines(ok(url, "--json", "streams"))
    assert len(streams) == report["streams"]
    log = json_lines(ok(url, "--json", "log", "--type", "OrderPaid"))
    assert sum(e["data"]["amount_cents"] for e in log) == report["revenue_cents"]


def test_demo_defaults_to_a_fresh_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--events", "200"])
    assert result.exit_code == 0, result.stderr
    [db] = (tmp_path / "tidelog-data").glob("demo-*.db")
    assert "read model" in result.stdout and "matches what was written" in result.stdout
    assert "events/s" in result.stdout
    copied = f"sqlite:///{db}"
    assert len(json_lines(ok(copied, "--json", "log"))) == 200


def test_demo_refuses_a_store_with_events(url: str) -> None:
    append(url, "order-1", "OrderPlaced")
    message = one_line_error(invoke(url, "demo", "--events", "10", "--store", url))
    assert "empty store" in message


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["append", "order-1", "--type", "X", "--data", "{nope"], "not valid JSON"),
        (["append", "order-1", "--type", "X", "--metadata", "[1"], "not valid JSON"),
        (["append", "order-1", "--type", "X", "--metadata", "[1]"], "JSON object"),
        (["append", "order 1", "--type", "X"], "InvalidStreamName"),
        (["append", "../etc", "--type", "X"], "InvalidStreamName"),
        (["append", "order-1", "--type", "bad type"], "InvalidEvent"),
        (["append", "order-1", "--type", "X", "-e", "latest"], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "-e", "-1"], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "-e", "1.5"], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "-e", str(2**63)], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "-e", "9" * 5000], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "-e", "1_0"], "InvalidExpectedVersion"),
        (["append", "order-1", "--type", "X", "--data", "\udcff"], "not valid JSON"),
        (["append", "order-\u200b1", "--type", "X"], "InvalidStreamName"),
        (["append", "order-1", "--type", "X", "-e", "stream_exists"], "WrongExpectedVersion"),
        (["append", "order-1", "--type", "X", "--id", "not-a-uuid"], "not a UUID"),
        (["read", "bad name"], "InvalidStreamName"),
        (["read", "order-1", "--limit", "-1"], "InvalidInput: invalid --limit -1: it must be 0"),
        (["read", "order-1", "--from", "-3"], "InvalidInput: invalid --from -3: it must be 0"),
        (["log", "--from", "-5"], "InvalidInput: invalid --from -5: it must be 0 or more"),
        (["log", "--limit", "-2"], "InvalidInput: invalid --limit -2: it must be 0 or more"),
    ],
)
def test_bad_input_is_one_line_on_stderr(url: str, args: list[str], fragment: str) -> None:
    ok(url, "migrate-schema")  # the store exists: commands that read refuse a missing one
    assert fragment in one_line_error(invoke(url, *args))
    # Bad input changes nothing.
    assert ok(url, "--json", "log").stdout == ""


def test_json_mode_errors_are_one_json_line(url: str) -> None:
    result = invoke(url, "--json", "append", "order-1", "--type", "X", "-e", "3")
    assert result.exit_code == 1 and result.stdout == ""
    [line] = result.stderr.splitlines()
    error = msgspec.json.decode(line)
    assert error["error"] == "WrongExpectedVersion"
    assert "expected 3, actual no_stream" in error["message"]


def test_version(url: str) -> None:
    assert ok(url, "--version").stdout.strip() == f"tidelog {tidelog.__version__}"


def test_wrong_expected_version_reports_the_actual_version(url: str) -> None:
    append(url, "order-1", "OrderPlaced")
    append(url, "order-1", "OrderPaid")
    message = one_line_error(invoke(url, "append", "order-1", "--type", "X", "-e", "0"))
    assert "WrongExpectedVersion" in message and "actual 1" in message


def test_deleted_stream(url: str) -> None:
    append(url, "order-1", "OrderPlaced")
    asyncio.run(_delete(url, "order-1"))
    assert "StreamDeleted" in one_line_error(invoke(url, "read", "order-1"))
    assert "StreamDeleted" in one_line_error(invoke(url, "append", "order-1", "--type", "X"))
    [info] = json_lines(ok(url, "--json", "streams"))
    assert info["deleted"] is True


@pytest.mark.parametrize(
    "bad_url", ["foo://x", "no-scheme", "sqlite://host/x.db", "sqlite:///x.db?no_such_option=1"]
)
def test_bad_store_url(bad_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert "InvalidURL" in one_line_error(invoke(bad_url, "streams"))
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_exit_non_zero(url: str) -> None:
    result = invoke(url, "append", "order-1")  # no --type
    assert result.exit_code == 2
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------- extensions


def _write_module(root: Path, name: str, source: str) -> None:
    (root / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")


def test_extension_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tag = uuid4().hex[:8]
    good, absent, broken = f"tlx_good_{tag}", f"tlx_absent_{tag}", f"tlx_broken_{tag}"
    _write_module(
        tmp_path,
        good,
        """
        import typer
        import tidelog
        from tidelog.cli import run, settings

        def register(app: typer.Typer) -> None:
            @app.command()
            def hello(ctx: typer.Context) -> None:
                async def body() -> None:
                    raise tidelog.NotSupported("test", "hello", settings(ctx).store)
                run(body())
        """,
    )
    _write_module(tmp_path, broken, f"import no_such_dependency_{tag}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    target = typer.Typer(cls=cli._Group)

    @target.callback()
    def _root() -> None:
        """A second command so Typer keeps a group."""

    # `import NAME` under the guard `tidelog.cli` puts around each command module.
    monkeypatch.setattr(cli, "_COMMAND_MODULES", [])
    for name in (absent, good):
        with cli._command_module(name):
            importlib.import_module(name)
    assert [m.__name__ for m in cli._COMMAND_MODULES] == [good]  # the absent one is skipped
    cli._register_extensions(target)
    result = CliRunner().invoke(target, ["hello"])
    # An extension's TidelogError goes through the same one-line handler.
    assert result.exit_code == 1 and "NotSupported" in result.stderr
    assert "Traceback" not in result.output

    monkeypatch.setattr(cli, "_COMMAND_MODULES", [])
    with pytest.raises(ModuleNotFoundError) as caught, cli._command_module(broken):
        importlib.import_module(broken)
    assert caught.value.name == f"no_such_dependency_{tag}"


# --------------------------------------------------------------------------- processes


def _run(args: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
        **kwargs,
    )


def test_python_dash_m_tidelog_help() -> None:
    done = _run(["-m", "tidelog", "--help"])
    assert done.returncode == 0, done.stderr
    for command in ("append", "read", "log", "tail", "streams", "demo"):
        assert command in done.stdout


def test_python_dash_m_tidelog_error_is_one_line(url: str) -> None:
    done = _run(["-m", "tidelog", "--store", url, "read", "no good"])
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert "Traceback" not in done.stderr


def test_a_reader_that_goes_away_is_no_error(url: str) -> None:
    ok(url, "demo", "--events", "1000", "--store", url)  # about 250 KB of JSON lines
    with subprocess.Popen(
        [sys.executable, "-m", "tidelog", "--store", url, "--json", "log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert msgspec.json.decode(proc.stdout.readline())["position"] == 1
        proc.stdout.close()  # like `tidelog log | head -1`
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 141
    assert b"Traceback" not in err and err == b""


# The optional dependencies of the extras: a base install (`pip install -e .`)
# has none of them, and the README's first command must still work there.
_EXTRAS = (
    "asyncpg",
    "nats",
    "litestar",
    "uvicorn",
    "jwt",
    "prometheus_client",
    "httpx",
    "opentelemetry",
    "cryptography",
    "wsproto",
    "websockets",
    "hypothesis",
)


def test_base_install_without_extras_runs_the_demo(tmp_path: Path) -> None:
    script = tmp_path / "base.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import importlib.abc, sys

            class HideExtras(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {_EXTRAS!r}:
                        raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
                    return None

            sys.meta_path.insert(0, HideExtras())
            from tidelog.cli import main
            sys.argv = ["tidelog", "demo", "--events", "100"]
            main()
            """
        ),
        encoding="utf-8",
    )
    done = _run([str(script)], cwd=tmp_path, env={**os.environ, "TIDELOG_STORE": "unused://"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "matches what was written" in done.stdout


# --------------------------------------------------------------------------- a secured server (#14)

SECRET = "s3cret-key-of-the-cli-test"


async def _cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """The CLI in a thread: the server under test runs on this test's event loop."""
    return await asyncio.to_thread(CliRunner().invoke, app, list(args), env=env)


async def test_cli_passes_a_token_to_a_secured_server(serve: Any, tmp_path: Path) -> None:
    server, store = await serve(
        keys={SECRET: "ops"}, grants=("ops=read:*", "ops=write:category:order")
    )
    await store.append("order-1", [tidelog.NewEvent(type="Placed", data=b"{}")])
    base = f"http://127.0.0.1:{server.port}"
    # without a token: refused, in one line
    refused = await _cli("--store", base, "streams")
    assert "AccessDenied" in one_line_error(refused)
    # --token, TIDELOG_TOKEN, --token-file and TIDELOG_TOKEN_FILE all reach the server
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n", encoding="utf-8")
    for args, env in [
        (["--token", SECRET], None),
        ([], {"TIDELOG_TOKEN": SECRET}),
        (["--token-file", str(token_file)], None),
        ([], {"TIDELOG_TOKEN_FILE": str(token_file)}),
        # typed beats the environment
        (["--token", SECRET], {"TIDELOG_TOKEN_FILE": str(tmp_path / "absent")}),
    ]:
        listed = await _cli("--store", base, *args, "--json", "streams", env=env)
        assert listed.exit_code == 0, (args, env, listed.stderr)
        assert [s["name"] for s in json_lines(listed)] == ["order-1"]
    appended = await _cli("--store", base, "--token", SECRET, "append", "order-1", "-t", "Paid")
    assert appended.exit_code == 0, appended.stderr
    assert await store.last_position() == 2


async def test_the_library_takes_a_token_file_or_the_environment(
    serve: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = await serve(keys={SECRET: "ops"}, grants=("ops=read:*",))
    base = f"http://127.0.0.1:{server.port}"
    token_file = tmp_path / "token"
    token_file.write_text(f"{SECRET}\n", encoding="utf-8")
    async with tidelog.connect(base, token_file=str(token_file)) as remote:
        assert [s async for s in remote.list_streams()] == []
    monkeypatch.setenv("TIDELOG_TOKEN", SECRET)
    async with tidelog.connect(base) as remote:
        assert await remote.last_position() == 0


@pytest.mark.parametrize(
    "how",
    ["url", "wrong-token", "token-with-newline", "empty-file", "missing-file", "help"],
)
async def test_no_message_shows_the_credential(serve: Any, tmp_path: Path, how: str) -> None:
    server, _ = await serve(keys={SECRET: "ops"}, grants=("ops=read:*",))
    base = f"http://127.0.0.1:{server.port}"
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    args, env = {
        "url": ([f"--store={base}/?token={SECRET}", "streams"], None),
        "wrong-token": ([f"--store={base}", "streams"], {"TIDELOG_TOKEN": SECRET + "x"}),
        "token-with-newline": ([f"--store={base}", "--token", SECRET + "\nX: y", "streams"], None),
        "empty-file": ([f"--store={base}", "--token-file", str(empty), "streams"], None),
        "missing-file": (
            [f"--store={base}", "--token-file", str(tmp_path / "no"), "streams"],
            None,
        ),
        "help": (["--help"], {"TIDELOG_TOKEN": SECRET}),
    }[how]
    result = await _cli(*args, env=env)
    assert SECRET not in result.output
    if how != "help":
        message = one_line_error(result)
        assert ("AccessDenied" if how == "wrong-token" else "InvalidInput") in message or (
            "InvalidURL" in message
        )
    else:
        assert "TIDELOG_TOKEN" in result.stdout and "--token-file" in result.stdout


# --------------------------------------------------------------------------- missing stores (#14)

_PROJECTION_MODULE = """
from tidelog.projections import SQLiteProjection

class MissingStoreTotals(SQLiteProjection):
    name = "missing_store_totals"
    tables = {}
"""


@pytest.mark.parametrize(
    "args",
    [
        ["read", "order-1"],
        ["log"],
        ["tail", "--count", "1"],
        ["streams"],
        ["groups"],
        ["dlq", "list", "billing"],
        ["dlq", "show", "billing", str(uuid4())],
        ["schema", "list"],
        ["schema", "show", "OrderPlaced"],
        ["projections", "status", "--module", "tlx_missing_store_projections"],
        ["copy", "{missing}", "sqlite:///{tmp}/copy.db"],
    ],
    ids=lambda a: " ".join(a[:2]),
)
def test_commands_that_read_refuse_a_store_that_does_not_exist(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    (tmp_path / "tlx_missing_store_projections.py").write_text(_PROJECTION_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # relative paths resolve here
    missing = "sqlite:///no/such/dir/typo.db"
    args = [a.format(missing=missing, tmp=tmp_path) for a in args]
    message = one_line_error(invoke(missing, *args))
    assert "InvalidURL" in message and "no store at" in message
    assert str(work / "no" / "such" / "dir" / "typo.db") in message  # the absolute path
    assert list(work.iterdir()) == []  # no directory, no file
    assert not (tmp_path / "copy.db").exists()


def test_the_default_store_from_another_directory_is_refused_by_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TIDELOG_STORE", raising=False)
    result = CliRunner().invoke(app, ["streams"])
    assert str(tmp_path / "tidelog-data" / "tidelog.db") in one_line_error(result)
    # writing creates the store as before, and then reading finds it
    assert CliRunner().invoke(app, ["append", "order-1", "-t", "X"]).exit_code == 0
    assert "1 stream\n" in CliRunner().invoke(app, ["streams"]).stdout


def test_the_library_creates_unless_told_the_store_must_exist(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/lib.db"

    async def main() -> None:
        with pytest.raises(tidelog.InvalidURL, match="no store at"):
            await tidelog.connect(url, must_exist=True)
        assert not (tmp_path / "lib.db").exists()
        async with tidelog.connect(url) as store:  # creates it, as always
            await store.append("order-1", [tidelog.NewEvent(type="X")])
        async with tidelog.connect(url, must_exist=True) as store:
            assert await store.last_position() == 1
        async with tidelog.connect("memory://", must_exist=True) as store:
            assert await store.last_position() == 0  # only files are made by mistake

    asyncio.run(main())


@pytest.mark.parametrize("same", ["{url}", "sqlite:///{rel}", "sqlite:///{link}"])
def test_copy_refuses_the_source_as_destination(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, same: str
) -> None:
    append(url, "order-1", "OrderPlaced")
    (tmp_path / "link.db").symlink_to(tmp_path / "cli.db")
    monkeypatch.chdir(tmp_path)
    destination = same.format(url=url, rel="cli.db", link=tmp_path / "link.db")
    message = one_line_error(invoke(url, "copy", url, destination))
    assert "the destination is the source" in message
    assert len(json_lines(ok(url, "--json", "log"))) == 1


def test_migrate_schema_names_the_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    [result] = json_lines(ok("sqlite:///rel.db", "--json", "migrate-schema"))
    assert result["store"] == f"sqlite:///{tmp_path}/rel.db"


def test_demo_names_the_absolute_path_of_its_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo", "--events", "100", "--store", "sqlite:///d.db"])
    assert result.exit_code == 0, result.stderr
    absolute = f"sqlite:///{tmp_path}/d.db"
    assert absolute in result.stderr  # the first line, before the progress
    assert f"explore it: tidelog --store {absolute} read" in " ".join(result.stdout.split())


# --------------------------------------------------------------------------- words (#14 item 9)


def test_messages_use_the_words_of_the_command_line(url: str) -> None:
    append(url, "order-1", "OrderPlaced")
    conflict = one_line_error(invoke(url, "append", "order-1", "-t", "X", "-e", "no-stream"))
    assert "expected no_stream, actual 0" in conflict and "StreamState" not in conflict
    bad = one_line_error(invoke(url, "append", "order-1", "-t", "X", "-e", "latest"))
    assert "use any, no_stream, stream_exists or an integer >= 0" in bad
    assert "NO_STREAM" not in bad


def test_python_messages_use_python_names(tmp_path: Path) -> None:
    async def main() -> None:
        async with tidelog.connect(f"sqlite:///{tmp_path}/p.db") as store:
            await store.append("order-1", [tidelog.NewEvent(type="X")])
            with pytest.raises(tidelog.WrongExpectedVersion) as caught:
                await store.append("order-1", [tidelog.NewEvent(type="X")], tidelog.NO_STREAM)
            assert "expected NO_STREAM, actual 0" in str(caught.value)
            with pytest.raises(tidelog.WrongExpectedVersion) as caught:
                await store.append("order-2", [tidelog.NewEvent(type="X")], 4)
            assert "expected 4, actual None" in str(caught.value)
            with pytest.raises(tidelog.InvalidExpectedVersion) as bad:
                await store.append("order-1", [tidelog.NewEvent(type="X")], -2)
            assert "use ANY, NO_STREAM, STREAM_EXISTS or an int >= 0" in str(bad.value)

    asyncio.run(main())


# ------------------------------------------------------------------ first hour (#14 item 10)


def test_demo_in_memory_does_not_suggest_reading_it_later() -> None:
    result = CliRunner().invoke(app, ["demo", "--events", "100", "--store", "memory://"])
    assert result.exit_code == 0, result.stderr
    words = " ".join(result.stdout.split())
    assert "--store memory://" not in words
    assert "the store was in memory and is gone" in words


def test_append_reads_data_from_stdin_or_a_file(url: str, tmp_path: Path) -> None:
    piped = CliRunner().invoke(
        app, ["--store", url, "append", "order-1", "-t", "A", "--data", "-"], input='{"n": 1}\n'
    )
    assert piped.exit_code == 0, piped.stderr
    (tmp_path / "event.json").write_text('{"n": 2, "name": "caf\u00e9"}\n', encoding="utf-8")
    append(url, "order-1", "B", "--data", f"@{tmp_path / 'event.json'}")
    events = json_lines(ok(url, "--json", "read", "order-1"))
    assert [e["data"] for e in events] == [{"n": 1}, {"n": 2, "name": "caf\u00e9"}]
    missing = one_line_error(invoke(url, "append", "order-1", "-t", "C", "-d", "@/no/such.json"))
    assert "cannot read --data file '/no/such.json'" in missing
    bad = CliRunner().invoke(
        app, ["--store", url, "append", "order-1", "-t", "C", "-d", "-"], input="{nope"
    )
    assert "not valid JSON" in one_line_error(bad)
    assert len(json_lines(ok(url, "--json", "read", "order-1"))) == 2


def test_json_after_the_command(filled: str) -> None:
    after = json_lines(ok(filled, "read", "order-1", "--json", "--limit", "2"))
    assert [e["version"] for e in after] == [0, 1]
    assert json_lines(ok(filled, "streams", "--json")) == json_lines(
        ok(filled, "--json", "streams")
    )
    failed = invoke(filled, "append", "order-1", "-t", "X", "-e", "0", "--json")
    assert failed.exit_code == 1
    assert msgspec.json.decode(failed.stderr)["error"] == "WrongExpectedVersion"
    # after `--`, `--json` is an argument like any other
    assert "InvalidStreamName" in one_line_error(invoke(filled, "read", "--", "--json"))


@pytest.mark.parametrize("command", [[], ["read"], ["dlq", "list"], ["tail"]])
def test_help_shows_flags_without_a_value(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "<bool>" not in result.stdout
    assert "--help" in result.stdout


def test_serve_on_a_port_in_use_is_one_error_line(tmp_path: Path) -> None:
    """Running the README's first command while a server already listens (a second
    terminal, a server left running) printed a traceback ending in `OSError: [Errno 98]`
    (the #14 walk-through); and the store is not opened, so not created."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = tmp_path / "served.db"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "tidelog",
                "serve",
                "--port",
                str(port),
                "--store",
                f"sqlite:///{store}",
            ],
            check=False,
            cwd=tmp_path,
            capture_output=True,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
            env={**os.environ, "COLUMNS": "80"},
        )
    assert done.returncode == 1, done
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: InvalidInput: cannot listen on 127.0.0.1:{port}: Address already in use"
        " (another server? give another --port)"
    ], done.stderr
    assert "Traceback" not in done.stderr and not store.exists()


def test_serve_banner_keeps_paths_and_urls_whole_at_80_columns(tmp_path: Path) -> None:
    deep = tmp_path / "a-rather-long-directory-name" / "and-another-one-below-it"
    deep.mkdir(parents=True)
    store = deep / "served.db"
    with subprocess.Popen(
        [sys.executable, "-m", "tidelog", "serve", "--port", "0", "--store", f"sqlite:///{store}"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "COLUMNS": "80", "TERM": "xterm"},
    ) as proc:
        assert proc.stderr is not None
        lines: list[str] = []
        try:
            with ThreadPoolExecutor(1) as pool:
                while not any("authenticate with" in line for line in lines):
                    line = pool.submit(proc.stderr.readline).result(timeout=60)
                    assert line, f"server exited: {lines}"
                    lines.append(line)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    [serving] = [line for line in lines if line.startswith("tidelog serving")]
    assert f"sqlite:///{store} at http://127.0.0.1:" in serving  # whole, on one line
    [api] = [line for line in lines if "API http" in line]
    assert re.search(r"API http://127\.0\.0\.1:\d+/v1, OpenAPI http://127\.0\.0\.1:\d+/schema", api)
    assert any(len(line.rstrip("\n")) > 80 for line in lines)  # not cut at the edge


# ---------------------------------------------------------------------- status (#14 item 15)


async def _group_with_lag_and_parked(url: str) -> None:
    from tidelog.consumers._dlq import dlq_stream, parked_entry

    async with tidelog.connect(url) as store:
        m = await store.join_group("billing", "order", "m1", lease=3600)
        for i in range(3):
            await store.append(f"order-{i}", [tidelog.NewEvent(type="Placed")])
        [first] = [e async for e in store.read_all(limit=1)]
        p = tidelog.partition_of(first.stream, store.partition_count)
        await store.commit(
            "billing", "order", p, first.position, member="m1", generation=m.generation
        )
        entry = parked_entry("billing", first, handler="h", error=RuntimeError("no"), attempts=2)
        await store.append(dlq_stream("billing"), [entry])


def test_status_reports_engine_head_lag_and_parked(url: str) -> None:
    asyncio.run(_group_with_lag_and_parked(url))
    [report] = json_lines(ok(url, "--json", "status"))
    assert report["engine"] == "sqlite" and report["healthy"] is True
    assert report["head"] == 4  # three events and the DLQ entry
    assert report["groups"] == [
        {
            "group": "billing",
            "category": "order",
            "members": 1,
            "lag": 2,
            "parked": 1,
            "held": 0,
            "retrying": 0,
        }
    ]
    assert report["store"].endswith("/cli.db") and report["problems"] == []
    human = ok(url, "status").stdout
    assert "healthy" in human and "billing" in human and "sqlite" in human


async def _parked_held_and_retrying(url: str) -> None:
    """Three streams in trouble: one parked, one parked with a second event held behind
    it, one parked whose retry was asked."""
    from tidelog.consumers._dlq import dlq_stream, held_entry, parked_entry, retry_parked

    async with tidelog.connect(url) as store:
        await store.join_group("billing", "order", "m1", lease=3600)
        for stream in ("order-1", "order-2", "order-3"):
            await store.append(stream, [tidelog.NewEvent(type="Placed") for _ in range(2)])
        events = {(e.stream, e.version): e async for e in store.read_all()}
        entries = [
            parked_entry("billing", events[s, 0], handler="h", error=RuntimeError(), attempts=3)
            for s in ("order-1", "order-2", "order-3")
        ]
        entries.append(held_entry("billing", events["order-2", 1], handler="h"))
        await store.append(dlq_stream("billing"), entries)
        await retry_parked(store, "billing", events["order-3", 0].id)


def test_status_shows_parked_held_and_retrying_apart(url: str) -> None:
    """Held events wait behind a parked one and retrying ones are on their way: neither
    is a failure an operator must handle, so `parked` (and `--max-parked`) count only
    the failed ones, as the dashboard does."""
    asyncio.run(_parked_held_and_retrying(url))
    [report] = json_lines(ok(url, "--json", "status"))
    [group] = report["groups"]
    assert (group["parked"], group["held"], group["retrying"]) == (2, 1, 1)
    human = ok(url, "status").stdout
    assert "held" in human and "retrying" in human
    assert invoke(url, "status", "--max-parked", "2").exit_code == 0
    result = invoke(url, "status", "--max-parked", "1")
    assert result.exit_code == 1 and "2 parked events" in result.stderr


@pytest.mark.parametrize(
    ("limits", "problem"),
    [(["--max-parked", "0"], "1 parked events"), (["--max-lag", "1"], "lags 2 events")],
)
def test_status_exits_non_zero_past_a_threshold(url: str, limits: list[str], problem: str) -> None:
    asyncio.run(_group_with_lag_and_parked(url))
    result = invoke(url, "status", *limits)
    assert result.exit_code == 1
    assert "UNHEALTHY" in result.stdout and "billing" in result.stdout  # the report still shows
    [line] = result.stderr.splitlines()
    assert line.startswith("unhealthy: group 'billing'") and problem in line
    assert invoke(url, "status", "--max-lag", "2", "--max-parked", "1").exit_code == 0


def test_groups_says_when_there_are_none_and_refuses_an_unknown_group(url: str) -> None:
    """An empty table frame for a store without groups, and again for a mistyped
    `--group` (the #14 walk-through); `dlq list` already refused an unknown group."""
    ok(url, "migrate-schema")  # a store, with no group yet
    assert ok(url, "groups").stdout.startswith("no consumer groups yet")
    assert json_lines(ok(url, "--json", "groups")) == []
    asyncio.run(_group_with_lag_and_parked(url))
    message = one_line_error(invoke(url, "groups", "--group", "biling"))
    assert message == "error: InvalidInput: unknown consumer group 'biling' (groups: billing)"
    assert "billing" in ok(url, "groups", "--group", "billing").stdout


def test_status_and_dlq_list_pass_over_the_scavengers_group(url: str) -> None:
    """Once the scavenger has run (`retention set` on a served store) the store has the
    system group `$scavenger`, a lease that never checkpoints: `status` failed on it
    with `InvalidStreamName: invalid stream name '$dlq-$scavenger'`, and would have
    counted each rule change as its lag (the #14 walk-through)."""
    from tidelog.engines._kit.retention import SCAVENGER_GROUP

    async def scavenger_joins() -> None:
        async with tidelog.connect(url) as store:
            await store.join_group(SCAVENGER_GROUP, "$retention", "scavenger-1", lease=3600)

    ok(url, "retention", "set", "--category", "order", "--max-age", "7d")
    asyncio.run(scavenger_joins())
    [report] = json_lines(ok(url, "--json", "status", "--max-lag", "0"))
    assert report["healthy"] is True and report["groups"] == []
    assert "nothing parked" in ok(url, "dlq", "list", "$scavenger").stdout


def test_status_of_a_missing_or_unreachable_store_is_one_error(tmp_path: Path) -> None:
    assert "no store at" in one_line_error(invoke(f"sqlite:///{tmp_path}/none.db", "status"))
    with socket.socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    assert "StoreUnavailable" in one_line_error(invoke(f"http://127.0.0.1:{port}", "status"))
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        message = one_line_error(invoke(url, "status", "--timeout", "0.5"))
    assert "StoreUnavailable" in message and "gave no answer within 0.5 s" in message


async def test_status_of_a_server(serve: Any) -> None:
    server, store = await serve(keys={SECRET: "ops"}, grants=("ops=admin:*",))
    await store.append("order-1", [tidelog.NewEvent(type="Placed")])
    base = f"http://127.0.0.1:{server.port}"
    result = await _cli("--store", base, "--json", "status", env={"TIDELOG_TOKEN": SECRET})
    assert result.exit_code == 0, result.stderr
    [report] = json_lines(result)
    assert report["engine"] == "remote (memory behind the server)"
    assert (report["head"], report["healthy"]) == (1, True)
    assert "AccessDenied" in one_line_error(await _cli("--store", base, "status"))


async def test_a_server_that_wants_a_key_the_cli_did_not_give_says_where_it_goes(
    serve: Any,
) -> None:
    """`error: AccessDenied: authentication required` left a newcomer guessing; the
    line now names the options. A wrong key is not told to give one (#14 walk-through)."""
    server, _ = await serve(keys={SECRET: "ops"}, grants=("ops=admin:*",))
    base = f"http://127.0.0.1:{server.port}"
    message = one_line_error(await _cli("--store", base, "streams"))
    assert message.startswith("error: AccessDenied: authentication required")
    assert "--token-file PATH, TIDELOG_TOKEN or --token" in message
    wrong = one_line_error(await _cli("--store", base, "--token", "nope", "streams"))
    assert "invalid credentials" in wrong and "--token" not in wrong
