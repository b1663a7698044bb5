"""A cluster in miniature: three `edged start` replicas with the real models behind HAProxy
(gRPC over h2c, balanced per stream), real-time riva.client streams spread over them, and one
replica drained and stopped while its streams run, as a Kubernetes pod's preStop and SIGTERM do."""

from __future__ import annotations

import csv
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edged.backends import BackendOptions
from edged.client.scaling import desired_replicas
from edged.client.textnorm import normalize, word_errors
from edged.repository.deploy import deploy
from edged.repository.records import DeployTarget
from edged.rmir import RmirRef
from tests.test_asr_server import BECKETT_TEXT, beckett_path, pcm_of
from tests.test_kubernetes import KUBE, by_kind, kustomize, scrape
from tests.test_server import free_port, start_server, wait_serving

REPLICAS = 3
MAX_STREAMS = 8
FIRST_WAVE = 12
SECOND_WAVE = 6
CHUNK_S = 0.1


@dataclass
class Replica:
    """One `edged start` process and its ports."""

    name: str
    cfg: Path
    port: int
    metrics_port: int
    proc: subprocess.Popen[bytes]

    def sample(self, name: str) -> float:
        """Sum of a metric's samples (all labels) on this replica's /metrics."""
        total = 0.0
        for line in scrape(self.metrics_port).splitlines():
            key = line.split(" ")[0]
            if key == name or key.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


HAPROXY_CFG = """global
    maxconn 256
    log stdout format raw local0
defaults
    mode http
    log global
    option httplog
    timeout connect 2s
    timeout client 120s
    timeout server 120s
    # A replica busy with streams can answer a check late; only a 503 should take it out.
    timeout check 3s
frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats
frontend grpc
    bind 127.0.0.1:{port} proto h2
    default_backend edged
backend edged
    balance roundrobin
    option httpchk GET /v2/health/ready
    http-check expect status 200
{servers}
"""


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, default_rmirs: dict[str, Path],
             cpu_target: DeployTarget) -> Iterator[list[Replica]]:
    """Moonshine and Silero deployed once into one repository, served by three replicas."""
    tmp = tmp_path_factory.mktemp("scaleout")
    repo = tmp / "repo"
    for name in ("moonshine-base-en", "silero-vad"):
        deploy(RmirRef(default_rmirs[name]), repo / "models", cpu_target, BackendOptions())
    out: list[Replica] = []
    try:
        for i in range(REPLICAS):
            port, metrics_port = free_port(), free_port()
            cfg = tmp / f"config-{i}.sh"
            cfg.write_text(
                f'model_loc="{repo}"\nriva_speech_api_port={port}\nlisten_address="127.0.0.1"\n'
                f"metrics_port={metrics_port}\nservice_enabled_tts=false\nasr_max_streams={MAX_STREAMS}\n"
                "ort_intra_op_threads=1\nshutdown_grace_s=30\nwyoming_enabled=false\nhttp_enabled=false\n", encoding="utf-8")
            out.append(Replica(f"r{i}", cfg, port, metrics_port, start_server(cfg, tmp / f"server-{i}.log")))
        started = time.monotonic()
        for r in out:
            wait_serving(r.proc, r.port, timeout=120)
        print(f"\n{REPLICAS} replicas from start to SERVING (deployed repository): "
              f"{time.monotonic() - started:.1f} s")
        yield out
    finally:
        for r in out:
            if r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(timeout=40)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
    for i in range(REPLICAS):
        log = (tmp / f"server-{i}.log").read_text()
        assert "Traceback" not in log, log[-3000:]


