"""Deployment: the Kubernetes manifests (deploy/manifests/naiad.yaml, rendered from deploy/helm/naiad)
validate against the Kubernetes API's schemas and agree with the chart's values and the Dockerfile; a
test plays the kubelet for the rendered Deployment (probes, preStop, SIGTERM under load); and the
Dockerfile's install steps run into a fresh virtualenv, whose naiad then serves the shipped models.

Times: the kubelet test runs the manifest's probe periods, preStop sleep, grace period and
--exit-timeout-secs at SCALE of their values, so that it takes seconds; probe timeouts and thresholds
are the manifest's."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kubernetes_validate
import numpy as np
import pytest
import referencing
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from kubernetes_validate import utils as kv_utils
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import FRONTENDS, REPO_ROOT, SHIPPED_REPOSITORY, descendants, free_port, wait_until

DEPLOY = REPO_ROOT / "deploy"
CHART = DEPLOY / "helm" / "naiad"
MANIFESTS = DEPLOY / "manifests" / "naiad.yaml"
ADAPTER_VALUES = DEPLOY / "prometheus-adapter-values.yaml"
SCALE = 0.2
# objects of these API groups are defined by CustomResourceDefinitions, not by Kubernetes itself
CRD_GROUPS = ("monitoring.coreos.com/", "serving.kserve.io/")


def manifests() -> list[dict]:
    return [doc for doc in yaml.safe_load_all(MANIFESTS.read_text()) if doc]


def the(kind: str) -> dict:
    [found] = [doc for doc in manifests() if doc["kind"] == kind]
    return found


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def naiad_container(pod_spec: dict, name: str = "naiad") -> dict:
    [container] = [c for c in pod_spec["containers"] if c["name"] == name]
    return container


def flag(args: list[str], name: str) -> str:
    [value] = [a.split("=", 1)[1] for a in args if a.startswith(name + "=")]
    return value


def seconds(quantity: str) -> float:
    return float(quantity.removesuffix("s"))


def mebibytes(quantity: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


# --- the manifests -----------------------------------------------------------------------------------

def schema_validator(definition: str) -> jsonschema.Validator:
    """A validator for one definition of the newest Kubernetes release that kubernetes-validate has
    (strict: unknown fields are errors), e.g. 'container-v1'."""
    version = kv_utils.latest_version()
    folder = f"kubernetes-json-schema/v{version}-local-strict"
    schema = kv_utils.schema_contents(f"{folder}/{definition}.json", version)
    definitions = kv_utils.schema_contents(f"{folder}/_definitions.json", version)
    registry = referencing.Resource.from_contents(definitions) @ referencing.Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_every_object_validates_against_the_kubernetes_schemas():
    """Kubernetes' own kinds validate whole, strictly; of the custom resources (KServe, Prometheus
    Operator), whose schemas come with their CRDs and not with kubernetes-validate, the parts that are
    Kubernetes types (containers, volumes) do."""
    version = kv_utils.latest_version()
    kinds = []
    for doc in manifests():
        kinds.append(doc["kind"])
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} against Kubernetes {version}: {e}")
    assert sorted(kinds) == sorted(["PodDisruptionBudget", "Service", "Deployment", "HorizontalPodAutoscaler",
                                    "ClusterServingRuntime", "ServiceMonitor"])
    runtime = the("ClusterServingRuntime")["spec"]
    for container in runtime["containers"]:
        schema_validator("container-v1").validate(container)
    for volume in runtime["volumes"]:
        schema_validator("volume-v1").validate(volume)
    assert runtime["protocolVersions"] == ["v2", "grpc-v2"]
    endpoint = the("ServiceMonitor")["spec"]["endpoints"][0]
    assert set(endpoint) <= {"port", "path", "interval"} and endpoint["path"] == "/metrics"


def test_the_objects_fit_together():
    deployment = the("Deployment")
    pod = deployment["spec"]["template"]
    container = naiad_container(pod["spec"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]
    assert ports == {"http": int(flag(args, "--http-port")), "grpc": int(flag(args, "--grpc-port")),
                     "metrics": int(flag(args, "--metrics-port"))}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    service = the("Service")
    assert service["spec"]["selector"] == selector
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= set(ports)
    monitor = the("ServiceMonitor")["spec"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert the("PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    hpa = the("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": deployment["metadata"]["name"]}
    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == rule["name"]["as"]
    # the kubelet never kills a draining server: preStop, then --exit-timeout-secs and a margin
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= float(pre_stop[1]) + float(flag(args, "--exit-timeout-secs")) + 5
    # /dev/shm: memory-backed, and room for the frontend processes' tensor arenas
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    [shm_mount] = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    shm = volumes[shm_mount["name"]]["emptyDir"]
    frontends = int(flag(args, "--frontends"))
    assert shm["medium"] == "Memory"
    assert mebibytes(shm["sizeLimit"]) >= 256 * (frontends - 1 if frontends > 1 else 0) + 128
    repository = flag(args, "--model-repository")
    [models_mount] = [m for m in container["volumeMounts"] if m["mountPath"] == repository]
    assert models_mount["readOnly"] is True
    assert "nvidia.com/gpu" in container["resources"]["limits"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # the image: its user and ports are the pod's
    image = dockerfile()
    assert f"{pod['spec']['securityContext']['runAsUser']}:" in image.final("USER")[0]
    assert sorted(image.final("EXPOSE")[0].split()) == sorted(str(p) for p in ports.values())


def test_the_manifests_are_the_charts_defaults():
    """helm cannot be built here (its Go modules are out of reach), so the rendering is checked against
    values.yaml field by field, and every value the templates use exists."""
    v = values()
    deployment = the("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = naiad_container(pod)
    args = container["args"]
    assert container["image"] == f"{v['image']['repository']}:{v['image']['tag']}"
    assert container["imagePullPolicy"] == v["image"]["pullPolicy"]
    assert int(flag(args, "--frontends")) == v["frontends"]
    assert float(flag(args, "--exit-timeout-secs")) == v["exitTimeoutSecs"]
    assert container["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(v["preStopSleepSecs"])]
    assert pod["terminationGracePeriodSeconds"] == v["preStopSleepSecs"] + v["exitTimeoutSecs"] + 10
    for key in ("startup", "readiness", "liveness"):
        probe = f"{key}Probe"
        assert {k: val for k, val in container[probe].items() if k != "httpGet"} == v["probes"][key]
    assert container["resources"] == v["resources"]
    volumes = {vol["name"]: vol for vol in pod["volumes"]}
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert claim == v["modelRepository"]["persistentVolumeClaim"]
    assert volumes["dshm"]["emptyDir"]["sizeLimit"] == v["shmSize"]
    assert ("replicas" in deployment["spec"]) is not v["autoscaling"]["enabled"]
    hpa = the("HorizontalPodAutoscaler")["spec"]
    scaling = v["autoscaling"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (scaling["minReplicas"], scaling["maxReplicas"])
    assert hpa["metrics"][0]["pods"]["metric"]["name"] == v["autoscaling"]["metric"]
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == v["autoscaling"]["targetAverageValue"]
    assert the("PodDisruptionBudget")["spec"]["maxUnavailable"] == v["podDisruptionBudget"]["maxUnavailable"]
    assert the("Service")["spec"]["type"] == v["service"]["type"]
    assert the("ServiceMonitor")["spec"]["endpoints"][0]["interval"] == v["serviceMonitor"]["interval"]
    runtime = the("ClusterServingRuntime")["spec"]
    kserve = runtime["containers"][0]
    assert kserve["image"] == container["image"] and kserve["resources"] == v["resources"]
    assert flag(kserve["args"], "--frontends") == flag(args, "--frontends")
    assert flag(kserve["args"], "--exit-timeout-secs") == flag(args, "--exit-timeout-secs")
    assert runtime["volumes"][0]["emptyDir"]["sizeLimit"] == v["shmSize"]
    # one rendered object per template, and every value a template reads is in values.yaml
    templates = sorted(p.name for p in (CHART / "templates").glob("*.yaml"))
    sources = re.findall(r"^# Source: naiad/templates/(\S+)$", MANIFESTS.read_text(), re.MULTILINE)
    assert sorted(sources) == templates
    for template in (CHART / "templates").iterdir():
        for path in re.findall(r"\.Values\.([\w.]+)", template.read_text()):
            node = v
            for key in path.split("."):
                assert isinstance(node, dict) and key in node, f"{template.name}: no .Values.{path}"
                node = node[key]


# --- the kubelet --------------------------------------------------------------------------------------

# Waits in initialize until the file `gate` appears beside its config (a slow load the test ends), then
# sleeps 20 ms per request and echoes; it notes each request id it executes, to tell accepted requests.
GATED = """
    import time
    from pathlib import Path
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def initialize(self, args):
            self.folder = Path(args["model_repository"])
            deadline = time.monotonic() + 60
            while not (self.folder / "gate").exists():
                if time.monotonic() > deadline:
                    raise RuntimeError("the test never opened the gate")
                time.sleep(0.01)

        def execute(self, requests):
            out = []
            for r in requests:
                time.sleep(0.02)
                with open(self.folder / "executed", "a") as f:
                    f.write(r.request_id() + "\\n")
                out.append(InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]))
            return out
