"""Routes each request to onnx_mlp or torch_mlp (BLS), by the request's `route` parameter."""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

ROUTES = {"onnx": ("onnx_mlp", "x", "probabilities"), "torch": ("torch_mlp", "input", "OUTPUT__0")}


class TritonPythonModel:
    def execute(self, requests):
        return [self.route(request) for request in requests]

    def route(self, request):
        route = json.loads(request.parameters()).get("route", "onnx")
        if route not in ROUTES:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(
                f"parameter 'route' must be one of {', '.join(ROUTES)}, got {route!r}",
                pb_utils.TritonError.INVALID_ARG))
        model, input_name, output_name = ROUTES[route]
        features = pb_utils.get_input_tensor_by_name(request, "FEATURES").as_numpy()
        answer = pb_utils.InferenceRequest(model_name=model, inputs=[pb_utils.Tensor(input_name, features)],
                                           requested_output_names=[output_name]).exec()
        if answer.has_error():
            return pb_utils.InferenceResponse(error=answer.error())
        scores = pb_utils.get_output_tensor_by_name(answer, output_name).as_numpy()
        if route == "torch":  # logits -> probabilities
            exp = np.exp(scores - scores.max(axis=1, keepdims=True))
            scores = exp / exp.sum(axis=1, keepdims=True)
        names = np.array([[route.encode()]] * len(features), dtype=object)
        return pb_utils.InferenceResponse([pb_utils.Tensor("PROBABILITIES", scores.astype(np.float32)),
                                           pb_utils.Tensor("ROUTE", names)])
