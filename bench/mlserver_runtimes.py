"""The bench models as Seldon MLServer runtimes, doing the same arithmetic as bench/models/*/model.py
(MLServer cannot load Triton's Python models)."""
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class MLP(MLModel):
    async def load(self) -> bool:
        rng = np.random.default_rng(0)
        self.w1 = (rng.standard_normal((256, 1024)) / 16).astype(np.float32)
        self.w2 = (rng.standard_normal((1024, 1024)) / 32).astype(np.float32)
        self.w3 = (rng.standard_normal((1024, 10)) / 32).astype(np.float32)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        h = np.maximum(x @ self.w1, 0)
        y = np.maximum(h @ self.w2, 0) @ self.w3
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("OUTPUT0", y)])


def work(seed: int) -> float:
    total = 0.0
    for i in range(40_000):
        total += (i * seed) % 7
    return total


class CPUBound(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        y = np.array([[work(int(v) + 1)] for v in x[:, 0]], dtype=np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("OUTPUT0", y)])
