"""Models for the pipeline tests: decoupled (streaming) models, BLS callers, generate."""
from __future__ import annotations

from pathlib import Path

from tests.models import tensor, write_model

# n responses OUT=0..n-1 from a thread of the model's own, then the final flag alone; a count of -1
# fails execute, -2 answers with an error
REPEAT = """
    import threading, time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                if pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0] == -1:
                    raise ValueError("a count of -1 fails the batch")
                threading.Thread(target=self.answer, args=(request,)).start()
            return None

        def answer(self, request):
            sender = request.get_response_sender()
            count = int(pb_utils.get_input_tensor_by_name(request, "COUNT").as_numpy()[0])
            if count == -2:
                error = pb_utils.TritonError("a count of -2 is refused", pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                return
            delay = float(pb_utils.get_input_tensor_by_name(request, "DELAY").as_numpy()[0])
            for i in range(count):
                if request.is_cancelled():
                    break
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                time.sleep(delay)
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# sends until the client goes away, then writes the file named by the request's "marker" parameter
UNTIL_CANCELLED = """
    import json, threading, time
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                threading.Thread(target=self.answer, args=(request,)).start()

        def answer(self, request):
            marker = json.loads(request.parameters())["marker"]
            sender = request.get_response_sender()
            i = 0
            while not request.is_cancelled() and i < 3000:
                sender.send(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array([i], np.int32))]))
                i += 1
                time.sleep(0.01)
            with open(marker, "w") as f:
                f.write("cancelled" if request.is_cancelled() else "never cancelled")
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

# a token stream: one response per word of text_input, at most max_tokens
WORDS = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            for request in requests:
                sender = request.get_response_sender()
                text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
                limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
                words = text.decode().split()
                if limit is not None:
                    words = words[:int(limit.as_numpy().reshape(-1)[0])]
                for word in words:
                    sender.send(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("text_output", np.array([word.encode()], dtype=object))]))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
"""

ADD_ONE = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            return [pb_utils.InferenceResponse([pb_utils.Tensor(
                "OUTPUT0", pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() + 1)]) for r in requests]
"""

DOUBLE = ADD_ONE.replace("as_numpy() + 1", "as_numpy() * 2")

# calls add_one and returns its answer times two; errors of the call come back as the request's
BLS_SYNC = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0")
                callee = pb_utils.InferenceRequest(model_name="add_one", inputs=[pb_utils.Tensor("INPUT0", x.as_numpy())],
                                                   requested_output_names=["OUTPUT0"])
                answer = callee.exec()
                if answer.has_error():
                    responses.append(pb_utils.InferenceResponse(error=answer.error()))
                    continue
                y = pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", y * 2)]))
            return responses
"""

# calls add_one and double at once and returns their sum
BLS_FAN_OUT = """
    import asyncio
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        async def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                calls = [pb_utils.InferenceRequest(model_name=name, inputs=[pb_utils.Tensor("INPUT0", x)],
                                                   requested_output_names=["OUTPUT0"]).async_exec()
                         for name in ("add_one", "double")]
                answers = await asyncio.gather(*calls)
                total = sum(pb_utils.get_output_tensor_by_name(a, "OUTPUT0").as_numpy() for a in answers)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total)]))
            return responses
"""

# calls add_one with exec() from its own thread and double from two threads of a pool, all at once,
# and returns the three answers' sum
BLS_THREADS = """
    from concurrent.futures import ThreadPoolExecutor
    import triton_python_backend_utils as pb_utils

    def call(name, x):
        answer = pb_utils.InferenceRequest(model_name=name, inputs=[pb_utils.Tensor("INPUT0", x)],
                                           requested_output_names=["OUTPUT0"]).exec()
        return pb_utils.get_output_tensor_by_name(answer, "OUTPUT0").as_numpy()

    class TritonPythonModel:
        def initialize(self, args):
            self.pool = ThreadPoolExecutor(2)

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                others = [self.pool.submit(call, "double", x) for _ in range(2)]
                total = call("add_one", x) + sum(other.result() for other in others)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", total)]))
            return responses
