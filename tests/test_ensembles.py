"""Ensembles end to end, with tritonclient over gRPC and HTTP: outputs equal running the steps by hand,
independent steps run at the same time, a member's error fails the request with its message, every
load-time check gives its reason, an ensemble follows its members' loading and unloading, statistics
count the ensemble and each member, and a Triton-format repository (config.pbtxt) loads and answers."""
from __future__ import annotations

import random
import textwrap
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException, np_to_triton_dtype

from tests import models
from tests.conftest import session_server, wait_until
from tests.models import tensor

PROTOCOLS = ("grpc", "http")

SCALE = """
    from naiad.backends.python_api import InferenceResponse, Tensor

    FACTOR, OFFSET = {factor}, {offset}

    class TritonPythonModel:
        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0") * FACTOR + OFFSET)])
                    for r in requests]
"""

ADD = """
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0") + r.input("INPUT1"))])
                    for r in requests]
"""

# Two of these run side by side in one ensemble: each marks that its step of request TOKEN started,
# then waits (at most 10 s) for the other's mark. Run one after the other, the first would wait in
# vain and fail the request. WINDOW: when the step started and ended (time.monotonic()).
BARRIER = """
    import time
    from pathlib import Path

    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor, TritonError

    class TritonPythonModel:
        def initialize(self, args):
            self.name = args["model_name"]
            self.marks = Path(args["model_repository"]).parent / "marks"
            self.marks.mkdir(exist_ok=True)

        def execute(self, requests):
            out = []
            for r in requests:
                token = int(r.input("TOKEN").reshape(-1)[0])
                start = time.monotonic()
                (self.marks / f"{token}.{self.name}").touch()
                while len(list(self.marks.glob(f"{token}.*"))) < 2:
                    if time.monotonic() > start + 10:
                        out.append(InferenceResponse(error=TritonError(
                            f"{self.name}: the other step of request {token} did not start within 10 s")))
                        break
                    time.sleep(0.001)
                else:
                    out.append(InferenceResponse([Tensor("WINDOW", np.array([[start, time.monotonic()]]))]))
            return out
"""

# Reads both barriers' windows; says when it started.
JOIN = """
    import time
    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def execute(self, requests):
            started = time.monotonic()
            return [InferenceResponse([
                Tensor("BOTH", np.concatenate([r.input("A"), r.input("B")], axis=1)),
                Tensor("STARTED", np.full((r.input("A").shape[0], 1), started))]) for r in requests]
"""

# Triton's own Python model style, for the Triton-format repository.
TRITON_SCALE = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", x * {factor} + {offset})]))
            return responses
