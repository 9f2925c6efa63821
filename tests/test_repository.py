"""The model repository: version policies, the three control modes, reloads with no failed request,
load/unload through the API, broken models that leave the rest serving, `naiad validate`."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests import models
from tests.conftest import SHIPPED_REPOSITORY, wait_until


def version_of(client, model: str, version: str = "") -> int:
    tensor = grpcclient.InferInput("INPUT0", [1, 1], "INT32")
    tensor.set_data_from_numpy(np.zeros((1, 1), np.int32))
    return int(client.infer(model, [tensor], model_version=version).as_numpy("OUTPUT0")[0, 0])


def replace_file(path: Path, text: str) -> None:
    """Write a file the way deployments should: a new file renamed over the old one."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


class Load:
    """Clients that keep calling a model from threads and count what fails."""

    def __init__(self, url: str, model: str, make_input, threads: int = 4):
        self.failures: list[Exception] = []
        self.successes = 0
        self.running = True
        self.threads = [threading.Thread(target=self._run, args=(url, model, make_input)) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, url, model, make_input):
        with grpcclient.InferenceServerClient(url) as client:
            while self.running:
                try:
                    client.infer(model, make_input())
                    self.successes += 1
                except Exception as e:
                    self.failures.append(e)

    def stop(self):
        self.running = False
        for thread in self.threads:
            thread.join()


def slow_input(ms: float = 5):
    tensor = grpcclient.InferInput("INPUT0", [1, 1], "FP32")
    tensor.set_data_from_numpy(np.full((1, 1), ms, np.float32))
    return [tensor]


