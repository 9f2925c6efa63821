"""Triton's `simple`: the sum and the difference of two INT32 tensors."""
from naiad.backends.python_api import InferenceResponse, Tensor


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            a = request.input("INPUT0")
            b = request.input("INPUT1")
            responses.append(InferenceResponse([Tensor("OUTPUT0", a + b), Tensor("OUTPUT1", a - b)]))
        return responses