"""


def thread_model(config: dict) -> dict:
    """A Python model whose instance runs in a thread: cheap to start, for the members that compute."""
    return {**config, "parameters": {"execution": "thread"}}


def step(model: str, inputs: dict, outputs: dict) -> dict:
    return {"model_name": model, "model_version": -1, "input_map": inputs, "output_map": outputs}


def ensemble(inputs: list[dict], outputs: list[dict], steps: list[dict], max_batch_size: int = 8) -> dict:
    return {"platform": "ensemble", "max_batch_size": max_batch_size, "input": inputs, "output": outputs,
            "ensemble_scheduling": {"step": steps}}


FP32 = [tensor("IN", "FP32", [-1])]

# Broken on purpose, each in one way: model -> (its configuration, words its reason must hold)
BROKEN = {
    "bad_unknown_member": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                                    [step("no_such_model", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                           ["step[0].model_name: model 'no_such_model' is not available",
                            "has no model 'no_such_model'"]),
    "bad_cycle": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                           [step("add", {"INPUT0": "IN", "INPUT1": "t1"}, {"OUTPUT0": "t0"}),
                            step("double", {"INPUT0": "t0"}, {"OUTPUT0": "t1"}),
                            step("plus_one", {"INPUT0": "t0"}, {"OUTPUT0": "OUT"})]),
                  ["the steps form a cycle: step 0 (model 'add') -> step 1 (model 'double') -> "
                   "step 0 (model 'add')"]),
    "bad_no_producer": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                                 [step("add", {"INPUT0": "IN", "INPUT1": "ghost"}, {"OUTPUT0": "OUT"})]),
                        ["step[0].input_map.INPUT1: tensor 'ghost' is neither an input of the ensemble "
                         "nor made by a step"]),
    "bad_two_producers": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                                   [step("double", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"}),
                                    step("plus_one", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                          ["step[1].output_map.OUTPUT0: tensor 'OUT' is made by step 0 too"]),
    "bad_type": (ensemble(FP32, [tensor("OUT", "INT32", [4])],
                          [step("double", {"INPUT0": "IN"}, {"OUTPUT0": "t"}),
                           step("fixed4", {"INPUT0": "t"}, {"OUTPUT0": "OUT"})]),
                 ["step[1].input_map.INPUT0: tensor 't' is FP32 from output 'OUTPUT0' of model 'double' "
                  "(step 0), but input 'INPUT0' of model 'fixed4' (step 1) is INT32"]),
    "bad_shape": (ensemble([tensor("IN", "INT32", [3])], [tensor("OUT", "INT32", [4])],
                           [step("fixed4", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                  ["tensor 'IN' has shape [-1,3] from ensemble input 'IN', but input 'INPUT0' of model "
                   "'fixed4' (step 0) has shape [-1,4]"]),
    "bad_output": (ensemble([tensor("IN", "INT32", [4])], [tensor("OUT", "FP32", [4])],
                            [step("fixed4", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                   ["output 'OUT': tensor 'OUT' is INT32 from output 'OUTPUT0' of model 'fixed4' (step 0), "
                    "but ensemble output 'OUT' is FP32"]),
    "bad_unused_input": (ensemble(FP32 + [tensor("EXTRA", "FP32", [1])], [tensor("OUT", "FP32", [-1])],
                                  [step("double", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                         ["input 'EXTRA': no step reads it"]),
    "bad_missing_output": (ensemble(FP32, [tensor("OUT", "FP32", [-1]), tensor("MISSING", "FP32", [1])],
                                    [step("double", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                           ["output 'MISSING': no step makes it"]),
    "bad_batch": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                           [step("small_batch", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})]),
                  ["model 'small_batch' has max_batch_size 2, smaller than the ensemble's 8"]),
    "bad_member_input": (ensemble(FP32, [tensor("OUT", "FP32", [-1])],
                                  [step("double", {"NOPE": "IN"}, {"OUTPUT0": "OUT"})]),
                         ["step[0].input_map: model 'double' requires input 'INPUT0', which no entry gives",
                          "step[0].input_map.NOPE: model 'double' has no input 'NOPE'"]),
    "bad_not_ensemble": ({**models.batched("FP32"), "ensemble_scheduling": {
                              "step": [step("double", {"INPUT0": "INPUT0"}, {"OUTPUT0": "OUTPUT0"})]}},
                         ["ensemble_scheduling: only an ensemble has steps; set platform: ensemble"]),
    "bad_no_steps": (ensemble(FP32, [tensor("OUT", "FP32", [-1])], []),
                     ["ensemble_scheduling.step: missing; an ensemble lists its steps"]),
}


def write_repository(repository) -> None:
    write = models.write_model
    write(repository, "double", thread_model(models.batched("FP32")), SCALE.format(factor=2, offset=0))
    write(repository, "plus_one", thread_model(models.batched("FP32")), SCALE.format(factor=1, offset=1))
    write(repository, "add", thread_model({**models.batched("FP32"), "input": [
        tensor("INPUT0", "FP32", [-1]), tensor("INPUT1", "FP32", [-1])]}), ADD)
    write(repository, "fixed4", thread_model(models.batched("INT32", (4,))), models.IDENTITY)
    write(repository, "small_batch", thread_model({**models.batched("FP32"), "max_batch_size": 2}),
          models.IDENTITY)
    write(repository, "faulty", models.batched("INT32", (4,)), models.FAULTY)
    barrier = {"backend": "python", "max_batch_size": 8, "input": [tensor("TOKEN", "INT64", [1])],
               "output": [tensor("WINDOW", "FP64", [2])]}
    write(repository, "barrier_a", barrier, BARRIER)
    write(repository, "barrier_b", barrier, BARRIER)
    write(repository, "join", thread_model({
        "backend": "python", "max_batch_size": 8,
        "input": [tensor("A", "FP64", [2]), tensor("B", "FP64", [2])],
        "output": [tensor("BOTH", "FP64", [4]), tensor("STARTED", "FP64", [1])]}), JOIN)
    write(repository, "batched_member", thread_model({
        **models.batched("FP32", (2,)), "max_batch_size": 4,
        "dynamic_batching": {"preferred_batch_size": [4], "max_queue_delay_microseconds": 5_000_000}}),
        models.IDENTITY)

    # IN -> double -> MID -> plus_one -> OUT; MID is an output too
    write(repository, "chain", ensemble(FP32, [tensor("OUT", "FP32", [-1]), tensor("MID", "FP32", [-1])], [
        step("double", {"INPUT0": "IN"}, {"OUTPUT0": "MID"}),
        step("plus_one", {"INPUT0": "MID"}, {"OUTPUT0": "OUT"})]))
    # an ensemble as a step of another: IN -> chain -> double -> OUT
    write(repository, "nested", ensemble(FP32, [tensor("OUT", "FP32", [-1])], [
        step("double", {"INPUT0": "chained"}, {"OUTPUT0": "OUT"}),
        step("chain", {"IN": "IN"}, {"OUT": "chained"})]))
    # TOKEN -> barrier_a, barrier_b side by side -> join, which waits for both
    write(repository, "fan_out", ensemble(
        [tensor("TOKEN", "INT64", [1])],
        [tensor("BOTH", "FP64", [4]), tensor("STARTED", "FP64", [1])],
        [step("join", {"A": "a", "B": "b"}, {"BOTH": "BOTH", "STARTED": "STARTED"}),  # listed first
         step("barrier_a", {"TOKEN": "TOKEN"}, {"WINDOW": "a"}),
         step("barrier_b", {"TOKEN": "TOKEN"}, {"WINDOW": "b"})]))
    write(repository, "faulty_pipeline", ensemble(
        [tensor("IN", "INT32", [4])], [tensor("OUT", "INT32", [4])],
        [step("fixed4", {"INPUT0": "IN"}, {"OUTPUT0": "x"}),
         step("faulty", {"INPUT0": "x"}, {"OUTPUT0": "OUT"})]))
    write(repository, "batching_pipeline", ensemble(
        [tensor("IN", "FP32", [2])], [tensor("OUT", "FP32", [2])],
        [step("batched_member", {"INPUT0": "IN"}, {"OUTPUT0": "OUT"})], max_batch_size=4))
    for name, (config, _) in BROKEN.items():
        write(repository, name, config, models.IDENTITY if "backend" in config else None)
    write_triton_repository(repository)


def write_triton_repository(repository) -> None:
    """An ensemble and its members as Triton loads them: config.pbtxt, an empty version folder."""
    for name, factor, offset in (("tr_scale", 3, 0), ("tr_shift", 1, -5)):
        folder = models.write_model(repository, name, None, TRITON_SCALE.format(factor=factor, offset=offset))
        (folder / "config.pbtxt").write_text(textwrap.dedent(f"""
            name: "{name}"
            backend: "python"
            max_batch_size: 4
            input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] }} ]
            output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] }} ]
            instance_group [ {{ kind: KIND_CPU count: 1 }} ]
        """))
    folder = models.write_model(repository, "triton_ensemble", None)
    (folder / "config.pbtxt").write_text(textwrap.dedent("""
        name: "triton_ensemble"
        platform: "ensemble"
        max_batch_size: 4
        input [ { name: "RAW" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "RESULT" data_type: TYPE_FP32 dims: [ 3 ] } ]
        ensemble_scheduling {
          step [
            {
              model_name: "tr_scale"
              model_version: -1
              input_map { key: "INPUT0" value: "RAW" }
              output_map { key: "OUTPUT0" value: "scaled" }
            },
            {
              model_name: "tr_shift"
              model_version: -1
              input_map { key: "INPUT0" value: "scaled" }
              output_map { key: "OUTPUT0" value: "RESULT" }
            }
          ]
        }
    """))
    assert not any((folder / "1").iterdir())


@pytest.fixture(scope="session")
def ensemble_repository(tmp_path_factory):
    repository = tmp_path_factory.mktemp("ensembles")
    write_repository(repository)
    return repository


@pytest.fixture(scope="session")
def ensemble_server(ensemble_repository, tmp_path_factory):
    yield from session_server(ensemble_repository, tmp_path_factory, "ensembles",
                              "--allow-client-shm", "true")


def infer(server, protocol: str, model: str, inputs: dict[str, np.ndarray],
          outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """One request with tritonclient; the outputs that came back, by name."""
    module = grpcclient if protocol == "grpc" else httpclient
    url = server.grpc_url if protocol == "grpc" else server.http_url
    client = module.InferenceServerClient(url)
    try:
        tensors = []
        for name, array in inputs.items():
            tensors.append(module.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype)))
            tensors[-1].set_data_from_numpy(array)
        requested = [module.InferRequestedOutput(name) for name in outputs] if outputs else None
        result = client.infer(model, tensors, outputs=requested)
        response = result.get_response()
        names = [o.name for o in response.outputs] if protocol == "grpc" else [
            o["name"] for o in response["outputs"]]
        return {name: result.as_numpy(name) for name in names}
    finally:
        client.close()


def index(server) -> dict[str, dict]:
    """The repository index by model (the first row of each)."""
    rows = httpclient.InferenceServerClient(server.http_url).get_model_repository_index()
    found = {}
    for row in rows:
        found.setdefault(row["name"], row)
    return found


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_chain_equals_its_steps_by_hand(ensemble_server, protocol):
    x = np.array([[1.5, -2.0, 3.0], [0.0, 4.0, 8.0]], np.float32)
    mid = infer(ensemble_server, protocol, "double", {"INPUT0": x})["OUTPUT0"]
    out = infer(ensemble_server, protocol, "plus_one", {"INPUT0": mid})["OUTPUT0"]
    got = infer(ensemble_server, protocol, "chain", {"IN": x})
    assert set(got) == {"OUT", "MID"}   # every output, no intermediate of its own
    np.testing.assert_array_equal(got["MID"], mid)
    np.testing.assert_array_equal(got["OUT"], out)
    np.testing.assert_array_equal(got["OUT"], x * 2 + 1)
    only = infer(ensemble_server, protocol, "chain", {"IN": x}, outputs=["OUT"])
    assert set(only) == {"OUT"}
    np.testing.assert_array_equal(only["OUT"], out)
    np.testing.assert_array_equal(infer(ensemble_server, protocol, "nested", {"IN": x})["OUT"], out * 2)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_inputs_and_outputs_in_shared_memory(ensemble_server, protocol):
    """The ensemble reads its input from the client's region and writes the output asked for there."""
    module = grpcclient if protocol == "grpc" else httpclient
    url = ensemble_server.grpc_url if protocol == "grpc" else ensemble_server.http_url
    x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    name = f"ensemble_{protocol}"
    handle = shm.create_shared_memory_region(name, f"/naiadtest_{name}", 64)
    client = module.InferenceServerClient(url)
    try:
        shm.set_shared_memory_region(handle, [x])
        client.register_system_shared_memory(name, f"/naiadtest_{name}", 64)
        tensor = module.InferInput("IN", [1, 4], "FP32")
        tensor.set_shared_memory(name, x.nbytes)
        out = module.InferRequestedOutput("OUT")
        out.set_shared_memory(name, x.nbytes, offset=32)
        result = client.infer("chain", [tensor], outputs=[out])
        assert result.get_output("OUT") is not None and result.as_numpy("MID") is None
        written = shm.get_contents_as_numpy(handle, np.float32, [1, 4], offset=32)
        np.testing.assert_array_equal(written, x * 2 + 1)
    finally:
        client.unregister_system_shared_memory(name)
        client.close()
        shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shipped_text_classifier_equals_its_steps_by_hand(shipped_server, protocol):
    texts = np.array([["Serving models is fast!"], ["this is slow, not good"], ["hello world"]], dtype=object)
    tokens = infer(shipped_server, protocol, "tokenizer", {"TEXT": texts})
    probabilities = infer(shipped_server, protocol, "sentiment", tokens)["PROBABILITIES"]
    labels = infer(shipped_server, protocol, "sentiment_labels", {"PROBABILITIES": probabilities})
    got = infer(shipped_server, protocol, "text_classifier", {"TEXT": texts})
    assert set(got) == {"LABEL", "SCORE", "PROBABILITIES"}
    np.testing.assert_array_equal(got["PROBABILITIES"], probabilities)
    np.testing.assert_array_equal(got["SCORE"], labels["SCORE"])
    assert got["LABEL"].tolist() == labels["LABEL"].tolist() == [[b"positive"], [b"negative"], [b"neutral"]]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_independent_steps_run_at_the_same_time(ensemble_server, protocol):
    token = random.getrandbits(48)
    got = infer(ensemble_server, protocol, "fan_out", {"TOKEN": np.array([[token]], np.int64)})
    a_start, a_end, b_start, b_end = got["BOTH"][0]
    # each barrier step waited for the other to start: their windows overlap
    assert a_start < b_end and b_start < a_end
    # the step that reads both started once both had answered
    assert got["STARTED"][0, 0] >= max(a_end, b_end)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_members_error_fails_the_request_with_its_message(ensemble_server, protocol):
    for code, words in ((-2, "bad value -2"), (-1, "the model broke on purpose")):
        x = np.full((1, 4), code, np.int32)
        with pytest.raises(InferenceServerException) as direct:
            infer(ensemble_server, protocol, "faulty", {"INPUT0": x})
        with pytest.raises(InferenceServerException) as raised:
            infer(ensemble_server, protocol, "faulty_pipeline", {"IN": x})
        message = raised.value.message()
        assert words in message and direct.value.message() in message
        assert "model 'faulty' (step 1 of ensemble 'faulty_pipeline')" in message
        assert raised.value.status() == direct.value.status()
    # a request that does not fit the ensemble fails before any step runs
    with pytest.raises(InferenceServerException,
                       match="input 'IN': expected shape \\[-1,4\\], got \\[1,3\\]"):
        infer(ensemble_server, protocol, "faulty_pipeline", {"IN": np.zeros((1, 3), np.int32)})