"""


@dataclass
class Outcome:
    id: str
    sent: float
    done: float
    kind: str          # ok, refused (UNAVAILABLE, 503, connection refused or closed unanswered), error
    detail: str = ""


@dataclass
class Probe:
    """A kubelet probe: GET path every period; `failure_threshold` failures in a row fail it."""
    path: str
    period: float
    timeout: float
    failure_threshold: int
    results: list[tuple[float, int]] = field(default_factory=list)   # (sent at, HTTP status; 0: no answer)

    @classmethod
    def of(cls, container: dict, name: str) -> Probe:
        spec = container[name]
        return cls(spec["httpGet"]["path"], spec.get("periodSeconds", 10) * SCALE,
                   spec.get("timeoutSeconds", 1), spec.get("failureThreshold", 3))

    def once(self, port: int) -> int:
        started = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{self.path}", timeout=self.timeout) as r:
                status = r.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError:
            status = 0
        self.results.append((started, status))
        return status

    def failed_in_a_row(self) -> int:
        run = 0
        for _, status in reversed(self.results):
            if 200 <= status < 400:
                break
            run += 1
        return run

    def most_failed_in_a_row(self, before: float) -> int:
        most = run = 0
        for when, status in self.results:
            if when < before:
                run = 0 if 200 <= status < 400 else run + 1
                most = max(most, run)
        return most

    def run(self, port: int, stop: threading.Event) -> None:
        while not stop.wait(self.period):
            self.once(port)


def local_command(container: dict, repository: Path, ports: dict[str, int]) -> list[str]:
    """The container's command line, run here: naiad from this Python, the repository and ports local."""
    assert container["command"] == ["naiad"]
    local = {"--model-repository": str(repository), "--http-port": str(ports["http"]),
             "--grpc-port": str(ports["grpc"]), "--metrics-port": str(ports["metrics"]),
             "--frontends": FRONTENDS[0]}
    args = []
    for arg in container["args"]:
        name, _, value = arg.partition("=")
        if name == "--exit-timeout-secs":
            value = f"{float(value) * SCALE:g}"
        args.append(f"{name}={local.get(name, value)}" if value else arg)
    addresses = [f"--{frontend}-address=127.0.0.1" for frontend in ("http", "grpc", "metrics")]
    return [sys.executable, "-m", "naiad.daemon", *args, *addresses]


