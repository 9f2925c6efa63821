"""Triton's `simple_string`: INT32 arithmetic on numbers that travel as text."""
import numpy as np

from naiad.backends.python_api import InferenceResponse, Tensor, TritonError


def _numbers(texts: np.ndarray, name: str) -> np.ndarray:
    try:
        return np.array([int(t) for t in texts.reshape(-1)], dtype=np.int32).reshape(texts.shape)
    except ValueError as e:
        raise ValueError(f"{name} must hold integers written as text: {e}") from None


def _texts(numbers: np.ndarray) -> np.ndarray:
    return np.array([str(n).encode() for n in numbers.reshape(-1)], dtype=object).reshape(numbers.shape)


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                a = _numbers(request.input("INPUT0"), "INPUT0")
                b = _numbers(request.input("INPUT1"), "INPUT1")
            except ValueError as e:
                responses.append(InferenceResponse(error=TritonError(str(e), TritonError.INVALID_ARG)))
                continue
            responses.append(InferenceResponse([Tensor("OUTPUT0", _texts(a + b)),
                                                Tensor("OUTPUT1", _texts(a - b))]))
        return responses
