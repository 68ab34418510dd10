"""deploy/: the alert rules and the Grafana dashboard name only metrics a server exposes.

A renamed metric would silently turn an alert into one that never fires, so
every `tidelog_*` name in the rules and the dashboard is looked up in the
/metrics output of a live server that has seen appends, a group and a parked
event. `promtool check rules` runs too when promtool is on PATH.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.server import ADMIN_KEY, config, running
from support.services import service_missing

yaml = pytest.importorskip("yaml")

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
RULES = DEPLOY / "prometheus" / "tidelog-alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "tidelog-dashboard.json"
METRIC = re.compile(r"\btidelog_[a-z_]+\b")


def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _dashboard_queries(doc: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in doc["templating"]["list"] if v["type"] == "query"]
    return queries


def test_rules_parse_and_are_complete() -> None:
    rules = _rules()
    names = {r["alert"] for r in rules}
    assert {
        "TidelogDown",
        "TidelogConsumerLagGrowing",
        "TidelogParkedEvents",
        "TidelogAppendErrors",
    } <= names
    for rule in rules:
        assert rule["expr"].strip(), rule["alert"]
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        # a runbook: what it means, what to do, and a command that shows more (#19)
        runbook = rule["annotations"]["runbook"]
        assert "Meaning:" in runbook and "Do:" in runbook and "More:" in runbook, rule["alert"]
        assert re.search(r"`(tidelog|kubectl|curl) [^`]+`", runbook), rule["alert"]


def test_dashboard_has_a_fixed_uid_and_a_datasource_variable() -> None:
    doc = _dashboard()
    assert doc["uid"] == "tidelog-overview"
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "tidelog_build_info" in variables["instance"]["definition"]
    panel_ids = [p["id"] for p in doc["panels"]]
    assert len(panel_ids) == len(set(panel_ids))
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert METRIC.search(target["expr"]) or "up{" in target["expr"], panel["title"]


async def _exposed_metrics() -> set[str]:
    """Family and sample names of a server that has something to report for every metric."""
    from tidelog.consumers._dlq import dlq_stream, parked_entry

    async with (
        running(config()) as (server, store),
        httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        ) as client,
    ):
        r = await client.post("/v1/streams/order-1/events", json={"events": [{"type": "X"}]})
        assert r.status_code == 200
        member = await store.join_group("billing", "order", "m1")
        await store.commit("billing", "order", 0, 0, member="m1", generation=member.generation)
        [event] = [e async for e in store.read_stream("order-1")]
        await store.append(
            dlq_stream("billing"),
            [parked_entry("billing", event, handler="h", error=None, attempts=1)],
        )
        text = (await client.get("/metrics")).text
    names: set[str] = set()
    for family in text_string_to_metric_families(text + _worker_metrics()):
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
    return names


def _worker_metrics() -> str:
    """What a worker's --metrics-port serves (job "tidelog-worker" in the rules)."""
    import prometheus_client

    from tidelog.consumers import App
    from tidelog.consumers._metrics import _StatsCollector

    registry = prometheus_client.CollectorRegistry()
    registry.register(_StatsCollector(App("probe", "memory://")))
    return prometheus_client.generate_latest(registry).decode()


async def test_every_metric_in_rules_and_dashboard_is_exposed() -> None:
    exposed = await _exposed_metrics()
    used: dict[str, str] = {}
    for rule in _rules():
        used.update(dict.fromkeys(METRIC.findall(rule["expr"]), f"alert {rule['alert']}"))
    for query in _dashboard_queries(_dashboard()):
        used.update(dict.fromkeys(METRIC.findall(query), "dashboard"))
    assert "tidelog_parked_events" in used and "tidelog_consumer_lag_events" in used
    missing = {name: where for name, where in used.items() if name not in exposed}
    assert missing == {}, f"not in /metrics: {missing}"


def test_promtool_accepts_the_rules() -> None:
    """Prometheus' own checker accepts the rules (CI installs promtool; a developer
    machine without it skips, as for a missing service)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        service_missing("promtool not installed (Debian's prometheus package has it)")
    done = subprocess.run(
        [promtool, "check", "rules", str(RULES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
