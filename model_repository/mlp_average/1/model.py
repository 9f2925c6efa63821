"""Calls onnx_mlp and torch_mlp at the same time (BLS, async_exec) and averages their answers."""
import asyncio

import numpy as np
import triton_python_backend_utils as pb_utils


def softmax(logits):
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


class TritonPythonModel:
    async def execute(self, requests):
        return list(await asyncio.gather(*(self.average(request) for request in requests)))

    async def average(self, request):
        features = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
        onnx, torch = await asyncio.gather(
            pb_utils.InferenceRequest(model_name="onnx_mlp", inputs=[pb_utils.Tensor("x", features)],
                                      requested_output_names=["probabilities"]).async_exec(),
            pb_utils.InferenceRequest(model_name="torch_mlp", inputs=[pb_utils.Tensor("input", features)],
                                      requested_output_names=["OUTPUT__0"]).async_exec())
        for answer in (onnx, torch):
            if answer.has_error():
                return pb_utils.InferenceResponse(error=answer.error())
        probabilities = (pb_utils.get_output_tensor_by_name(onnx, "probabilities").as_numpy()
                         + softmax(pb_utils.get_output_tensor_by_name(torch, "OUTPUT__0").as_numpy())) / 2
        return pb_utils.InferenceResponse([pb_utils.Tensor("PROBABILITIES", probabilities.astype(np.float32))])
