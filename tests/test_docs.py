"""The examples in README.md and docs/*.md, run: every fenced block with a language (python, yaml, sh,
...) has a line `<!-- doc-test: NAME -->` right before it, and a test here runs or checks the block of
each NAME. Blocks without a language are layouts and printed output, not examples."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tomllib
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import yaml
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import REPO_ROOT, NaiadServer, copy_model

DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
EXAMPLE_LANGUAGES = {"python", "py", "yaml", "yml", "sh", "bash", "console", "shell", "json", "pbtxt", "text"}
MARKER = re.compile(r"^<!-- doc-test: ([\w-]+) -->$")
# every NAME a doc may mark, each checked by a test below
NAMES = {"readme-quick-start", "readme-quick-start-cpu", "readme-test-command", "readme-client",
         "readme-curl", "models-config", "models-python", "models-ensemble", "models-ensemble-curl",
         "pipelines-decoupled-config", "pipelines-decoupled-model", "pipelines-bls", "pipelines-generate",
         "reliability-timeouts", "scheduling-dynamic-batching", "shared-memory-serve",
         "deploy-docker-build", "deploy-docker-run", "deploy-helm", "deploy-kubectl", "deploy-adapter",
         "deploy-inference-service", "deploy-roll",
         "operations-probes", "operations-logging",   # checked in test_readiness.py, test_logging.py
         "readme-naiad-client", "clients-quick-start", "clients-asyncio", "clients-stream",
         "clients-shared-memory", "clients-cli", "clients-perf"}   # checked in test_client_cli.py


@dataclass
class Block:
    path: Path
    line: int          # of the opening fence
    language: str
    text: str
    name: str | None   # from the marker line before it


def blocks() -> list[Block]:
    found = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            fence = re.match(r"^```(\S*)", lines[i])
            if not fence:
                i += 1
                continue
            end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
            marker = MARKER.match(lines[i - 1]) if i else None
            found.append(Block(path, i + 1, fence.group(1), "\n".join(lines[i + 1:end]) + "\n",
                               marker.group(1) if marker else None))
            i = end + 1
    return found


def block(name: str) -> Block:
    assert name in NAMES
    [found] = [b for b in blocks() if b.name == name]
    return found


def where(b: Block) -> str:
    return f"{b.path.relative_to(REPO_ROOT)}:{b.line}"


def test_every_example_is_marked_and_checked():
    marked = []
    for b in blocks():
        if b.language in EXAMPLE_LANGUAGES:
            assert b.name, f"{where(b)}: a ```{b.language} block needs a `<!-- doc-test: NAME -->` line " \
                           "before it and a test in tests/test_docs.py"
        if b.name:
            marked.append(b.name)
    assert len(marked) == len(set(marked)), f"a doc-test name is used twice: {sorted(marked)}"
    assert set(marked) == NAMES, f"not in the docs: {NAMES - set(marked)}; unknown: {set(marked) - NAMES}"


def output_of(command: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a documented command; the test reads its status and output."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def naiad_command(b: Block, segment: str | None = None) -> list[str]:
    """The arguments of the block's `naiad` command (after `naiad`), from its line or `&&` segment."""
    for part in re.split(r"&&|\n", b.text):
        words = shlex.split(part)
        if words and words[0].endswith("naiad") and (segment is None or segment in part):
            return words[1:]
    raise AssertionError(f"{where(b)}: no naiad command")


def serve_as_documented(b: Block, tmp_path: Path) -> NaiadServer:
    """The block's `naiad serve ...`, with this Python, local ports and addresses added."""
    args = naiad_command(b)
    assert args[0] == "serve", where(b)
    at = args.index("--model-repository")
    repository = REPO_ROOT / args[at + 1]
    extra = args[1:at] + args[at + 2:]
    return NaiadServer(repository, tmp_path / "naiad.log", *extra).wait_ready()


@pytest.fixture(scope="module")
def quick_start(tmp_path_factory):
    """The README's quick start server (its `naiad serve` part)."""
    server = serve_as_documented(block("readme-quick-start"), tmp_path_factory.mktemp("quick-start"))
    yield server
    assert server.stop() == 0, server.log()


