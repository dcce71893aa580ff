"""The deployment files against the worker they deploy: every variable is a setting the
worker reads, the probes and ports are its real routes and port, every mounted file is
where the setting that reads it points, and every file in deploy/ is read here."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

import pytest
import yaml

from app.ops.config import OPTIONS

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy"
KUBE = DEPLOY / "kubernetes"
SETTINGS = {o.env: o for o in OPTIONS}  # app/ops/config.py and app/kafka/connection.py
# Variables whose value is a file or folder the worker reads or writes.
PATH_SETTINGS = (
    "CAMELEER_STATE_DIR",
    "KAFKA_SASL_PASSWORD_FILE",
    "KAFKA_SASL_OAUTH_TOKEN_FILE",
    "KAFKA_SSL_CAFILE",
    "KAFKA_SSL_CERTFILE",
    "KAFKA_SSL_KEYFILE",
)
ROUTES = set(re.findall(r'@app\.page\("([^"]+)"\)', (ROOT / "app" / "ops" / "web.py").read_text()))
CHECKED = {"kustomization.yaml", "service.yaml", "statefulset.yaml", "poddisruptionbudget.yaml"}
CHECKED |= {"podmonitor.yaml"}


def load(name: str) -> dict:
    [doc] = list(yaml.safe_load_all((KUBE / name).read_text()))
    return doc


@pytest.fixture(scope="module")
def sts() -> dict:
    return load("statefulset.yaml")


@pytest.fixture(scope="module")
def container(sts) -> dict:
    [c] = sts["spec"]["template"]["spec"]["containers"]
    return c


def env_of(container) -> dict[str, dict]:
    return {e["name"]: e for e in container["env"]}


def test_every_file_in_deploy_is_checked_here():
    files = {p.relative_to(KUBE).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert files == CHECKED
    assert {p.parent for p in DEPLOY.rglob("*") if p.is_file()} == {KUBE}


def test_kustomization_lists_the_manifests_that_need_no_extra_crds():
    resources = load("kustomization.yaml")["resources"]
    assert sorted(resources) == sorted(CHECKED - {"kustomization.yaml", "podmonitor.yaml"})


def test_every_variable_is_a_setting_of_the_worker(container):
    names = set(env_of(container))
    assert names - set(SETTINGS) == set()
    # the settings a StatefulSet is for: static membership, replication
    assert names >= {
        "CAMELEER_INSTANCE_ID",
        "CAMELEER_SESSION_TIMEOUT",
        "CAMELEER_REPLICATION_FACTOR",
    }


def test_instance_id_is_the_pod_name_and_the_advertised_host_the_pod_ip(container):
    env = env_of(container)
    assert env["CAMELEER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    field = env["CAMELEER_WEB_ADVERTISED_HOST"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert field == "status.podIP"


def test_probes_use_the_real_routes_and_port(container):
    port = int(SETTINGS["CAMELEER_WEB_PORT"].default)
    [http] = container["ports"]
    assert (http["name"], http["containerPort"]) == ("http", port)
    assert env_of(container)["CAMELEER_WEB_PORT"]["value"] == str(port)
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] in ROUTES


def test_scraping_points_at_the_metrics_route(sts):
    notes = sts["spec"]["template"]["metadata"]["annotations"]
    assert notes["prometheus.io/path"] in ROUTES and notes["prometheus.io/path"] == "/metrics"
    assert notes["prometheus.io/port"] == SETTINGS["CAMELEER_WEB_PORT"].default
    [endpoint] = load("podmonitor.yaml")["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")


def test_every_path_setting_points_into_its_mount(sts, container):
    """A file setting names a file the pod has: under a mount, and for a Secret, one of the
    Secret's listed items; the state folder is the persistent volume."""
    env = env_of(container)
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    claims = {c["metadata"]["name"] for c in sts["spec"]["volumeClaimTemplates"]}
    used = [name for name in PATH_SETTINGS if name in env]
    assert {"CAMELEER_STATE_DIR", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE"} <= set(used)
    for name in used:
        path = PurePosixPath(env[name]["value"])
        if name == "CAMELEER_STATE_DIR":
            mount = mounts[str(path)]
            assert mount["name"] in claims and not mount.get("readOnly")
            continue
        mount = mounts[str(path.parent)]
        assert mount.get("readOnly") is True
        secret = volumes[mount["name"]]["secret"]
        assert path.name in {item["path"] for item in secret["items"]}, name


def test_state_volume_is_persistent_and_the_images(sts, container):
    [claim] = sts["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    state = env_of(container)["CAMELEER_STATE_DIR"]["value"]
    assert f'VOLUME ["{state}"]' in DOCKERFILE
    assert f"CAMELEER_STATE_DIR={state}" in DOCKERFILE


def test_the_pod_runs_as_the_images_user_with_time_to_commit(sts):
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert f"USER {pod['securityContext']['runAsUser']}:" in DOCKERFILE
    assert pod["terminationGracePeriodSeconds"] >= 30


def test_resources_cover_the_measured_memory(container):
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Mi") and int(limit[:-2]) * 2**20 > 243e6 * 1.5  # RSS at 1M held
    assert "cpu" not in container["resources"]["limits"]


def test_headless_service_and_disruption_budget_select_the_pods(sts):
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = load("service.yaml")
    assert service["spec"]["clusterIP"] == "None"
    assert sts["spec"]["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= labels.items()
    [port] = service["spec"]["ports"]
    assert port["targetPort"] == "http"
    pdb = load("poddisruptionbudget.yaml")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_dockerfile_runs_the_worker_in_exec_form_without_dev_extras():
    [entry] = re.findall(r"^ENTRYPOINT (.+)$", DOCKERFILE, re.MULTILINE)
    assert json.loads(entry) == ["cameleer-merger"]  # exec form: SIGTERM reaches the worker
    assert re.search(r"pip install \.\s", DOCKERFILE) and "[dev]" not in DOCKERFILE
    assert len(re.findall(r"^FROM ", DOCKERFILE, re.MULTILINE)) == 2  # multi-stage
    assert "ca-certificates" in DOCKERFILE
    assert f"EXPOSE {SETTINGS['CAMELEER_WEB_PORT'].default}" in DOCKERFILE
    [user] = re.findall(r"^USER (\d+):", DOCKERFILE, re.MULTILINE)
    assert int(user) != 0
