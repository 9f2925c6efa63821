"""The Python model API: Triton-style models, async execute, optional inputs, reshape, instances."""
from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient


def infer(client, model, arrays: dict, datatype="FP32"):
    inputs = []
    for name, array in arrays.items():
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return client.infer(model, inputs)


def test_triton_style_model_runs_unchanged(server):
    """A model written for Triton: `import triton_python_backend_utils as pb_utils`, config helpers."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        x = np.arange(8, dtype=np.int32).reshape(2, 4)
        result = infer(client, "triton_style", {"INPUT0": x}, "INT32")
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x * 2)
        assert result.as_numpy("VERSION").tolist() == [[b"1"], [b"1"]]


def test_async_execute(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        x = np.arange(4, dtype=np.int32).reshape(1, 4)
        np.testing.assert_array_equal(infer(client, "async_execute", {"INPUT0": x}, "INT32").as_numpy("OUTPUT0"),
                                      x + 1)


def test_optional_input(server):
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        x = np.ones((1, 2), np.float32)
        assert infer(client, "optional_input", {"INPUT0": x}).as_numpy("OUTPUT0").tolist() == [[1, 1]]
        both = infer(client, "optional_input", {"INPUT0": x, "BIAS": x * 2})
        assert both.as_numpy("OUTPUT0").tolist() == [[3, 3]]


def test_reshape(server):
    """The client sees dims [6]; the model gets and returns [2, 3]."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        x = np.arange(12, dtype=np.float32).reshape(2, 6)
        np.testing.assert_array_equal(infer(client, "reshaped", {"INPUT0": x}).as_numpy("OUTPUT0"), x)


def test_pbtxt_config_with_two_instances(server):
    """A Triton config.pbtxt works as it is; count 2 gives two instances that serve together."""
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        config = client.get_model_config("pbtxt_model").config
        assert config.max_batch_size == 4 and config.instance_group[0].count == 2
        x = np.ones((4, 3), np.float32)
        np.testing.assert_array_equal(infer(client, "pbtxt_model", {"INPUT0": x}).as_numpy("OUTPUT0"), x)


def test_thread_instances_run_requests_concurrently(server):
    """`slow` sleeps in execute on its worker thread: the event loop keeps answering meanwhile."""
    import threading
    import time
    with grpcclient.InferenceServerClient(server.grpc_url) as client:
        result = {}

        def slow_call():
            result["slow"] = infer(client, "slow", {"INPUT0": np.full((1, 1), 300, np.float32)})

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.05)
        start = time.monotonic()
        assert client.is_server_ready()
        infer(client, "identity_fp32", {"INPUT0": np.ones((1, 2), np.float32)})
        assert time.monotonic() - start < 0.2
        caller.join()
        assert result["slow"].as_numpy("OUTPUT0")[0, 0] == 300