def segments(pids: set[int]) -> set[str]:
    return {name for name in os.listdir("/dev/shm") if any(name.startswith(f"naiad-{p}-") for p in pids)}


def refused_grpc(error: InferenceServerException, after_sigterm: bool) -> bool:
    """UNAVAILABLE; after SIGTERM also CANCELLED, which gRPC's core (not naiad) answers to a call that
    reached the server in the instant it stopped listening, before a handler took it (grpc/grpc#41785).
    Either way the model must not have run it, which the test checks."""
    return error.status() == "StatusCode.UNAVAILABLE" or (after_sigterm
                                                          and error.status() == "StatusCode.CANCELLED")


# naiad's UNAVAILABLE answers for a model that no longer serves; a stream's error answers carry only
# their message
STREAM_REFUSALS = ("has no available versions", "shutting down")


def refused_on_stream(error: InferenceServerException, after_sigterm: bool) -> bool:
    if error.status():   # the stream itself failed
        return refused_grpc(error, after_sigterm)
    return any(text in error.message() for text in STREAM_REFUSALS)


def outcome_of_http(error: Exception) -> tuple[str, str]:
    if isinstance(error, InferenceServerException) and error.status() == "503":
        return "refused", str(error)
    text = str(error)
    if isinstance(error, (ConnectionRefusedError, ConnectionResetError)) or "Connection refused" in text \
            or "closed" in text.lower():
        return "refused", repr(error)
    return "error", repr(error)