def test_members_dynamic_batching_applies(ensemble_server):
    """Four ensemble requests at once reach their member as one batch of its preferred size."""
    client = httpclient.InferenceServerClient(ensemble_server.http_url)
    before = client.get_inference_statistics("batched_member")["model_stats"][0]
    results, errors = [], []

    def one(i: int) -> None:
        try:
            got = infer(ensemble_server, "http", "batching_pipeline", {"IN": np.full((1, 2), i, np.float32)})
            results.append((i, got["OUT"]))
        except InferenceServerException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors and len(results) == 4
    assert all((out == i).all() and out.shape == (1, 2) for i, out in results)
    after = client.get_inference_statistics("batched_member")["model_stats"][0]
    assert after["execution_count"] - before["execution_count"] == 1
    assert after["inference_count"] - before["inference_count"] == 4
    assert [b["batch_size"] for b in after["batch_stats"]] == [4]


@pytest.mark.parametrize("model", sorted(BROKEN))
def test_load_time_checks_give_their_reason(ensemble_server, model):
    row = index(ensemble_server)[model]
    assert row["state"] == "UNAVAILABLE"
    for words in BROKEN[model][1]:
        assert words in row["reason"], row["reason"]
    assert not httpclient.InferenceServerClient(ensemble_server.http_url).is_model_ready(model)


