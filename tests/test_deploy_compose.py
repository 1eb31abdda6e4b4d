"""deploy/compose.yaml without a Docker engine: the wiring between the services, checked offline.

`docker compose config` is not available here, so this reads the YAML and checks what a typo would
break: images pinned, every mounted file present, depends_on on real healthchecks, the gateway's
Triton address and the Triton model/config flags against model_repository/, Prometheus' config (with
the mounted alert rules, by promtool) and its targets, Grafana's provisioning paths, and the CPU
override. What stays untested: pulling the images and running the stack (docs/DEPLOY.md).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from serving.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
DEPLOY = REPO_ROOT / "deploy"


class _ComposeLoader(yaml.SafeLoader):
    """Compose's merge tags (!reset, !override) kept as plain values."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


for _tag in ("!reset", "!override"):
    _ComposeLoader.add_constructor(_tag, _tagged)


def _load(name: str) -> dict[str, Any]:
    return yaml.load((DEPLOY / name).read_text(encoding="utf-8"), Loader=_ComposeLoader)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _load("compose.yaml")


def _mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume entry, ':ro' dropped."""
    out = []
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out.append((source, target))
    return out


def _flag(command: list[str], name: str) -> str | None:
    for arg in command:
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
    return None


def test_every_image_is_pinned_and_the_gateway_builds_from_the_dockerfile(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest", f"{name}: image {image} has no pinned tag"
    build = compose["services"]["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == REPO_ROOT / "Dockerfile"


def test_mounted_files_exist_and_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for source, _ in _mounts(service):
            if source.startswith((".", "/")):
                assert (DEPLOY / source).exists(), f"{name}: mounts {source}, which does not exist"
            else:
                assert source in compose["volumes"], f"{name}: volume {source} is not declared"


def test_depends_on_waits_only_for_healthchecks_that_exist(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] in {"service_started", "service_healthy"}
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}'s healthcheck; it has none"
    assert services["gateway"]["depends_on"]["triton"]["condition"] == "service_healthy"


def test_triton_serves_what_the_model_repository_has(compose: dict[str, Any]) -> None:
    triton = compose["services"]["triton"]
    command = triton["command"]
    repo_in_container = _flag(command, "--model-repository")
    mounts = dict((target, source) for source, target in _mounts(triton))
    assert (DEPLOY / mounts[repo_in_container]).resolve() == REPO_ROOT / "model_repository"
    model = _flag(command, "--load-model")
    assert (REPO_ROOT / "model_repository" / model / "config.pbtxt").is_file()
    config = _flag(command, "--model-config-name")
    assert (REPO_ROOT / "model_repository" / model / "configs" / f"{config}.pbtxt").is_file()
    assert "KIND_GPU" in (REPO_ROOT / "model_repository" / model / "configs" / f"{config}.pbtxt").read_text()
    devices = triton["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]


def test_the_gateway_talks_to_triton_over_grpc_with_valid_settings(compose: dict[str, Any]) -> None:
    gateway = compose["services"]["gateway"]
    env = gateway["environment"]
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("IQA_") and key[4:].lower() in fields, f"{key} is not a gateway setting"
    assert env["IQA_BACKEND"] == "triton"
    host, port = env["IQA_TRITON_URL"].split(":")
    assert host in compose["services"] and host == "triton"
    triton_grpc = _flag(compose["services"]["triton"]["command"], "--grpc-port") or "8001"
    assert port == triton_grpc
    assert gateway["healthcheck"]["test"][1:4] == ["python", "-m", "serving.healthcheck"]
    assert (REPO_ROOT / "serving" / "healthcheck.py").is_file()


def test_the_cpu_override_drops_the_gpu_and_keeps_the_rest(compose: dict[str, Any]) -> None:
    cpu = _load("compose.cpu.yaml")["services"]["triton"]
    assert cpu["deploy"] == {}
    gpu_command = compose["services"]["triton"]["command"]
    assert cpu["command"] == [a for a in gpu_command if not a.startswith("--model-config-name")]
    model = _flag(cpu["command"], "--load-model")
    assert "KIND_CPU" in (REPO_ROOT / "model_repository" / model / "config.pbtxt").read_text()


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is missing (Debian package prometheus: make system-deps)")
    return found


def test_prometheus_config_with_its_mounted_rules_passes_promtool(
    compose: dict[str, Any], tmp_path: Path
) -> None:
    prometheus = compose["services"]["prometheus"]
    root = tmp_path / "container"
    for source, target in _mounts(prometheus):
        if source.startswith("."):
            dest = root / target.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(DEPLOY / source, dest)
    config = root / _flag(prometheus["command"], "--config.file").lstrip("/")
    proc = subprocess.run([_promtool(), "check", "config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr and "rules found" in proc.stdout + proc.stderr


def test_prometheus_scrapes_the_services_under_the_projects_job_names(compose: dict[str, Any]) -> None:
    ours = yaml.safe_load((DEPLOY / "compose" / "prometheus.yml").read_text())
    shared = yaml.safe_load((REPO_ROOT / "clients" / "prometheus" / "prometheus.yml").read_text())
    jobs = [j["job_name"] for j in ours["scrape_configs"]]
    assert jobs == [j["job_name"] for j in shared["scrape_configs"]]
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in ours["scrape_configs"]}
    assert targets == {"iqa-gateway": ["gateway:8080"], "triton": ["triton:8002"]}
    assert set(compose["services"]) >= {t.split(":")[0] for ts in targets.values() for t in ts}
    assert compose["services"]["gateway"]["ports"] == ["8080:8080"]  # the image's IQA_PORT


def test_grafana_provisions_the_datasource_and_the_dashboard_folder(compose: dict[str, Any]) -> None:
    grafana = compose["services"]["grafana"]
    mounts = {target: source for source, target in _mounts(grafana)}
    ours = yaml.safe_load((DEPLOY / "compose" / "grafana-datasource.yml").read_text())["datasources"][0]
    shared_file = REPO_ROOT / "clients" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    shared = yaml.safe_load(shared_file.read_text())["datasources"][0]
    assert (ours["name"], ours["uid"], ours["type"]) == (shared["name"], shared["uid"], shared["type"])
    assert ours["url"] == "http://prometheus:9090"
    providers = DEPLOY / mounts["/etc/grafana/provisioning/dashboards"]
    (provider,) = yaml.safe_load(next(providers.glob("*.yml")).read_text())["providers"]
    dashboards = mounts[provider["options"]["path"]]
    assert list((DEPLOY / dashboards).glob("*.json")), "no dashboard JSON where the provider looks"
