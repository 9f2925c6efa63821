"""The models the tests serve, written as real model folders (config.yaml + version/model.py)."""
from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import yaml

# every KServe datatype, with the numpy type clients use for it
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64", "BF16", "BYTES"]


def write_model(repository: Path, name: str, config: dict | None, code: str | None = None,
                versions=(1,)) -> Path:
    """A model folder: config.yaml from `config` (None: no config file) and model.py per version."""
    folder = repository / name
    folder.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for version in versions:
        (folder / str(version)).mkdir(exist_ok=True)
        if code is not None:
            (folder / str(version) / "model.py").write_text(textwrap.dedent(code))
    return folder


def _shipped_model_builders():
    """model_repository/make_models.py, which builds the shipped framework models (and the tests' own,
    with other seeds and sizes); it imports each framework only when asked for its model."""
    path = Path(__file__).resolve().parent.parent / "model_repository" / "make_models.py"
    spec = importlib.util.spec_from_file_location("make_models", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_models = _shipped_model_builders()


def write_framework_model(repository: Path, name: str, config: dict | None, build, filename: str, **kwargs) -> Path:
    """A model folder whose version 1 holds `filename`, made by `build` (a make_models function)."""
    folder = repository / name
    build(folder / "1" / filename, **kwargs)
    if config is not None:
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return folder


def tensor(name: str, datatype: str, dims: list[int], **extra) -> dict:
    return {"name": name, "data_type": datatype, "dims": dims, **extra}


IDENTITY = """
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]
"""

# Triton's own style: pb_utils under Triton's module name, config helpers, initialize/finalize.
TRITON_STYLE = """
    import json
    import numpy as np
    import triton_python_backend_utils as pb_utils

    class TritonPythonModel:
        def initialize(self, args):
            self.args = args
            config = json.loads(args["model_config"])
            out = pb_utils.get_output_config_by_name(config, "OUTPUT0")
            self.dtype = pb_utils.triton_string_to_numpy(out["data_type"])

        def execute(self, requests):
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
                extra = pb_utils.get_input_tensor_by_name(request, "MISSING")
                assert extra is None
                out = pb_utils.Tensor("OUTPUT0", (x * 2).astype(self.dtype))
                version = pb_utils.Tensor("VERSION", np.array([[self.args["model_version"]]] * len(x),
                                                               dtype=object))
                responses.append(pb_utils.InferenceResponse(output_tensors=[out, version]))
            return responses
"""

# Fails on purpose, by the first value of INPUT0: -1 raises, -2 answers with an error, -3 returns the
# wrong datatype, -4 leaves an output out, -5 returns too few responses, -6 the wrong shape.
FAULTY = """
    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor, TritonError

    class TritonPythonModel:
        def execute(self, requests):
            responses = []
            for r in requests:
                x = r.input("INPUT0")
                code = int(x.reshape(-1)[0])
                if code == -1:
                    raise RuntimeError("the model broke on purpose")
                if code == -5:
                    return responses
                if code == -2:
                    responses.append(InferenceResponse(error=TritonError("bad value -2", TritonError.INVALID_ARG)))
                elif code == -3:
                    responses.append(InferenceResponse([Tensor("OUTPUT0", x.astype(np.float64))]))
                elif code == -4:
                    responses.append(InferenceResponse([]))
                elif code == -6:
                    responses.append(InferenceResponse([Tensor("OUTPUT0", x[:, :1])]))
                else:
                    responses.append(InferenceResponse([Tensor("OUTPUT0", x)]))
            return responses
"""

# Writes what initialize received and that finalize ran to files beside the model.
LIFECYCLE = """
    import json
    from pathlib import Path
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def initialize(self, args):
            self.folder = Path(args["model_repository"])
            (self.folder / "initialized.json").write_text(json.dumps(args))

        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0"))]) for r in requests]

        def finalize(self):
            (self.folder / "finalized").write_text("yes")
"""

# Answers with its version number, to tell versions apart.
VERSIONED = """
    import numpy as np
    from pathlib import Path
    from naiad.backends.python_api import InferenceResponse, Tensor

    VERSION = int(Path(__file__).parent.name)

    class TritonPythonModel:
        def execute(self, requests):
            return [InferenceResponse([Tensor("OUTPUT0", np.full_like(r.input("INPUT0"), VERSION))])
                    for r in requests]
"""

# Sleeps for INPUT0's first value in milliseconds, then echoes it.
SLOW = """
    import time
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def execute(self, requests):
            out = []
            for r in requests:
                x = r.input("INPUT0")
                time.sleep(float(x.reshape(-1)[0]) / 1000)
                out.append(InferenceResponse([Tensor("OUTPUT0", x)]))
            return out
"""

ASYNC_EXECUTE = """
    import asyncio
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        async def execute(self, requests):
            await asyncio.sleep(0)
            return [InferenceResponse([Tensor("OUTPUT0", r.input("INPUT0") + 1)]) for r in requests]
"""


def batched(datatype: str, dims=(-1,)) -> dict:
    return {"backend": "python", "max_batch_size": 8,
            "input": [tensor("INPUT0", datatype, list(dims))],
            "output": [tensor("OUTPUT0", datatype, list(dims))]}


def write_test_models(repository: Path) -> None:
    for datatype in DATATYPES:
        write_model(repository, f"identity_{datatype.lower()}", batched(datatype), IDENTITY)
    write_model(repository, "identity_nobatch",
                {"backend": "python", "max_batch_size": 0,
                 "input": [tensor("INPUT0", "FP32", [2, -1])],
                 "output": [tensor("OUTPUT0", "FP32", [2, -1])]}, IDENTITY)
    write_model(repository, "triton_style",
                {"backend": "python", "max_batch_size": 8, "input": [tensor("INPUT0", "TYPE_INT32", [4])],
                 "output": [tensor("OUTPUT0", "TYPE_INT32", [4]), tensor("VERSION", "TYPE_STRING", [1])]},
                TRITON_STYLE)
    write_model(repository, "faulty", batched("INT32", (4,)), FAULTY)
    write_model(repository, "slow", batched("FP32", (1,)), SLOW)
    write_model(repository, "async_execute", batched("INT32", (4,)), ASYNC_EXECUTE)
    write_model(repository, "versioned",
                {**batched("INT32", (1,)), "version_policy": {"all": {}}}, VERSIONED, versions=(1, 2, 3))
    write_model(repository, "latest_two",
                {**batched("INT32", (1,)), "version_policy": {"latest": {"num_versions": 2}}},
                VERSIONED, versions=(1, 2, 3))
    write_model(repository, "specific",
                {**batched("INT32", (1,)), "version_policy": {"specific": {"versions": [1, 3]}}},
                VERSIONED, versions=(1, 2, 3))
    write_model(repository, "reshaped",
                {"backend": "python", "max_batch_size": 8,
                 "input": [tensor("INPUT0", "FP32", [6], reshape={"shape": [2, 3]})],
                 "output": [tensor("OUTPUT0", "FP32", [6], reshape={"shape": [2, 3]})]},
                """
                from naiad.backends.python_api import InferenceResponse, Tensor

                class TritonPythonModel:
                    def execute(self, requests):
                        out = []
                        for r in requests:
                            x = r.input("INPUT0")
                            assert x.shape[1:] == (2, 3), x.shape
                            out.append(InferenceResponse([Tensor("OUTPUT0", x)]))
                        return out
                """)
    write_model(repository, "optional_input",
                {"backend": "python", "max_batch_size": 8,
                 "input": [tensor("INPUT0", "FP32", [2]), tensor("BIAS", "FP32", [2], optional=True)],
                 "output": [tensor("OUTPUT0", "FP32", [2])]},
                """
                from naiad.backends.python_api import InferenceResponse, Tensor

                class TritonPythonModel:
                    def execute(self, requests):
                        out = []
                        for r in requests:
                            x = r.input("INPUT0")
                            bias = r.input("BIAS")
                            out.append(InferenceResponse([Tensor("OUTPUT0", x if bias is None else x + bias)]))
                        return out
                """)
    # A Triton model folder as Triton users have them: config.pbtxt instead of config.yaml.
    folder = write_model(repository, "pbtxt_model", None, IDENTITY)
    (folder / "config.pbtxt").write_text(textwrap.dedent("""
        name: "pbtxt_model"
        backend: "python"
        max_batch_size: 4
        input [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 3 ] } ]
        instance_group [ { kind: KIND_CPU count: 2 } ]
    """))
    # Broken on purpose: the server must serve everything else and say why this one is not.
    write_model(repository, "broken_config",
                {"backend": "python", "max_batch_size": 8,
                 "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dimz": [4]}],
                 "output": [tensor("OUTPUT0", "TYPE_FP32", [4])]}, IDENTITY)
    write_model(repository, "broken_code", batched("FP32"), "import no_such_module_anywhere\n")

