"""Retention beyond the conformance suite: the CLI, the HTTP routes' access rules,
`tidelog copy` carrying the rules, and the background scavenger.

The rules themselves are tested on every engine by `tidelog.testing.retention`
(run from each engine's test module).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

import tidelog
from support.server import ADMIN_KEY
from tidelog.cli import app
from tidelog.copy import copy_store
from tidelog.retention import RetentionPolicy
from tidelog.testing.conformance import WAIT, ev

pytestmark = pytest.mark.asyncio

RUN_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"


def cli(url: str, *args: str) -> Result:
    result = CliRunner().invoke(app, ["--store", url, *args])
    return result


async def _fill(url: str, stream: str, count: int) -> None:
    async with tidelog.connect(url) as store:
        await store.append(stream, [ev() for _ in range(count)])


async def _versions(url: str, stream: str) -> list[int]:
    async with tidelog.connect(url) as store:
        return [e.version async for e in store.read_stream(stream)]


async def test_cli_set_show_scavenge_clear(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    await _fill(url, "order-1", 5)
    result = await asyncio.to_thread(
        cli, url, "retention", "set", "-c", "order", "--max-count", "2"
    )
    assert result.exit_code == 0, result.output
    assert "category order: max_count=2" in result.output
    shown = await asyncio.to_thread(cli, url, "--json", "retention", "show")
    assert [json.loads(line) for line in shown.output.splitlines()] == [
        {"kind": "category", "name": "order", "policy": {"max_count": 2}}
    ]
    assert await _versions(url, "order-1") == [3, 4]
    scavenged = await asyncio.to_thread(cli, url, "--json", "scavenge")
    report = json.loads(scavenged.output)
    assert (report["ran"], report["deleted"], report["streams"]) == (True, 3, 1)
    cleared = await asyncio.to_thread(cli, url, "retention", "clear", "--category", "order")
    assert "category order: cleared" in cleared.output
    assert await _versions(url, "order-1") == [3, 4]  # deleted for good
    shown = await asyncio.to_thread(cli, url, "retention", "show")
    assert "no retention rule" in shown.output
    assert "low-water position: 4" in shown.output


@pytest.mark.parametrize(
    ("given", "shown"),
    [("7d", "7d"), ("2w", "14d"), ("90", "90s"), ("36h", "36h"), ("1.5", "1.5s"), ("90m", "90m")],
)
async def test_cli_shows_an_age_as_it_takes_one(tmp_path: Path, given: str, shown: str) -> None:
    """`retention set --max-age 7d` answered `max_age=604800.0` (the #14 walk-through)."""
    url = f"sqlite:///{tmp_path}/s.db"
    args = ("retention", "set", "-c", "order", "--max-age", given, "--hard-max-age", given)
    result = await asyncio.to_thread(cli, url, *args)
    assert result.exit_code == 0, result.output
    assert f"category order: max_age={shown}, hard_max_age={shown}" in result.output
    assert f"max_age={shown}" in (await asyncio.to_thread(cli, url, "retention", "show")).output


@pytest.mark.parametrize(
    "args",
    [
        ("--max-age", "soon"),
        ("--max-age", "0"),
        ("--max-count", "0"),
        ("--truncate-before", "3"),  # on a category
        (),
    ],
)
async def test_cli_refuses_bad_rules_and_changes_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    result = await asyncio.to_thread(cli, url, "retention", "set", "-c", "order", *args)
    assert result.exit_code == 1
    assert "InvalidInput" in result.output
    assert "Traceback" not in result.output
    async with tidelog.connect(url) as store:
        assert await store.retention() == []


async def test_copy_carries_the_rules(tmp_path: Path) -> None:
    async with (
        tidelog.connect(f"sqlite:///{tmp_path}/a.db") as src,
        tidelog.connect(f"sqlite:///{tmp_path}/b.db") as dst,
    ):
        await src.append("order-1", [ev() for _ in range(3)])
        await src.set_retention(RetentionPolicy(max_count=3), category="order")
        report = await copy_store(src, dst)
        assert report.verified, report.mismatches
        assert [(r.kind, r.name) for r in await dst.retention()] == [("category", "order")]
        await dst.append("order-1", [ev()])
        assert [e.version async for e in dst.read_stream("order-1")] == [1, 2, 3]


async def test_the_background_scavenger_deletes_without_being_asked(tmp_path: Path) -> None:
    async with tidelog.connect(f"sqlite:///{tmp_path}/s.db") as store:
        store.scavenge_interval = 0.05
        await store.append("order-1", [ev() for _ in range(4)])
        await store.set_retention(RetentionPolicy(max_count=1), category="order")
        watch = store.head_watch()  # a scavenge moves no head: look again every 20 ms
        async with asyncio.timeout(WAIT):
            while store.retention_stats["deleted"] < 3:
                await watch.wait_beyond(2**62, 0.02)
        # Deleted for good: clearing the rule brings nothing back.
        await store.set_retention(None, category="order")
        assert [e.version async for e in store.read_stream("order-1")] == [3]
        assert ("$scavenger", "$retention") in await store.list_groups()


async def test_a_process_that_only_writes_scavenges_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    async with tidelog.connect(url) as admin:
        await admin.set_retention(RetentionPolicy(max_count=1), category="order")
    async with tidelog.connect(url) as producer:
        producer.scavenge_interval = 0.05
        await producer.append("order-1", [ev() for _ in range(4)])  # no read, ever
        watch = producer.head_watch()
        async with asyncio.timeout(WAIT):
            while producer.retention_stats["deleted"] < 3:
                await watch.wait_beyond(2**62, 0.02)


async def test_two_processes_share_one_scavenger(tmp_path: Path) -> None:
    """Two stores on one file (as two processes would be): the lease lets one scavenge."""
    url = f"sqlite:///{tmp_path}/s.db"
    async with tidelog.connect(url) as a, tidelog.connect(url) as b:
        await a.append("order-1", [ev() for _ in range(4)])
        await a.set_retention(RetentionPolicy(max_count=1), category="order")
        first = await a.scavenge(release=False)  # a keeps the lease
        second = await b.scavenge()
        assert (first.ran, first.deleted) == (True, 3)
        assert not second.ran
        await a.leave_group("$scavenger", "$retention", a._scavenger_member)
        assert (await b.scavenge()).ran


async def test_http_routes_need_admin(serve: Any) -> None:
    server, store = await serve(
        keys={"reader-key": "reader", "order-admin-key": "oa"},
        grants=("reader=read:*", "oa=admin:category:order", "oa=read:*"),
    )
    base = f"http://127.0.0.1:{server.port}"
    rule = {"kind": "category", "name": "order", "policy": {"max_count": 1}}
    async with httpx.AsyncClient(base_url=base) as http:

        def auth(key: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {key}"}

        refused = await http.put("/v1/retention", json=rule, headers=auth("reader-key"))
        assert refused.status_code == 403
        assert await store.retention() == []
        bad = await http.put(
            "/v1/retention",
            json={**rule, "policy": {"max_count": -1}},
            headers=auth("order-admin-key"),
        )
        assert bad.status_code == 400
        done = await http.put("/v1/retention", json=rule, headers=auth("order-admin-key"))
        assert done.status_code == 200, done.text
        assert [r.name for r in await store.retention()] == ["order"]
        store_wide = {"kind": "store", "policy": {"max_age": 60}}
        refused = await http.put("/v1/retention", json=store_wide, headers=auth("order-admin-key"))
        assert refused.status_code == 403
        assert (await http.get("/v1/retention", headers=auth("reader-key"))).status_code == 403
        shown = await http.get("/v1/retention", headers=auth(ADMIN_KEY))
        assert shown.json() == {"rules": [rule]}
        assert (
            await http.post("/v1/retention/scavenge", headers=auth("reader-key"))
        ).status_code == 403
        scavenged = await http.post("/v1/retention/scavenge", headers=auth(ADMIN_KEY))
        assert scavenged.json()["ran"] is True
        first = await http.get("/v1/log/first", headers=auth("reader-key"))
        assert first.json() == {"position": 1}


async def test_metrics_show_the_low_water_mark_and_lost_events(serve: Any) -> None:
    server, store = await serve()
    await store.join_group("billing", "order", "m1", lease=60)
    await store.append("order-1", [ev() for _ in range(3)])
    policy = RetentionPolicy(max_count=1, even_if_unconsumed=True)
    await store.set_retention(policy, category="order")
    report = await store.scavenge()
    assert report.lost == 2
    lost = [e async for e in store.read_stream("$system")]
    assert [e.type for e in lost] == ["RetentionLostEvents"]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}") as http:
        wanted = 'tidelog_retention_lost_events{category="order",group="billing"} 2.0'
        async with asyncio.timeout(WAIT):
            while wanted not in (text := (await http.get("/metrics")).text):
                await store.head_watch().wait_beyond(2**62, 0.05)
        assert "tidelog_log_first_position 3.0" in text
        assert "tidelog_retention_deleted_events 2.0" in text


@pytest.mark.slow
async def test_the_benchmark_workload_runs_and_reports(tmp_path: Path) -> None:
    """Smoke test of `retention_steady_state` at tiny sizes: the shape, never a speed."""
    spec = importlib.util.spec_from_file_location("tidelog_bench_run_retention", RUN_PY)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # dataclasses look the module up by name
    spec.loader.exec_module(bench)
    result = await bench.run(
        ["sqlite"], ("retention_steady_state",), bench.TINY, True, workdir=tmp_path
    )
    entry = result["workloads"]["sqlite.retention_steady_state"]
    assert "error" not in entry, entry
    assert entry["unit"] == "events/s"
    assert entry["value"] > 0 and entry["baseline"] > 0
    assert len(entry["baseline_rates"]) == 2
    assert entry["size_mb"] and all(size > 0 for size in entry["size_mb"])
    assert entry["rss_mb"] and entry["handled"] > 0
    assert isinstance(entry["met"], bool)