def test_triton_format_repository(ensemble_server, ensemble_repository):
    assert (ensemble_repository / "triton_ensemble" / "config.pbtxt").exists()
    x = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    for protocol in PROTOCOLS:
        got = infer(ensemble_server, protocol, "triton_ensemble", {"RAW": x})
        np.testing.assert_array_equal(got["RESULT"], x * 3 - 5)
    with grpcclient.InferenceServerClient(ensemble_server.grpc_url) as client:
        config = client.get_model_config("triton_ensemble", as_json=True)["config"]
        metadata = client.get_model_metadata("triton_ensemble", as_json=True)
    assert config["platform"] == metadata["platform"] == "ensemble"
    steps = config["ensemble_scheduling"]["step"]
    assert [s["model_name"] for s in steps] == ["tr_scale", "tr_shift"]
    assert steps[0]["input_map"] == {"INPUT0": "RAW"} and steps[1]["output_map"] == {"OUTPUT0": "RESULT"}
    assert int(steps[0]["model_version"]) == -1
    http = httpclient.InferenceServerClient(ensemble_server.http_url)
    http_config = http.get_model_config("triton_ensemble")
    assert http_config["ensemble_scheduling"] == {"step": [
        {"model_name": "tr_scale", "model_version": -1, "input_map": {"INPUT0": "RAW"},
         "output_map": {"OUTPUT0": "scaled"}},
        {"model_name": "tr_shift", "model_version": -1, "input_map": {"INPUT0": "scaled"},
         "output_map": {"OUTPUT0": "RESULT"}}], "max_inflight_requests": 0}