def test_version_policies(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        assert [version_of(client, "versioned", v) for v in ("", "1", "2", "3")] == [3, 1, 2, 3]
        assert client.get_model_metadata("versioned", as_json=True)["versions"] == ["1", "2", "3"]
        assert [version_of(client, "latest_two", v) for v in ("", "2", "3")] == [3, 2, 3]
        assert not client.is_model_ready("latest_two", "1")
        assert [version_of(client, "specific", v) for v in ("", "1", "3")] == [3, 1, 3]
        assert not client.is_model_ready("specific", "2")
        with pytest.raises(InferenceServerException, match="ready versions: 1, 3"):
            version_of(client, "specific", "2")
        stats = client.get_inference_statistics("versioned", as_json=True)["model_stats"]
        assert [s["version"] for s in stats] == ["1", "2", "3"]


def test_broken_models_are_unavailable_with_reasons(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        index = {(m["name"], m.get("version", "")): m
                 for m in client.get_model_repository_index(as_json=True)["models"]}
        config = index[("broken_config", "")]
        assert config["state"] == "UNAVAILABLE"
        for words in ("broken_config/config.yaml", "input[0].dimz", "did you mean 'dims'",
                      "input[0].dims: missing"):
            assert words in config["reason"], config["reason"]
        code = index[("broken_code", "1")]
        assert code["state"] == "UNAVAILABLE"
        assert "ModuleNotFoundError" in code["reason"] and "no_such_module_anywhere" in code["reason"]
        with pytest.raises(InferenceServerException, match="not ready: .*dimz") as raised:
            client.infer("broken_config", slow_input())
        assert raised.value.status() == "StatusCode.UNAVAILABLE"
        assert client.is_server_ready()  # the rest serves
        assert index[("pbtxt_model", "1")]["state"] == "READY"
    log = server.log()
    assert "broken_config" in log and "input[0].dimz: unknown field" in log
    assert "no_such_module_anywhere" in log


def test_shipped_repository_with_one_broken_config(tmp_path, start_server):
    """The server starts, the other shipped models serve, and the reason is in the index and the log."""
    repository = tmp_path / "shipped"
    shutil.copytree(SHIPPED_REPOSITORY, repository)
    config = repository / "simple_string" / "config.yaml"
    config.write_text(config.read_text().replace("max_batch_size: 8", "max_batch_size: eight"))
    server = start_server(repository)
    client = httpclient.InferenceServerClient(server.http_url)
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["simple_string"]["state"] == "UNAVAILABLE"
    assert "simple_string/config.yaml: max_batch_size: expected an integer, got 'eight'" in \
        index["simple_string"]["reason"]
    assert index["simple"]["state"] == index["tokenizer"]["state"] == "READY"
    assert client.is_model_ready("simple") and not client.is_model_ready("simple_string")
    assert "max_batch_size: expected an integer, got 'eight'" in server.log()


def test_poll_mode_add_change_remove_without_failed_requests(tmp_path, repository, test_repository,
                                                             start_server):
    shutil.copytree(test_repository / "slow", repository / "slow")
    server = start_server(repository, "--model-control-mode", "poll", "--repository-poll-secs", "0.2")
    client = grpcclient.InferenceServerClient(server.grpc_url)
    load = Load(server.grpc_url, "slow", slow_input)
    try:
        # add: a new folder appears (moved in whole, as a deployment would)
        staged = tmp_path / "staged"
        models.write_model(staged, "versioned", models.batched("INT32", (1,)), models.VERSIONED, versions=(1,))
        os.replace(staged / "versioned", repository / "versioned")
        wait_until(lambda: client.is_model_ready("versioned"), "the added model")
        assert version_of(client, "versioned") == 1

        # change: a new version folder, then a changed config, while `slow` is under load
        shutil.copytree(repository / "versioned" / "1", repository / "versioned" / "2")
        wait_until(lambda: client.is_model_ready("versioned", "2"), "version 2")
        assert version_of(client, "versioned") == 2 and not client.is_model_ready("versioned", "1")
        slow_config = repository / "slow" / "config.yaml"
        replace_file(slow_config, slow_config.read_text().replace("max_batch_size: 8", "max_batch_size: 4"))
        wait_until(lambda: client.get_model_config("slow").config.max_batch_size == 4, "the reload")

        # a broken change keeps the previous load serving
        replace_file(slow_config, "max_batch_size: [")
        wait_until(lambda: "reload failed" in json.dumps(client.get_model_repository_index(as_json=True)),
                   "the failed reload")
        assert client.is_model_ready("slow")
        replace_file(slow_config, (test_repository / "slow" / "config.yaml").read_text())
        wait_until(lambda: client.get_model_config("slow").config.max_batch_size == 8, "the repair")

        # remove
        shutil.rmtree(repository / "versioned")
        wait_until(lambda: "versioned" not in {m["name"] for m in
                                               client.get_model_repository_index(as_json=True)["models"]},
                   "the removal")
        assert not client.is_model_ready("versioned")
        with pytest.raises(InferenceServerException) as raised:
            version_of(client, "versioned")
        assert raised.value.status() == "StatusCode.NOT_FOUND"
    finally:
        load.stop()
        client.close()
    assert load.failures == [] and load.successes > 50


def test_explicit_mode(repository, test_repository, start_server):
    for name in ("lifecycle_target", "versioned"):
        source = "versioned" if name == "versioned" else "slow"
        shutil.copytree(test_repository / source, repository / name)
    models.write_model(repository, "lifecycle", models.batched("INT32", (1,)), models.LIFECYCLE)
    server = start_server(repository, "--model-control-mode", "explicit", "--load-model", "lifecycle")
    client = httpclient.InferenceServerClient(server.http_url)
    grpc_client = grpcclient.InferenceServerClient(server.grpc_url)

    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["lifecycle"]["state"] == "READY" and index["versioned"] == {"name": "versioned"}
    args = json.loads((repository / "lifecycle" / "initialized.json").read_text())
    assert args["model_name"] == "lifecycle" and args["model_version"] == "1"
    assert args["model_instance_kind"] == "CPU" and json.loads(args["model_config"])["max_batch_size"] == 8

    # load through HTTP, unload through gRPC
    assert not client.is_model_ready("versioned")
    client.load_model("versioned")
    assert client.is_model_ready("versioned") and version_of(grpc_client, "versioned") == 3
    grpc_client.unload_model("lifecycle")
    assert (repository / "lifecycle" / "finalized").read_text() == "yes"
    assert not client.is_model_ready("lifecycle")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["lifecycle"]["state"] == "UNAVAILABLE" and index["lifecycle"]["reason"] == "unloaded"
    with pytest.raises(InferenceServerException, match="not ready: unloaded"):
        version_of(grpc_client, "lifecycle")

    # a configuration given with the load request replaces the folder's
    override = models.batched("INT32", (1,)) | {"max_batch_size": 2, "version_policy": {"specific": {"versions": [1]}}}
    grpc_client.load_model("versioned", config=json.dumps(override))
    assert client.get_model_config("versioned")["max_batch_size"] == 2 and version_of(grpc_client, "versioned") == 1

    # a model that exists only in the request: its files and its configuration
    code = models.IDENTITY.replace("\n    ", "\n").encode()
    client.load_model("pushed", config=json.dumps(models.batched("FP32")),
                      files={"file:1/model.py": code})
    tensor = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    tensor.set_data_from_numpy(np.ones((1, 3), np.float32))
    assert client.infer("pushed", [tensor]).as_numpy("OUTPUT0").tolist() == [[1, 1, 1]]
    grpc_client.unload_model("pushed")
    grpc_client.load_model("pushed2", config=json.dumps(models.batched("FP32")), files={"file:1/model.py": code})
    assert grpc_client.is_model_ready("pushed2")

    # load failures say why, and name the model
    with pytest.raises(InferenceServerException, match="no model folder 'nowhere'"):
        client.load_model("nowhere")
    with pytest.raises(InferenceServerException, match="not a model name"):
        grpc_client.load_model("../etc")
    with pytest.raises(InferenceServerException, match=r"load parameter 'config'.*input\[0\]"):
        client.load_model("versioned", config=json.dumps({"input": [{"name": 3}]}))
    assert version_of(grpc_client, "versioned") == 1  # the failed reload left the model serving
    with pytest.raises(InferenceServerException, match="unknown model 'never'"):
        client.unload_model("never")
    with pytest.raises(InferenceServerException, match="file:../x"):
        client.load_model("evil", config=json.dumps(models.batched("FP32")), files={"file:../x": b"x"})
    client.close()
    grpc_client.close()


def test_explicit_mode_load_all(repository, test_repository, start_server):
    for name in ("versioned", "slow"):
        shutil.copytree(test_repository / name, repository / name)
    server = start_server(repository, "--model-control-mode", "explicit", "--load-model", "*")
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("versioned") and client.is_model_ready("slow")


def test_shutdown_lets_requests_finish(repository, test_repository, start_server):
    shutil.copytree(test_repository / "slow", repository / "slow")
    server = start_server(repository)
    results = []

    def call():
        with grpcclient.InferenceServerClient(server.grpc_url) as client:
            results.append(client.infer("slow", slow_input(500)).as_numpy("OUTPUT0")[0, 0])

    callers = [threading.Thread(target=call) for _ in range(2)]
    for caller in callers:
        caller.start()
    time.sleep(0.2)
    assert server.stop() == 0
    for caller in callers:
        caller.join()
    assert results == [500, 500]
    assert "shutting down" in server.log() and "stopped" in server.log()


def test_validate_command(tmp_path, test_repository):
    ok = subprocess.run([sys.executable, "-m", "naiad.daemon", "validate", str(SHIPPED_REPOSITORY)],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout
    assert "simple: ok (backend python, version 1)" in ok.stdout and "0 problem(s)" in ok.stdout
    broken = subprocess.run([sys.executable, "-m", "naiad.daemon", "validate", str(test_repository)],
                            capture_output=True, text=True)
    assert broken.returncode == 1
    assert "broken_config: " in broken.stdout and "input[0].dimz: unknown field" in broken.stdout
    assert "input[0].dims: missing" in broken.stdout
