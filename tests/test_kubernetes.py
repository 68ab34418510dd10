"""deploy/kubernetes: every overlay renders with `kubectl kustomize` and validates (issue #19).

Kubernetes objects are checked against the Kubernetes API schemas (the
`kubernetes-validate` package, strict: an unknown field is an error); KEDA's
ScaledObject against KEDA's own CRD schema, kept in
deploy/kubernetes/schemas with its source noted. Then what the manifests
promise is checked on the rendered objects: probes on /livez and /readyz,
resource requests, grace periods that cover the worker's drain, one replica
for SQLite, and a config file the server accepts.
"""

from __future__ import annotations

import copy
import pathlib
import shutil
import subprocess
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from support.services import service_missing
from tidelog.server._config import load_config

ROOT = pathlib.Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(p.name for p in (KUBE / "overlays").iterdir() if p.is_dir())
KUBERNETES_VERSION = "1.30"
"""The oldest Kubernetes the manifests are written for (autoscaling/v2, policy/v1)."""


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:  # skipped on a developer's machine; CI installs it, and fails without
        service_missing("kubectl is not installed (.ci/run installs it)")
    return found


def render(overlay: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUBE / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields refused, as the API server prunes them silently."""
    schema = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def keda_schema() -> Any:
    crd = yaml.safe_load((KUBE / "schemas" / "keda.sh_scaledobjects.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return strict(version["schema"]["openAPIV3Schema"])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        c
        for d in docs
        if d["kind"] in ("Deployment", "StatefulSet")
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_there_are_the_overlays_the_docs_name() -> None:
    assert OVERLAYS == ["nats", "postgres", "postgres-hpa", "sqlite"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates(overlay: str) -> None:
    docs = render(overlay)
    assert docs
    for doc in docs:
        if doc["apiVersion"] == "keda.sh/v1alpha1":
            jsonschema.validate(doc, keda_schema())
        else:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_validation_catches_mistakes() -> None:
    """The checks are not vacuous: a misspelt field fails each kind of validation."""
    docs = render("postgres")
    (deployment,) = [d for d in docs if d["metadata"]["name"] == "tidelog-worker"][:1]
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 30
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    (scaled,) = by_kind(docs, "ScaledObject")
    broken = copy.deepcopy(scaled)
    broken["spec"]["maxReplicas"] = 4  # HPA's name, not KEDA's
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, keda_schema())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_and_grace(overlay: str) -> None:
    docs = render(overlay)
    for c in containers(docs):
        port = c["ports"][0]["name"]
        assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": port}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
        assert {"cpu", "memory"} <= c["resources"]["requests"].keys()
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for workload in by_kind(docs, "Deployment") + by_kind(docs, "StatefulSet"):
        spec = workload["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user
        for c in spec["containers"]:
            if c["args"][0] != "worker":
                continue
            # the kubelet's SIGKILL must not cut the worker's drain short
            drain = next(float(a.split("=")[1]) for a in c["args"] if "--shutdown-timeout=" in a)
            assert spec["terminationGracePeriodSeconds"] >= drain + 5
            assert "--metrics-port=9100" in c["args"]


def test_sqlite_is_one_pod_and_the_others_replicate() -> None:
    sqlite = render("sqlite")
    (statefulset,) = by_kind(sqlite, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 1
    assert not by_kind(sqlite, "Deployment") and not by_kind(sqlite, "PodDisruptionBudget")
    names = [c["name"] for c in statefulset["spec"]["template"]["spec"]["containers"]]
    assert names == ["server", "worker"]  # one volume, one pod
    for overlay in ("postgres", "nats", "postgres-hpa"):
        docs = render(overlay)
        servers = [
            d for d in by_kind(docs, "Deployment") if d["metadata"]["name"] == "tidelog-server"
        ]
        assert servers[0]["spec"]["replicas"] >= 2
        assert len(by_kind(docs, "PodDisruptionBudget")) == 2
        store_secret = by_kind(docs, "Secret")[0]["metadata"]["name"]
        for c in containers(docs):
            (env,) = [e for e in c["env"] if e["name"] == "TIDELOG_STORE"]
            assert env["valueFrom"]["secretKeyRef"]["name"] == store_secret  # hash suffix followed


@pytest.mark.parametrize("overlay", ["postgres", "nats", "postgres-hpa"])
def test_autoscaling_uses_the_desired_members_signal(overlay: str) -> None:
    docs = render(overlay)
    scalers = by_kind(docs, "ScaledObject") + by_kind(docs, "HorizontalPodAutoscaler")
    (scaler,) = scalers
    spec = scaler["spec"]
    if scaler["kind"] == "ScaledObject":
        assert spec["scaleTargetRef"]["name"] == "tidelog-worker"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
        assert "tidelog_group_desired_members" in trigger["metadata"]["query"]
        assert trigger["metadata"]["threshold"] == "1"
    else:
        assert spec["scaleTargetRef"]["name"] == "tidelog-worker"
        (metric,) = spec["metrics"]
        assert metric["external"]["metric"]["name"] == "tidelog_group_desired_members"
        assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}


def test_the_config_file_is_one_the_server_accepts() -> None:
    config = load_config(KUBE / "base" / "common" / "tidelog.toml", environ={})
    assert config.host == "0.0.0.0" and config.data_dir == "/var/lib/tidelog"
    assert list(config.api_keys.values()) == ["admin"]  # auth: a non-loopback bind needs it
    assert config.scaling.drain_seconds == 60
