"""Each row of class probabilities becomes its most likely class: the name (from labels.txt, in the
classes' order) and the probability."""
from pathlib import Path

import numpy as np
from naiad.backends.python_api import InferenceResponse, Tensor, TritonError


class TritonPythonModel:
    def initialize(self, args):
        self.labels = np.array((Path(__file__).parent / "labels.txt").read_text().split(), dtype=object)

    def execute(self, requests):
        responses = []
        for request in requests:
            probabilities = request.input("PROBABILITIES")
            if probabilities.shape[1] != len(self.labels):
                responses.append(InferenceResponse(error=TritonError(
                    f"PROBABILITIES: expected {len(self.labels)} classes (labels.txt), got "
                    f"{probabilities.shape[1]}", TritonError.INVALID_ARG)))
                continue
            best = probabilities.argmax(axis=1)
            label = self.labels[best].reshape(-1, 1)
            score = probabilities[np.arange(len(best)), best].reshape(-1, 1)
            responses.append(InferenceResponse([Tensor("LABEL", label), Tensor("SCORE", score)]))
        return responses