class Load:
    """Clients that send requests to `gated` until the server refuses them: gRPC, HTTP and a gRPC
    stream, each keeping one request (the stream: several) in flight."""

    def __init__(self, grpc_url: str, http_url: str):
        self.grpc_url, self.http_url = grpc_url, http_url
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.sigterm_at = float("inf")
        self.deadline = time.monotonic() + 60
        self.threads = [threading.Thread(target=self.unary, args=(p, i), daemon=True)
                        for p in ("grpc", "http") for i in range(2)]
        self.threads.append(threading.Thread(target=self.stream, daemon=True))

    def note(self, outcome: Outcome) -> None:
        with self.lock:
            self.outcomes.append(outcome)

    def count(self, prefix: str, kind: str = "ok") -> int:
        with self.lock:
            return sum(o.id.startswith(prefix) and o.kind == kind for o in self.outcomes)

    @staticmethod
    def inputs(module, value: float):
        tensor = module.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.array([[value]], dtype=np.float32))
        return [tensor]

    def unary(self, protocol: str, index: int) -> None:
        module = grpcclient if protocol == "grpc" else httpclient
        client = module.InferenceServerClient(self.grpc_url if protocol == "grpc" else self.http_url)
        n = 0
        while time.monotonic() < self.deadline:
            n += 1
            rid, value, sent = f"{protocol}{index}-{n}", float(n), time.monotonic()
            try:
                result = client.infer("gated", self.inputs(module, value), request_id=rid)
                good = result.as_numpy("OUTPUT0").tolist() == [[value]]
                self.note(Outcome(rid, sent, time.monotonic(), "ok" if good else "error", "wrong output"))
            except Exception as e:
                if protocol == "grpc":
                    refused = isinstance(e, InferenceServerException) and refused_grpc(
                        e, time.monotonic() > self.sigterm_at)
                    kind = "refused" if refused else "error"
                    detail = str(e)
                else:
                    kind, detail = outcome_of_http(e)
                self.note(Outcome(rid, sent, time.monotonic(), kind, detail))
                if kind == "refused":
                    break
        client.close()

    def stream(self) -> None:
        """One stream with up to 4 requests in flight; it stops sending 0.5 s after SIGTERM (or at its
        first refusal) and closes, and every request sent on it must be answered. Then new streams
        until one is refused."""
        client = grpcclient.InferenceServerClient(self.grpc_url)
        sent: dict[str, float] = {}
        answers = []
        room = threading.Semaphore(4)

        def callback(result, error):
            # an error answer on a stream names no request; an error of the stream itself has a status
            if result is not None:
                rid = result.get_response().id
                good = result.as_numpy("OUTPUT0").tolist() == [[float(rid.rsplit("-", 1)[1])]]
                self.note(Outcome(rid, sent[rid], time.monotonic(), "ok" if good else "error",
                                  "wrong output"))
            else:
                refused = time.monotonic() > self.sigterm_at and refused_on_stream(error, True)
                self.note(Outcome("stream-error", 0.0, time.monotonic(), "refused" if refused else "error",
                                  str(error)))
            answers.append(result)
            room.release()

        client.start_stream(callback=callback)
        n = 0
        def sending() -> bool:
            until = min(self.deadline, self.sigterm_at + 0.5)
            return time.monotonic() < until and not self.count("stream", "refused")

        while sending():
            if not room.acquire(timeout=5):
                break
            n += 1
            sent[f"stream-{n}"] = time.monotonic()
            client.async_stream_infer("gated", self.inputs(grpcclient, float(n)), request_id=f"stream-{n}")
        client.stop_stream()   # waits for the answers of what was sent
        if len(answers) < len(sent):
            self.note(Outcome("stream", 0.0, time.monotonic(), "error",
                              f"{len(sent) - len(answers)} of {len(sent)} requests got no answer"))
        # once the server has stopped listening, a new stream is refused
        while time.monotonic() < self.deadline:
            answers.clear()
            opened = time.monotonic()
            client.start_stream(callback=lambda result, error: answers.append((result, error)))
            try:
                client.async_stream_infer("gated", self.inputs(grpcclient, 1.0), request_id="stream-new-1")
            except InferenceServerException:
                pass   # the stream had failed already: its callback has the error
            client.stop_stream()
            [(result, error)] = answers[:1] or [(None, None)]
            if result is None:
                kind = ("refused" if error is not None
                        and refused_on_stream(error, time.monotonic() > self.sigterm_at) else "error")
                self.note(Outcome("stream-new", opened, time.monotonic(), kind, str(error)))
                break
        client.close()