def test_explicit_mode_members_load_unload_and_statistics(ensemble_repository, start_server):
    server = start_server(ensemble_repository, "--model-control-mode", "explicit", "--load-model", "chain")
    http = httpclient.InferenceServerClient(server.http_url)
    grpc = grpcclient.InferenceServerClient(server.grpc_url)
    rows = index(server)
    # the ensemble's members loaded with it, nothing else did
    ready = {name for name, row in rows.items() if row.get("state") == "READY"}
    assert ready == {"chain", "double", "plus_one"}

    x = np.array([[1.0, 2.0]], np.float32)
    for protocol in PROTOCOLS:
        infer(server, protocol, "chain", {"IN": x})
    infer(server, "grpc", "chain", {"IN": np.ones((3, 2), np.float32)})
    stats = {s["name"]: s for s in http.get_inference_statistics()["model_stats"]}
    for name in ("chain", "double", "plus_one"):   # the ensemble's requests, and each member's own
        assert stats[name]["inference_stats"]["success"]["count"] == 3, stats[name]
        assert stats[name]["inference_count"] == 5
    assert stats["chain"]["inference_stats"]["fail"]["count"] == 0

    # a member unloaded: the ensemble is unavailable and says why; requests fail naming the member
    grpc.unload_model("plus_one")
    row = index(server)["chain"]
    assert row["state"] == "UNAVAILABLE"
    assert "member model 'plus_one' is not ready: unloaded" in row["reason"]
    assert not http.is_model_ready("chain") and not grpc.is_model_ready("chain")
    with pytest.raises(InferenceServerException, match="model 'plus_one' \\(step 1 of ensemble 'chain'\\)"):
        infer(server, "http", "chain", {"IN": x})
    assert http.get_inference_statistics("chain")["model_stats"][0]["inference_stats"]["fail"]["count"] == 1

    # loaded again: the ensemble is back
    http.load_model("plus_one")
    assert index(server)["chain"] == {"name": "chain", "version": "1", "state": "READY", "reason": ""}
    assert grpc.is_model_ready("chain")
    np.testing.assert_array_equal(infer(server, "grpc", "chain", {"IN": x})["OUT"], x * 2 + 1)

    # loading an ensemble loads its members first
    for name in ("chain", "double", "plus_one"):
        http.unload_model(name)
    wait_until(lambda: not http.is_model_ready("double"), "double to unload")
    grpc.load_model("chain")
    assert all(http.is_model_ready(name) for name in ("chain", "double", "plus_one"))
    np.testing.assert_array_equal(infer(server, "http", "chain", {"IN": x})["MID"], x * 2)

    # an ensemble whose member cannot load fails to load, saying why
    with pytest.raises(InferenceServerException, match="model 'no_such_model' is not available"):
        http.load_model("bad_unknown_member")
    grpc.close()


