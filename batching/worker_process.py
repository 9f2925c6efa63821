"""The child side of a ProcessWorker: `python -m naiad.batching.worker_process REQUEST_FD REPLY_FD`.
Sets up one model instance, then runs the batches the server sends until the request pipe closes."""
from __future__ import annotations

import logging
import os
import signal
import sys

from naiad.batching.instances import close_instance, create_instance, execute
from naiad.batching.processes import (Receiver, Segment, layout_size, read_tensor, send, tensor_bytes,
                                      write_tensors)
from naiad.daemon.errors import ConfigError, Internal
from naiad.daemon.inference import InferRequest, InferResponse, RequestedOutput

log = logging.getLogger(__name__)


def main(request_fd: int, reply_fd: int) -> int:
    # Ctrl-C, and SIGTERM from a supervisor that signals the whole process group, are for the server:
    # it decides when its workers end (it closes their request pipe), after requests in flight.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    requests_in = Receiver(request_fd)
    setup = requests_in.receive()
    if setup is None:
        return 0
    files, spec = setup["files"], setup["spec"]
    logging.basicConfig(level=setup["log_level"], stream=sys.stderr,
                        format=f"%(asctime)s %(levelname).1s {files.name}/{spec.name}[{os.getpid()}] "
                               f"%(name)s: %(message)s")
    send(reply_fd, {"setting_up": True})  # the server times the set-up from here
    try:
        instance = create_instance(files, spec)  # never raises but ConfigError, even for SystemExit
    except ConfigError as e:
        send(reply_fd, {"error": e.problems})
        return 1
    send(reply_fd, {"ready": True})
    inputs = outputs = None
    while (message := requests_in.receive()) is not None:
        if "segments" in message:
            for segment in (inputs, outputs):
                if segment is not None:
                    segment.close()
            in_path, in_size, out_path, out_size = message["segments"]
            inputs, outputs = Segment(in_path, in_size, False), Segment(out_path, out_size, False)
        if "requests" not in message:  # new segments only: the server gave back a large one
            continue
        requests = []
        for model, version, request_id, parameters, requested, batch_size, described in message["requests"]:
            tensors = dict(read_tensor(inputs.map, d, copy=False) for d in described)
            wanted = None if requested is None else [RequestedOutput(name) for name in requested]
            requests.append(InferRequest(model, version, tensors, wanted, request_id, parameters,
                                         batch_size=batch_size))
        responses, timings = execute(files.name, instance, requests)
        try:
            reply = _reply(responses, timings, outputs)
        except Exception as e:  # outputs that cannot be laid out: this batch fails, the process lives
            log.exception("model '%s': the outputs of a batch could not be sent back", files.name)
            error = Internal(f"model '{files.name}': its outputs could not be sent back: "
                             f"{type(e).__name__}: {e}")
            reply = _reply([InferResponse(error=error) for _ in responses], timings, outputs)
        send(reply_fd, reply)
    close_instance(files.name, instance)
    return 0


def _reply(responses, timings, outputs: Segment) -> dict:
    """Outputs go into the output segment, or in the message itself when they do not fit."""
    named = [[(n, a) for n, a in r.outputs.items()] for r in responses if r.error is None]
    raws = [[tensor_bytes(a) for _, a in tensors] for tensors in named]
    needed = sum(layout_size(r) for r in raws)
    if needed <= outputs.size:
        target, inline = outputs, None
    else:
        inline = bytearray(needed)
        target = _Bytes(inline)
    answers, offset, i = [], 0, 0
    for response in responses:
        if response.error is not None:
            answers.append({"error": response.error})
            continue
        described, offset = write_tensors(target, named[i], raws[i], offset)
        answers.append({"outputs": described, "parameters": response.parameters})
        i += 1
    message = {"responses": answers, "timings": (timings.start_ns, timings.input_ns, timings.infer_ns,
                                                  timings.output_ns)}
    if inline is not None:
        message["inline"] = bytes(inline)
    return message


class _Bytes:
    """A bytearray in the place of a segment, for outputs that do not fit the segment."""

    def __init__(self, data: bytearray):
        self.map = data


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2])))