@pytest.fixture(scope="module")
def balancer(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """HAProxy in front of the replicas: h2c in, h2c out, round robin per stream, readiness checks
    on each replica's metrics port (a drained replica leaves after two checks); yields the gRPC
    address and the stats port."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    port, stats_port = free_port(), free_port()
    servers = "\n".join(
        f"    server {r.name} 127.0.0.1:{r.port} proto h2 check port {r.metrics_port} check-proto h1 "
        "inter 300ms fall 2 rise 2" for r in replicas)
    cfg = tmp_path_factory.mktemp("haproxy") / "haproxy.cfg"
    cfg.write_text(HAPROXY_CFG.format(port=port, stats_port=stats_port, servers=servers), encoding="utf-8")
    subprocess.run([haproxy, "-c", "-f", str(cfg)], check=True, capture_output=True)
    with open(cfg.parent / "haproxy.log", "wb") as log:
        proc = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=log, stderr=subprocess.STDOUT)
        try:
            # Wait until every server's checks have passed (its state UP, not "UP 1/2" or DOWN).
            deadline = time.monotonic() + 20
            while server_states(stats_port) != {r.name: "UP" for r in replicas}:
                assert proc.poll() is None and time.monotonic() < deadline, server_states(stats_port)
                time.sleep(0.1)
            yield f"127.0.0.1:{port}", stats_port
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    print((cfg.parent / "haproxy.log").read_text()[-6000:])


def server_states(stats_port: int) -> dict[str, str]:
    """Each backend server's state from HAProxy's CSV stats page ({} while it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats;csv", timeout=2) as reply:
            rows = list(csv.DictReader(reply.read().decode().lstrip("# ").splitlines()))
    except OSError:
        return {}
    return {row["svname"]: row["status"] for row in rows if row["pxname"] == "edged"
            and row["svname"] not in ("FRONTEND", "BACKEND")}


def stream_text(address: str, pcm: bytes, rate: int) -> str:
    """One real-time stream through riva.client: 100 ms chunks, each after 100 ms; the finals."""
    import riva.client

    asr = riva.client.ASRService(riva.client.Auth(uri=address))

    def chunks() -> Iterator[bytes]:
        size = int(rate * CHUNK_S) * 2
        for i in range(0, len(pcm), size):
            yield pcm[i:i + size]
            time.sleep(CHUNK_S)

    sc = riva.client.StreamingRecognitionConfig(config=riva.client.RecognitionConfig(
        encoding=riva.client.AudioEncoding.LINEAR_PCM, sample_rate_hertz=rate, language_code="en-US",
        max_alternatives=1, enable_automatic_punctuation=True), interim_results=False)
    return " ".join(r.alternatives[0].transcript for resp in asr.streaming_response_generator(chunks(), sc)
                    for r in resp.results if r.is_final)


def test_streams_spread_and_a_drained_replica_finishes_its_own(replicas: list[Replica],
                                                               balancer: tuple[str, int]) -> None:
    """12 real-time streams spread over 3 replicas; r0 is drained and sent SIGTERM while they run:
    every stream ends with its complete text, the 6 streams opened afterwards go to r1 and r2."""
    address, stats_port = balancer
    pcm, rate = pcm_of(beckett_path())
    results: dict[str, str] = {}
    errors: dict[str, str] = {}

    def run(key: str) -> None:
        try:
            results[key] = stream_text(address, pcm, rate)
        except Exception as exc:  # noqa: BLE001  (each stream's failure is reported below, not lost in a thread)
            errors[key] = repr(exc)

    threads = []
    for i in range(FIRST_WAVE):
        threads.append(threading.Thread(target=run, args=(f"a{i}",)))
        threads[-1].start()
        time.sleep(0.05)
    deadline = time.monotonic() + 10  # the replicas share 2 cores: admission can lag the clients
    while sum(r.sample("edged_active_streams") for r in replicas) < FIRST_WAVE and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    first = {r.name: r.sample("edged_requests_total") for r in replicas}
    loaded = {r.name: r.sample("edged_load_ratio") for r in replicas}
    print(f"first wave, requests per replica: {first}; load ratios: {loaded}")

    r0 = replicas[0]
    subprocess.run([sys.executable, "-m", "edged", "drain", "-c", str(r0.cfg)], check=True, capture_output=True)
    deadline = time.monotonic() + 5
    while not server_states(stats_port).get("r0", "").startswith("DOWN"):  # two checks, 300 ms apart
        assert time.monotonic() < deadline, server_states(stats_port)
        time.sleep(0.05)
    drained = r0.sample("edged_requests_total")
    r0.proc.send_signal(signal.SIGTERM)
    for i in range(SECOND_WAVE):
        threads.append(threading.Thread(target=run, args=(f"b{i}",)))
        threads[-1].start()
        time.sleep(0.05)
    time.sleep(2.0)
    peak = {r.name: r.sample("edged_load_ratio") for r in replicas[1:]}
    print(f"after the drain, load ratios of r1, r2: {peak}")
    for t in threads:
        t.join(timeout=120)
    assert r0.proc.wait(timeout=40) == 0
    total = {r.name: r.sample("edged_requests_total") for r in replicas[1:]}
    idle = {r.name: r.sample("edged_load_ratio") for r in replicas[1:]}
    print(f"at the end, requests per replica: {total}; idle load ratios: {idle}")

    assert not errors, errors
    assert len(results) == FIRST_WAVE + SECOND_WAVE
    want = normalize(BECKETT_TEXT)
    for key, text in sorted(results.items()):
        wrong, words = word_errors(want, normalize(text))
        assert wrong <= 0.2 * words, (key, text)
    assert sum(first.values()) == FIRST_WAVE
    assert all(n >= 2 for n in first.values()), first  # round robin per stream, not per connection
    assert drained == first["r0"]  # none went to r0 once drained
    assert sum(total.values()) - first["r1"] - first["r2"] == SECOND_WAVE
    assert all(0 < v <= 1 for v in loaded.values()), loaded
    assert idle == {"r1": 0.0, "r2": 0.0}

    # The HPA's arithmetic on these figures, with the target the cpu overlay sets.
    hpa = by_kind(kustomize(KUBE / "overlays" / "cpu"), "HorizontalPodAutoscaler")
    target = float(hpa["spec"]["metrics"][0]["pods"]["target"]["averageValue"].removesuffix("m")) / 1000
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    busy = desired_replicas(list(peak.values()), target, low, high)
    print(f"HPA (target {target}): first wave {list(loaded.values())} -> "
          f"{desired_replicas(list(loaded.values()), target, low, high)}; after the drain "
          f"{list(peak.values())} -> {busy}; idle -> {desired_replicas(list(idle.values()), target, low, high)}")
    assert busy > len(peak)
    assert desired_replicas(list(idle.values()), target, low, high) == low