def test_a_kubelet_drives_the_rendered_deployment(tmp_path):
    """Startup, readiness and liveness probes with the manifest's paths, periods (x SCALE) and
    thresholds; readiness false while a slow model loads; then, under load from gRPC, HTTP and stream
    clients, the preStop sleep and SIGTERM, as in a rolling update: every request the model took is
    answered, new ones are refused, the server exits 0 within the grace period and leaves no worker
    process and no /dev/shm segment behind."""
    pod = the("Deployment")["spec"]["template"]["spec"]
    container = naiad_container(pod)
    repository = tmp_path / "models"
    config = {**models.batched("FP32", (1,)), "instance_group": [{"kind": "KIND_CPU", "count": 2}]}
    folder = models.write_model(repository, "gated", config, GATED)
    ports = {name: free_port() for name in ("http", "grpc", "metrics")}
    log_path = tmp_path / "naiad.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(local_command(container, repository, ports), stdout=log,
                                   stderr=subprocess.STDOUT)
    stop_probes = threading.Event()
    try:
        startup, readiness, liveness = (Probe.of(container, p) for p in
                                        ("startupProbe", "readinessProbe", "livenessProbe"))
        # startup: the model's initialize waits for the gate, so the server is live and answers not ready
        started = time.monotonic()
        while startup.once(ports["http"]) != 200:
            assert process.poll() is None, log_path.read_text()
            assert startup.failed_in_a_row() < startup.failure_threshold, "the kubelet would restart it"
            assert time.monotonic() - started < 60, f"not ready after 60 s: {startup.results[-3:]}"
            if sum(s >= 400 for _, s in startup.results) >= 2 and not (folder / "gate").exists():
                assert liveness.once(ports["http"]) == 200
                assert urllib_status(ports["http"], "/v2/models/gated/ready") != 200
                (folder / "gate").touch()
            time.sleep(startup.period)
        assert (folder / "gate").exists(), "ready before the slow model had loaded"
        probers = [threading.Thread(target=p.run, args=(ports["http"], stop_probes), daemon=True)
                   for p in (readiness, liveness)]
        for prober in probers:
            prober.start()
        wait_until(lambda: readiness.results and readiness.results[-1][1] == 200, "the readiness probe",
                   timeout=10)

        load = Load(f"127.0.0.1:{ports['grpc']}", f"127.0.0.1:{ports['http']}")
        for thread in load.threads:
            thread.start()
        wait_until(lambda: all(load.count(p) >= 5 for p in ("grpc0", "grpc1", "http0", "http1", "stream")),
                   "every client to be served", timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['metrics']}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"][0]
        for series in set(re.findall(r"\bnv_\w+", adapter["seriesQuery"] + adapter["metricsQuery"])):
            assert re.search(rf"^{series}\{{model=\"gated\"", metrics, re.MULTILINE), f"no {series}"

        pids = descendants(process.pid)
        assert pids, "the Python model's worker processes"
        shm = segments(pids | {process.pid})
        # the rolling update: preStop (the pod keeps serving while endpoints drop it), then SIGTERM
        pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
        terminating = time.monotonic()
        served = load.count("")
        time.sleep(float(pre_stop[1]) * SCALE)
        assert load.count("") > served, "requests were served during preStop"
        load.sigterm_at = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # readiness turns false at once: by the next readiness probe
        wait_until(lambda: Probe(readiness.path, 0, readiness.timeout, 1).once(ports["http"]) != 200,
                   "readiness to turn false", timeout=readiness.period)
        grace = pod["terminationGracePeriodSeconds"] * SCALE
        status = process.wait(timeout=grace + 30)
        exited = time.monotonic()
        for thread in load.threads:
            thread.join(timeout=30)
        log = log_path.read_text()
        assert status == 0, log
        assert exited - terminating <= grace, f"exited {exited - terminating:.1f} s after preStop began"

        executed = set((folder / "executed").read_text().split())
        ok = {o.id for o in load.outcomes if o.kind == "ok"}
        failures = [o for o in load.outcomes if o.kind == "error"]
        assert not failures, failures[:5]
        assert ok == executed, f"taken but not answered: {sorted(executed - ok)[:5]}"
        refused = [o for o in load.outcomes if o.kind == "refused"]
        early = [o for o in refused if o.done <= load.sigterm_at]
        assert not early, f"refused before SIGTERM: {early}"
        assert {o.id.rstrip("0123456789-") for o in refused} >= {"grpc", "http", "stream-new"}
        assert not {o.id for o in refused} & executed
        # the kubelet's view: the pod stayed ready and live until SIGTERM, and was not ready after it
        wait_until(lambda: readiness.results[-1][0] > load.sigterm_at, "a readiness probe after SIGTERM",
                   timeout=readiness.period * 2 + readiness.timeout)
        for probe in (readiness, liveness):
            assert probe.most_failed_in_a_row(load.sigterm_at) < probe.failure_threshold, probe.results
        after = [status for when, status in readiness.results if when > load.sigterm_at]
        assert 200 not in after[after.index(next(s for s in after if s != 200)):], after
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in pids),
                   "the worker processes to end", timeout=5)
        assert shm and not segments(pids | {process.pid}), "shared-memory segments left behind"
    finally:
        stop_probes.set()
        if process.poll() is None:
            process.kill()
            process.wait()


