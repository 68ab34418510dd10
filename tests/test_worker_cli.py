"""`tidelog worker`, `tidelog groups` and `tidelog dlq ...` against a real SQLite file.

The worker runs as a real process (signals, exit codes, logs); the other
commands run in-process through Typer's `CliRunner`.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from typing import Any

import pytest
from typer.testing import CliRunner

import tidelog
from tidelog.cli import app as cli_app

WORKERS = pathlib.Path(__file__).parent / "support" / "workers"
TIDELOG = str(pathlib.Path(sys.executable).parent / "tidelog")


def cli(url: str, *args: str) -> list[dict[str, Any]]:
    result = CliRunner().invoke(cli_app, ["--store", url, "--json", *args])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


async def _append(url: str, events: dict[str, list[bytes]]) -> None:
    async with tidelog.connect(url) as store:
        for stream, datas in events.items():
            await store.append(stream, [tidelog.NewEvent(type="Placed", data=d) for d in datas])


async def _invoices(url: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    async with tidelog.connect(url) as store:
        async for info in store.list_streams(category="invoice"):
            out[info.name] = [int(e.data) async for e in store.read_stream(info.name)]
    return out


def wait_until(check: Any, what: str, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def worker_env(tmp_path: pathlib.Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/w.db?partitions=4"
    fail = tmp_path / "fail"
    fail.touch()
    return dict(os.environ, FLAKY_STORE=url, FAIL_FILE=str(fail), URL=url)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[str, float]:
    """The worker's `/metrics`, as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def start_worker(env: dict[str, str], log: pathlib.Path, *args: str) -> subprocess.Popen[bytes]:
    with log.open("ab") as err:
        return subprocess.Popen(
            [TIDELOG, "worker", "flaky_app:app", "--concurrency", "4", *args],
            cwd=WORKERS,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


@pytest.mark.slow
def test_worker_groups_and_dlq_end_to_end(
    worker_env: dict[str, str], tmp_path: pathlib.Path
) -> None:
    url = worker_env["URL"]
    asyncio.run(_append(url, {f"order-{i}": [b"ok", b"ok", b"ok"] for i in range(8)}))
    asyncio.run(_append(url, {"order-3": [b"bad", b"ok"]}))
    log = tmp_path / "worker.log"
    port = free_port()
    worker = start_worker(worker_env, log, "--metrics-port", str(port))
    try:
        wait_until(lambda: cli(url, "groups"), "the worker joined its group")
        wait_until(lambda: len(cli(url, "dlq", "list", "billing")) == 2, "parked + held in the DLQ")
        parked = cli(url, "dlq", "list", "billing")
        assert [(p["stream"], p["version"], p["status"]) for p in parked] == [
            ("order-3", 3, "parked"),
            ("order-3", 4, "held"),
        ]
        assert parked[0]["attempts"] == 2 and parked[0]["error_type"] == "RuntimeError"
        shown = cli(url, "dlq", "show", "billing", parked[0]["event_id"])[0]
        assert "card declined" in shown["error"]
        assert shown["event"]["stream"] == "order-3"
        invoices = asyncio.run(_invoices(url))
        assert invoices["invoice-3"] == [0, 1, 2]
        assert all(invoices[f"invoice-{i}"] == [0, 1, 2] for i in range(8))

        # groups: one member owns all partitions; lag 0 once everything is committed
        def settled() -> list[dict[str, Any]] | None:
            rows = cli(url, "groups")
            return rows if rows and all(r["lag"] == 0 for r in rows) else None

        rows = wait_until(settled, "checkpoints at the head")
        assert {r["partition"] for r in rows} == set(range(4))

        # the worker's own metrics: its Stats, as Prometheus counters
        metrics = scrape(port)
        app = '{app="flaky"}'
        assert metrics[f"tidelog_worker_events_handled_total{app}"] == 24  # 8 streams x 3
        assert metrics[f"tidelog_worker_parked_total{app}"] == 1
        assert metrics[f"tidelog_worker_held_total{app}"] == 1
        assert metrics[f"tidelog_worker_retries_total{app}"] == 1  # max_attempts=2
        assert metrics[f"tidelog_worker_partitions_started_total{app}"] == 4
        assert metrics[f"tidelog_worker_commits_total{app}"] >= 4
        assert metrics[f"tidelog_worker_refused_commits_total{app}"] == 0
        assert metrics[f'tidelog_build_info{{version="{tidelog.__version__}"}}'] == 1
        assert len({r["owner"] for r in rows}) == 1 and rows[0]["owner"]
        assert all(r["group"] == "billing" and r["category"] == "order" for r in rows)

        # fix the cause, retry: the parked event and the held one go through the handler
        pathlib.Path(worker_env["FAIL_FILE"]).unlink()
        cli(url, "dlq", "retry", "billing", parked[0]["event_id"])
        wait_until(
            lambda: asyncio.run(_invoices(url))["invoice-3"] == [0, 1, 2, 3, 4], "retried events"
        )
        assert cli(url, "dlq", "list", "billing") == []
        assert {p["status"] for p in cli(url, "dlq", "list", "billing", "--all")} == {"resolved"}

        # SIGTERM: finishes, commits, leaves the group at once, exits 0
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0
        rows = cli(url, "groups")
        assert all(r["owner"] is None and r["members"] == [] for r in rows)
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        events = [line["event"] for line in lines]
        for expected in ("worker_started", "joined", "parked", "signal", "left", "worker_stopped"):
            assert expected in events, expected
        assert all({"ts", "level", "logger", "pid"} <= line.keys() for line in lines)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_dlq_commands_refuse_unknown_events(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    result = CliRunner().invoke(
        cli_app, ["--store", url, "dlq", "retry", "billing", "3f1c2b8e-0000-4000-8000-000000000000"]
    )
    assert result.exit_code == 1
    assert "InvalidInput" in result.stderr
    result = CliRunner().invoke(cli_app, ["--store", url, "dlq", "drop", "billing", "not-a-uuid"])
    assert result.exit_code == 1
    assert cli(url, "groups") == []


def test_worker_refuses_a_target_that_is_not_an_app(tmp_path: pathlib.Path) -> None:
    result = CliRunner().invoke(
        cli_app, ["--store", f"sqlite:///{tmp_path}/x.db", "worker", "tidelog:connect"]
    )
    assert result.exit_code == 1
    assert "not a tidelog.App" in result.stderr


def test_worker_refuses_a_metrics_port_in_use(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(WORKERS))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            cli_app,
            [
                "--store",
                f"sqlite:///{tmp_path}/x.db",
                "worker",
                "flaky_app:app",
                "--metrics-port",
                str(port),
            ],
        )
    assert result.exit_code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert not (tmp_path / "x.db").exists()  # refused before the store was opened


def test_every_stats_counter_is_exported() -> None:
    """A counter added to `Stats` gets its metric (the gauge is the one non-counter)."""
    from dataclasses import fields

    from tidelog.consumers._metrics import COUNTERS
    from tidelog.consumers._stats import Stats

    assert set(COUNTERS) == {f.name for f in fields(Stats)} - {"peak_in_flight", "paused_handlers"}


@pytest.mark.parametrize(
    ("target", "source", "expected"),
    [
        ("nosuchmodule_tlx:app", None, "cannot import 'nosuchmodule_tlx': ModuleNotFoundError"),
        (
            "tlx_raises:app",
            "raise RuntimeError('the config is missing\\nsecond line')\n",
            "cannot import 'tlx_raises': RuntimeError: the config is missing",
        ),
        (
            "tlx_needs:app",
            "import tlx_no_such_dependency\n",
            "cannot import 'tlx_needs': ModuleNotFoundError: No module named "
            "'tlx_no_such_dependency'",
        ),
        ("tlx_syntax:app", "def (:\n", "cannot import 'tlx_syntax': SyntaxError"),
        (
            "tlx_factory:make",
            "def make():\n    raise ValueError('no store configured')\n",
            "tlx_factory:make() raised ValueError: no store configured",
        ),
    ],
    ids=["missing", "raises", "missing-dependency", "syntax-error", "factory-raises"],
)
def test_worker_reports_a_broken_target_in_one_line(
    tmp_path: pathlib.Path, target: str, source: str | None, expected: str
) -> None:
    if source is not None:
        (tmp_path / f"{target.partition(':')[0]}.py").write_text(source, encoding="utf-8")
    done = subprocess.run(
        [TIDELOG, "--store", f"sqlite:///{tmp_path}/x.db", "worker", target],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith("error: InvalidInput: ") and expected in line, line
    assert not (tmp_path / "x.db").exists()


async def _park(url: str, group: str, error: BaseException) -> str:
    """Park one event of `order-7` in `group`, as a worker would; return the event's id."""
    from tidelog.consumers._dlq import dlq_stream, parked_entry

    async with tidelog.connect(url) as store:
        await store.join_group(group, "order", "m1")
        await store.append("order-7", [tidelog.NewEvent(type="Placed", data=b"{}")])
        [event] = [e async for e in store.read_stream("order-7")]
        entry = parked_entry(group, event, handler="billing.charge", error=error, attempts=3)
        await store.append(dlq_stream(group), [entry])
        return str(event.id)


def test_dlq_list_shows_whole_ids_in_a_narrow_terminal(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    error = RuntimeError("card declined by the issuer: " + "do not honour " * 20)
    event_id = asyncio.run(_park(url, "billing", error))
    listed = CliRunner().invoke(
        cli_app, ["--store", url, "dlq", "list", "billing"], env={"COLUMNS": "80"}
    )
    assert listed.exit_code == 0, listed.output
    assert event_id in listed.stdout  # whole, never cut
    first = listed.stdout.splitlines()[0]
    assert first.startswith(event_id) and "order-7@0" in first and "parked" in first
    assert "card declined by the issuer" in listed.stdout
    # the id as listed is what show/retry/drop take
    shown = cli(url, "dlq", "show", "billing", first.split()[0])
    assert shown[0]["event_id"] == event_id
    dropped = CliRunner().invoke(cli_app, ["--store", url, "dlq", "drop", "billing", event_id])
    assert dropped.exit_code == 0, dropped.output
    assert (
        "nothing parked in group billing"
        in CliRunner().invoke(cli_app, ["--store", url, "dlq", "list", "billing"]).stdout
    )


def test_dlq_list_of_an_unknown_group_says_so(tmp_path: pathlib.Path) -> None:
    url = f"sqlite:///{tmp_path}/x.db"
    asyncio.run(_park(url, "billing", RuntimeError("no")))
    result = CliRunner().invoke(cli_app, ["--store", url, "dlq", "list", "biling"])
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip() == (
        "error: InvalidInput: unknown consumer group 'biling' (groups: billing)"
    )
    assert len(cli(url, "dlq", "list", "billing")) == 1