"""

# sends each request to add_one when its values sum above zero, else to double
BLS_ROUTER = """
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                name = "add_one" if x.sum() > 0 else "double"
                answer = pb_utils.InferenceRequest(model_name=name, inputs=[pb_utils.Tensor("INPUT0", x)],
                                                   requested_output_names=["OUTPUT0"]).exec()
                responses.append(answer)
            return responses
"""

# calls the model named by its "callee" parameter (itself, or one that does not exist) with a timeout;
# answers with the error's message and code as text
BLS_CALL_ERROR = """
    import json
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                callee = json.loads(request.parameters()).get("callee", "no_such_model")
                answer = pb_utils.InferenceRequest(model_name=callee, inputs=[pb_utils.Tensor("INPUT0", x)],
                                                   timeout=300_000).exec()
                text = f"{answer.error().code()}: {answer.error().message()}" if answer.has_error() else "no error"
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("TEXT", np.array([[text.encode()]], dtype=object))]))
            return responses
"""

# streams from `repeat` (a decoupled callee) and answers with the values it got, in order
BLS_STREAM = """
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for request in requests:
                inputs = [pb_utils.get_input_tensor_by_name(request, n) for n in ("COUNT", "DELAY")]
                got = [int(pb_utils.get_output_tensor_by_name(r, "OUT").as_numpy()[0])
                       for r in pb_utils.InferenceRequest(model_name="repeat", inputs=inputs,
                                                          requested_output_names=["OUT"]).exec(decoupled=True)]
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUT", np.array(got, np.int32))]))
            return responses
"""


def _repeat_config(execution: str) -> dict:
    return {"backend": "python", "max_batch_size": 0,
            "input": [tensor("COUNT", "TYPE_INT32", [1]), tensor("DELAY", "TYPE_FP32", [1])],
            "output": [tensor("OUT", "TYPE_INT32", [1])],
            "model_transaction_policy": {"decoupled": True},
            "parameters": {"execution": execution}}


def fp32_config(execution: str = "process", count: int = 1) -> dict:
    return {"backend": "python", "max_batch_size": 8,
            "input": [tensor("INPUT0", "TYPE_FP32", [-1])], "output": [tensor("OUTPUT0", "TYPE_FP32", [-1])],
            "instance_group": [{"kind": "KIND_CPU", "count": count}], "parameters": {"execution": execution}}


def write_pipeline_models(repository: Path) -> None:
    write_model(repository, "repeat", _repeat_config("process"), REPEAT)
    write_model(repository, "repeat_thread", _repeat_config("thread"), REPEAT)
    write_model(repository, "until_cancelled", {**_repeat_config("process"), "input": [tensor("COUNT", "TYPE_INT32", [1])]}, UNTIL_CANCELLED)
    write_model(repository, "words", {
        "backend": "python", "max_batch_size": 0,
        "input": [tensor("text_input", "TYPE_STRING", [1]),
                  tensor("max_tokens", "TYPE_INT32", [1], optional=True)],
        "output": [tensor("text_output", "TYPE_STRING", [1])],
        "model_transaction_policy": {"decoupled": True}}, WORDS)
    write_model(repository, "add_one", fp32_config("thread"), ADD_ONE)
    write_model(repository, "double", fp32_config("thread"), DOUBLE)
    write_model(repository, "bls_sync", fp32_config(), BLS_SYNC)
    write_model(repository, "bls_sync_thread", fp32_config("thread"), BLS_SYNC)
    write_model(repository, "bls_sync_inline", fp32_config("inline"), BLS_SYNC)
    write_model(repository, "bls_fan_out", fp32_config(), BLS_FAN_OUT)
    write_model(repository, "bls_threads", fp32_config(), BLS_THREADS)
    write_model(repository, "bls_router", fp32_config(), BLS_ROUTER)
    write_model(repository, "bls_call_error", {**fp32_config(), "output": [tensor("TEXT", "TYPE_STRING", [1])]},
                BLS_CALL_ERROR)
    not_decoupled = {k: v for k, v in _repeat_config("process").items() if k != "model_transaction_policy"}
    write_model(repository, "bls_stream", {**not_decoupled, "output": [tensor("OUT", "TYPE_INT32", [-1])]},
                BLS_STREAM)