def urllib_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code


# --- the container image ------------------------------------------------------------------------------

@dataclass
class Dockerfile:
    stages: list[list[tuple[str, str]]]     # per FROM: (instruction, its arguments)
    args: dict[str, str]                    # ARG defaults

    def final(self, instruction: str) -> list[str]:
        return [a for op, a in self.stages[-1] if op == instruction]


def dockerfile() -> Dockerfile:
    text = re.sub(r"\\\n", " ", (REPO_ROOT / "Dockerfile").read_text())
    stages, args = [], {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op == "FROM":
            stages.append([])
        if op == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name] = default
        if stages:
            stages[-1].append((op, rest.strip()))
    return Dockerfile(stages, args)


def dockerignore_admits(path: str) -> bool:
    """Whether .dockerignore lets `path` (relative to the repository) into the build context; it is an
    allow list: `*`, then `!name` lines, then patterns to leave out again."""
    admitted = False
    for pattern in (REPO_ROOT / ".dockerignore").read_text().split():
        if pattern.startswith("#"):
            continue
        if pattern == "*":
            admitted = False
        elif pattern.startswith("!"):
            admitted = admitted or path == pattern[1:] or path.startswith(pattern[1:] + "/")
        elif pattern.startswith("**/") and any(Path(part).match(pattern[3:]) for part in path.split("/")):
            admitted = False
    return admitted