def test_readme_quick_start_installs_what_the_tests_use_and_serves_every_shipped_model(quick_start):
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    text = block("readme-quick-start").text
    for extras in re.findall(r"\.\[([\w,-]+)\]", text):
        assert set(extras.split(",")) <= set(project["optional-dependencies"]), extras
    test_torch = [d for d in project["optional-dependencies"]["test"] if d.startswith("torch")]
    for pin in re.findall(r"torch==[\d.]+", text):
        assert [pin] == [t.split()[0] for t in test_torch], "the quick start's torch is the one the tests use"
    # CPU-only machines: the same release from PyTorch's CPU index (the Dockerfile's), the same server
    cpu = block("readme-quick-start-cpu").text
    assert re.findall(r"torch==[\d.]+", cpu) == re.findall(r"torch==[\d.]+", text)
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    dockerfile_index = re.search(r"^ARG TORCH_CPU_INDEX=(\S+)$", dockerfile, re.MULTILINE)
    assert f"--index-url {dockerfile_index.group(1)}" in cpu
    assert re.findall(r"\.\[([\w,-]+)\]", cpu) == re.findall(r"\.\[([\w,-]+)\]", text)
    assert naiad_command(block("readme-quick-start-cpu")) == naiad_command(block("readme-quick-start"))
    client = httpclient.InferenceServerClient(quick_start.http_url)
    index = client.get_model_repository_index()
    shipped = sorted(p.parent.name for p in (REPO_ROOT / "model_repository").glob("*/config.yaml"))
    assert sorted(m["name"] for m in index if m.get("state") == "READY") == shipped, index


def test_readme_test_command_is_what_ci_runs():
    command = block("readme-test-command").text.strip()
    assert command in (REPO_ROOT / ".ci" / "run").read_text()


def test_readme_client_example(quick_start):
    code = block("readme-client").text.replace('"localhost:8001"', f'"{quick_start.grpc_url}"')
    assert quick_start.grpc_url in code
    run = output_of([sys.executable, "-c", code])
    assert run.returncode == 0, run.stderr
    a = np.arange(16, dtype=np.int32).reshape(1, 16)
    assert run.stdout == f"{a + 1}\n{a - 1}\n"


def test_readme_curl_examples(quick_start):
    lines = [line for line in block("readme-curl").text.splitlines() if line.strip()]
    answers = []
    for line in lines:
        assert "localhost:8000" in line
        command = line.replace("localhost:8000", quick_start.http_url) + " -w '\\n%{http_code}'"
        run = output_of(["bash", "-c", command])
        body, _, status = run.stdout.rpartition("\n")
        assert run.returncode == 0 and status == "200", f"{line}: {run.stdout} {run.stderr}"
        answers.append(json.loads(body))
    tokens, config, index = answers
    assert [o["name"] for o in tokens["outputs"]] == ["INPUT_IDS", "ATTENTION_MASK"]
    assert config["name"] == "simple"
    assert {m["name"] for m in index} >= {"simple", "tokenizer"}


def test_models_ensemble_example_is_the_shipped_one(quick_start):
    shipped = yaml.safe_load((REPO_ROOT / "model_repository/text_classifier/config.yaml").read_text())
    assert yaml.safe_load(block("models-ensemble").text) == shipped
    [line] = block("models-ensemble-curl").text.split("\n", 1)[:1]
    run = output_of(["bash", "-c", line.replace("localhost:8000", quick_start.http_url)])
    outputs = {o["name"]: o["data"] for o in json.loads(run.stdout)["outputs"]}
    assert outputs["LABEL"][0] in ("negative", "neutral", "positive"), run.stdout


def test_pipelines_generate_examples_print_what_the_doc_shows(quick_start):
    """Each `curl` line of the block, run: what it prints is the lines that follow it (JSON compared)."""
    runs = re.split(r"^(?=curl )", block("pipelines-generate").text, flags=re.MULTILINE)
    for run_text in filter(str.strip, runs):
        command, _, shown = run_text.partition("\n")
        run = output_of(["bash", "-c", command.replace("localhost:8000", quick_start.http_url)])
        printed = [line for line in run.stdout.splitlines() if line.strip()]
        expected = [line for line in shown.splitlines() if line.strip()]
        assert [json.loads(line.removeprefix("data: ")) for line in printed] == \
               [json.loads(line.removeprefix("data: ")) for line in expected], command


def merged(base: dict, example: str) -> dict:
    return {**base, **yaml.safe_load(example)}


# pipelines.md's BLS lines, as the body of a function of a model that calls onnx_mlp
BLS_MODEL = """
import numpy as np
import triton_python_backend_utils as pb_utils


def call(features):
    # the doc's lines
    return pb_utils.InferenceResponse([pb_utils.Tensor("probabilities", probabilities)])


class TritonPythonModel:
    def execute(self, requests):
        return [call(pb_utils.get_input_tensor_by_name(r, "x").as_numpy()) for r in requests]
"""