# For the scheduling tests. The first value of a request's INPUT0 is a command: > 0 sleeps that many
# milliseconds (the longest of the batch), -9 kills this worker process (and leaves a marker that makes
# the next start slow, so that the restart can be watched). Each response tells the batch it ran in:
# its total batch size, how many different shapes it held, the execution's number in this instance,
# the process id, and the execution's start and end time.
PROBE = """
    import os
    import signal
    import time
    from pathlib import Path

    import numpy as np
    from naiad.backends.python_api import InferenceResponse, Tensor

    class TritonPythonModel:
        def initialize(self, args):
            self.marker = Path(args["model_repository"]) / "slow_start"
            if self.marker.exists():
                self.marker.unlink()
                time.sleep(1.5)
            self.executions = 0

        def execute(self, requests):
            self.executions += 1
            start = time.time()
            commands = [float(r.input("INPUT0").reshape(-1)[0]) for r in requests]
            if -9 in commands:
                self.marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
            if max(commands) > 0:
                time.sleep(max(commands) / 1000)
            total = sum(r.input("INPUT0").shape[0] for r in requests)
            shapes = len({r.input("INPUT0").shape[1:] for r in requests})
            end = time.time()
            out = []
            for r in requests:
                x = r.input("INPUT0")
                n = x.shape[0]
                column = lambda value: np.full((n, 1), value, np.int64)
                out.append(InferenceResponse([
                    Tensor("OUTPUT0", x), Tensor("BATCH", column(total)), Tensor("SHAPES", column(shapes)),
                    Tensor("EXECUTION", column(self.executions)), Tensor("PID", column(os.getpid())),
                    Tensor("WINDOW", np.tile(np.array([start, end]), (n, 1)))]))
            return out
"""


def probe_config(max_batch_size: int = 8, **extra) -> dict:
    return {"backend": "python", "max_batch_size": max_batch_size,
            "input": [tensor("INPUT0", "FP32", [-1])],
            "output": [tensor("OUTPUT0", "FP32", [-1])] + [tensor(n, "INT64", [1]) for n in
                                                          ("BATCH", "SHAPES", "EXECUTION", "PID")]
                      + [tensor("WINDOW", "FP64", [2])],
            **extra}