def test_the_image_is_small_non_root_and_stops_in_time():
    image = dockerfile()
    assert len(image.stages) == 2, "a build stage and the image that runs"
    final_ops = [op for op, _ in image.stages[-1]]
    assert final_ops.count("COPY") == 1 and image.final("COPY") == ["--from=build /opt/naiad /opt/naiad"]
    installs = [run for run in image.final("RUN") if "apt-get" in run or "pip" in run]
    assert not installs, "the image that runs installs nothing"
    user = image.final("USER")[-1]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user), "a numeric user that is not root"
    assert image.final("STOPSIGNAL") == ["SIGTERM"]
    command = json.loads(image.final("ENTRYPOINT")[0]) + json.loads(image.final("CMD")[0])
    # docker stop waits 10 s: the exit timeout plus a second to answer and the unloading must fit
    assert float(flag(command, "--exit-timeout-secs")) + 1 <= 8
    assert flag(command, "--model-repository") == "/models"
    for op, rest in image.stages[0]:
        if op == "COPY":
            for source in rest.split()[:-1]:
                assert (REPO_ROOT / source).exists() and dockerignore_admits(source), source
    for leave_out in (".venv", ".git", "tests", "bench", "model_repository", "daemon/__pycache__"):
        assert not dockerignore_admits(leave_out), leave_out


@pytest.mark.image
def test_the_images_install_steps_serve_the_shipped_models(tmp_path):
    """The build stage's COPY and RUN steps, run here (there is no Docker engine): files into a build
    folder, the RUN lines through sh with the Dockerfile's ARG and ENV values, /opt/naiad moved under
    tmp_path, pip allowed its cache. The final stage's command then serves the shipped models from that
    virtualenv, and stops within docker stop's 10 s."""
    image = dockerfile()
    build, venv = tmp_path / "src", tmp_path / "opt" / "naiad"
    build.mkdir()
    shims = tmp_path / "bin"
    shims.mkdir()
    (shims / "python").symlink_to(sys.executable)   # the build stage's `python`: this one, 3.11
    # an index that cannot be reached is passed over at once (pip then finds the packages elsewhere)
    env = {**os.environ, **image.args, "PIP_RETRIES": "0", "PATH": f"{shims}:{os.environ['PATH']}"}
    for op, rest in image.stages[0]:
        if op == "ENV":
            for assignment in shlex.split(rest):
                name, _, value = assignment.partition("=")
                if name != "PIP_NO_CACHE_DIR":
                    env[name] = value
        elif op == "COPY":   # into WORKDIR /src, which is `build` here
            *sources, target = rest.split()
            for source in sources:
                destination = build / target / source if target.endswith("/") else build / target
                if (REPO_ROOT / source).is_dir():
                    shutil.copytree(REPO_ROOT / source, destination,
                                    ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(REPO_ROOT / source, destination)
        elif op == "RUN":
            run = subprocess.run(["sh", "-c", rest.replace("/opt/naiad", str(venv))], cwd=build, env=env,
                                 capture_output=True, text=True, timeout=540, check=False)
            assert run.returncode == 0, f"RUN {rest}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    command = json.loads(image.final("ENTRYPOINT")[0]) + json.loads(image.final("CMD")[0])
    http, grpc, metrics = free_port(), free_port(), free_port()
    argv = [str(venv / "bin" / command[0]),
            *[a.replace("=/models", f"={SHIPPED_REPOSITORY}") for a in command[1:]],
            f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}",
            "--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"]
    log_path = tmp_path / "naiad.log"
    clean_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=clean_env)
    try:
        wait_until(lambda: process.poll() is not None or status_or_zero(http, "/v2/health/ready") == 200,
                   "the image's naiad to be ready", timeout=120)
        assert process.poll() is None, log_path.read_text()
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http}")
        index = client.get_model_repository_index()
        shipped = sorted(p.name for p in SHIPPED_REPOSITORY.iterdir() if (p / "config.yaml").exists())
        assert sorted(m["name"] for m in index if m.get("state") == "READY") == shipped, index
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log_path.read_text()
        assert time.monotonic() - stopping < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def status_or_zero(port: int, path: str) -> int:
    try:
        return urllib_status(port, path)
    except OSError:
        return 0
