"""CPU-bound pure Python (it holds the GIL): about 2 ms of arithmetic per request. Two instances can
only run at once in two processes. Written against Triton's Python backend API."""
import numpy as np
import triton_python_backend_utils as pb_utils


def work(seed: int) -> float:
    total = 0.0
    for i in range(40_000):
        total += (i * seed) % 7
    return total


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            y = np.array([[work(int(v) + 1)] for v in x[:, 0]], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT0", y)]))
        return responses
