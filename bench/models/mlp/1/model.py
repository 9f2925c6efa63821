"""An MLP in numpy (256 -> 1024 -> 1024 -> 10, ReLU): one matrix product per layer for the whole batch,
so its cost grows far slower than its batch (the weights are read once per batch). Written against Triton's Python backend API, so the same
file runs in naiad and in Triton."""
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        rng = np.random.default_rng(0)
        self.w1 = (rng.standard_normal((256, 1024)) / 16).astype(np.float32)
        self.w2 = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
        self.w3 = (rng.standard_normal((1024, 10)) / 32).astype(np.float32)

    def execute(self, requests):
        parts = [pb_utils.get_input_tensor_by_name(r, "INPUT0").as_numpy() for r in requests]
        h = np.maximum(np.concatenate(parts) @ self.w1, 0)
        y = np.maximum(h @ self.w2, 0) @ self.w3
        responses, start = [], 0
        for part in parts:
            out = pb_utils.Tensor("OUTPUT0", y[start:start + len(part)])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start += len(part)
        return responses