@pytest.fixture(scope="module")
def example_server(tmp_path_factory):
    """The models the docs' configuration examples make, served together."""
    repository = tmp_path_factory.mktemp("doc-models")
    folder = repository / "example"
    (folder / "1").mkdir(parents=True)
    (folder / "config.yaml").write_text(block("models-config").text)
    (folder / "1" / "model.py").write_text(block("models-python").text)
    for name, example in (("timeouts", "reliability-timeouts"), ("batching", "scheduling-dynamic-batching")):
        config = merged(models.batched("FP32"), block(example).text)
        models.write_model(repository, name, config, models.IDENTITY)
    stream_config = {"backend": "python", "max_batch_size": 0,
                     "input": [models.tensor("text_input", "TYPE_STRING", [1])],
                     "output": [models.tensor("text_output", "TYPE_STRING", [1])]}
    stream_config = merged(stream_config, block("pipelines-decoupled-config").text)
    models.write_model(repository, "decoupled", stream_config, block("pipelines-decoupled-model").text)
    copy_model(REPO_ROOT / "model_repository", "onnx_mlp", repository)
    bls = "\n".join("    " + line for line in block("pipelines-bls").text.splitlines())
    bls_config = {"backend": "python", "max_batch_size": 8, "input": [models.tensor("x", "TYPE_FP32", [8])],
                  "output": [models.tensor("probabilities", "TYPE_FP32", [3])]}
    models.write_model(repository, "bls", bls_config, BLS_MODEL.replace("    # the doc's lines", bls))
    server = NaiadServer(repository, repository / "naiad.log").wait_ready()
    yield server
    assert server.stop() == 0, server.log()


def test_models_config_and_python_model_work_together(example_server):
    client = grpcclient.InferenceServerClient(example_server.grpc_url)
    x = np.arange(32, dtype=np.float32).reshape(2, 16)
    tensor = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
    tensor.set_data_from_numpy(x)
    assert np.array_equal(client.infer("example", [tensor]).as_numpy("OUTPUT0"), np.sqrt(x))
    tensor.set_data_from_numpy(-x - 1)
    with pytest.raises(InferenceServerException, match="INPUT0 must be >= 0") as refused:
        client.infer("example", [tensor])
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    config = client.get_model_config("example", as_json=True)["config"]
    assert config["parameters"]["my_setting"]["string_value"] == "42"
    assert [g["count"] for g in config["instance_group"]] == [2]


def test_reliability_and_scheduling_examples_load(example_server):
    client = httpclient.InferenceServerClient(example_server.http_url)
    timeouts = client.get_model_config("timeouts")["parameters"]
    assert timeouts["execution_timeout_seconds"]["string_value"] == "10"
    assert timeouts["load_timeout_seconds"]["string_value"] == "60"
    batching = client.get_model_config("batching")
    assert batching["max_batch_size"] == 64
    assert batching["dynamic_batching"]["preferred_batch_size"] == [16, 32]
    tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
    for model in ("timeouts", "batching"):
        assert client.infer(model, [tensor]).as_numpy("OUTPUT0").tolist() == [[1, 1, 1]]


def test_pipelines_decoupled_and_bls_examples(example_server):
    client = grpcclient.InferenceServerClient(example_server.grpc_url)
    answers = []
    client.start_stream(callback=lambda result, error: answers.append((result, error)))
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([b"one two three"], dtype=object))
    client.async_stream_infer("decoupled", [text], enable_empty_final_response=True)
    client.stop_stream()
    assert all(error is None for _, error in answers), answers
    words = [r.as_numpy("text_output")[0] for r, _ in answers if r.as_numpy("text_output") is not None]
    assert words == [b"one", b"two", b"three"]
    x = grpcclient.InferInput("x", [2, 8], "FP32")
    x.set_data_from_numpy(np.random.default_rng(0).random((2, 8), dtype=np.float32))
    direct = client.infer("onnx_mlp", [x]).as_numpy("probabilities")
    assert np.array_equal(client.infer("bls", [x]).as_numpy("probabilities"), direct)


def test_shared_memory_serve_command(tmp_path):
    server = serve_as_documented(block("shared-memory-serve"), tmp_path)
    try:
        extensions = httpclient.InferenceServerClient(server.http_url).get_server_metadata()["extensions"]
        assert "system_shared_memory" in extensions
    finally:
        assert server.stop() == 0, server.log()


# --- docs/deploy.md: Docker, Helm and kubectl commands are checked against the files they use (no Docker
# engine or cluster runs them here; tests/test_deploy.py runs the image's install steps and the kubelet)