def test_poll_mode_follows_members(tmp_path, repository, start_server):
    """An ensemble that came before its members loads once they serve; a member that changes so that
    it no longer fits makes the ensemble unavailable, saying why."""
    staged = tmp_path / "staged"
    write_repository(staged)
    server = start_server(repository, "--model-control-mode", "poll", "--repository-poll-secs", "0.1")
    http = httpclient.InferenceServerClient(server.http_url)
    (staged / "chain").rename(repository / "chain")
    row = wait_until(lambda: (r := index(server).get("chain", {})).get("state") == "UNAVAILABLE" and r,
                     "the ensemble's load to fail")
    assert "model 'double' is not available: the repository" in row["reason"]
    for name in ("double", "plus_one"):
        (staged / name).rename(repository / name)
    wait_until(lambda: http.is_model_ready("chain"), "the ensemble, once its members serve")
    x = np.array([[1.0, 2.0]], np.float32)
    np.testing.assert_array_equal(infer(server, "http", "chain", {"IN": x})["OUT"], x * 2 + 1)

    config = repository / "plus_one" / "config.yaml"
    changed = tmp_path / "config.yaml"
    changed.write_text(config.read_text().replace("FP32", "INT32"))
    changed.replace(config)
    wait_until(lambda: index(server)["chain"]["state"] == "UNAVAILABLE", "the ensemble to notice")
    assert ("its members changed since it loaded: ensemble_scheduling.step[1].input_map.INPUT0: tensor "
            "'MID' is FP32 from output 'OUTPUT0' of model 'double' (step 0), but input 'INPUT0' of model "
            "'plus_one' (step 1) is INT32") in index(server)["chain"]["reason"]
