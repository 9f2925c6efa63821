"""Streams the words of text_input, one response each, from a thread of its own; stops early when
the client goes away."""
import threading

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        for request in requests:  # answered from threads: execute returns at once
            threading.Thread(target=self.stream, args=(request,), daemon=True).start()
        return None

    def stream(self, request):
        sender = request.get_response_sender()
        text = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        words = (text.decode() if isinstance(text, bytes) else str(text)).split()
        limit = pb_utils.get_input_tensor_by_name(request, "max_tokens")
        if limit is not None:
            words = words[:max(int(limit.as_numpy().reshape(-1)[0]), 0)]
        for word in words:
            if request.is_cancelled():
                break
            sender.send(pb_utils.InferenceResponse(
                [pb_utils.Tensor("text_output", np.array([word.encode()], dtype=object))]))
        sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