def commands(name: str) -> list[list[str]]:
    return [shlex.split(line) for line in block(name).text.splitlines() if line.strip()]


def chart_values() -> dict:
    return yaml.safe_load((REPO_ROOT / "deploy/helm/naiad/values.yaml").read_text())


def manifest(kind: str) -> dict:
    [found] = [d for d in yaml.safe_load_all((REPO_ROOT / "deploy/manifests/naiad.yaml").read_text())
               if d and d["kind"] == kind]
    return found


def assert_helm_command(words: list[str]) -> None:
    """helm install|upgrade RELEASE CHART [--reuse-values] [--set key=value]...: the chart exists, the
    release is the one the manifests are rendered for, and every --set key is a value of the chart."""
    assert words[:2] in (["helm", "install"], ["helm", "upgrade"]), words
    release, chart = words[2:4]
    assert (REPO_ROOT / chart / "Chart.yaml").exists()
    assert release == manifest("Deployment")["metadata"]["name"]
    rest = words[4:]
    while rest:
        option = rest.pop(0)
        if option == "--set":
            key = rest.pop(0).split("=", 1)[0]
            node = chart_values()
            for part in re.split(r"(?<!\\)\.", key):
                part = part.replace("\\.", ".")
                assert isinstance(node, dict) and part in node, f"--set {key}: not a value of the chart"
                node = node[part]
        else:
            assert option == "--reuse-values", option


def test_deploy_docker_build_commands():
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    flavors = re.findall(r"^\s+(\w+)\) ", dockerfile, re.MULTILINE)
    default = re.search(r"^ARG FLAVOR=(\w+)$", dockerfile, re.MULTILINE).group(1)
    app_version = yaml.safe_load((REPO_ROOT / "deploy/helm/naiad/Chart.yaml").read_text())["appVersion"]
    built = set()
    for words in commands("deploy-docker-build"):
        assert words[:2] == ["docker", "build"] and words[-1] == "."
        flavor = next((w.split("=", 1)[1] for w in words if w.startswith("FLAVOR=")), default)
        assert flavor in flavors
        tag = words[words.index("-t") + 1]
        assert tag == f"naiad:{app_version}-{flavor}"
        built.add(tag)
    assert built == {f"naiad:{app_version}-{f}" for f in flavors}
    values = chart_values()["image"]
    assert f"{values['repository']}:{values['tag']}" in built


def test_deploy_docker_run_commands(tmp_path):
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    exposed = set(re.search(r"^EXPOSE (.+)$", dockerfile, re.MULTILINE).group(1).split())
    command = json.loads(re.search(r"^CMD (.+)$", dockerfile, re.MULTILINE).group(1))
    repository = next(a.split("=", 1)[1] for a in command if a.startswith("--model-repository="))
    for words in commands("deploy-docker-run"):
        assert words[:3] == ["docker", "run", "--rm"]
        image = next(w for w in words if w.startswith("naiad:"))
        after = words[words.index(image) + 1:]
        [volume] = [words[i + 1] for i, w in enumerate(words) if w == "-v"]
        source, target, mode = volume.split(":")
        assert source == "$PWD/model_repository" and target == repository and mode == "ro"
        if not after:   # the image's own command: serve
            assert {w.split(":")[1] for i, w in enumerate(words) if words[i - 1] == "-p"} == exposed
            assert any(w.startswith("--shm-size=") for w in words)
        else:           # another naiad command, run here on the shipped repository
            args = [a.replace(repository, str(REPO_ROOT / "model_repository")) for a in after]
            run = output_of([sys.executable, "-m", "naiad.daemon", *args], timeout=120)
            assert run.returncode == 0, run.stdout + run.stderr


def test_deploy_helm_and_kubectl_commands():
    for name in ("deploy-helm", "deploy-roll", "deploy-adapter", "deploy-kubectl"):
        for words in commands(name):
            if words[0] == "helm" and name != "deploy-adapter":
                assert_helm_command(words)
            elif words[0] == "helm" or words[:2] == ["kubectl", "apply"]:   # files of this repository
                assert (REPO_ROOT / words[words.index("-f") + 1]).exists()
            else:
                assert words[:3] == ["kubectl", "rollout", "status"]
                assert words[3] == f"deployment/{manifest('Deployment')['metadata']['name']}"


def test_deploy_inference_service_uses_the_runtime():
    service = yaml.safe_load(block("deploy-inference-service").text)
    runtime = manifest("ClusterServingRuntime")
    model = service["spec"]["predictor"]["model"]
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"] == f"pvc://{chart_values()['modelRepository']['persistentVolumeClaim']}/"
