"""Auto-complete: what a model file says about its tensors fills what the configuration left out, and
is checked against what the configuration says."""
from __future__ import annotations

from dataclasses import dataclass

from naiad.daemon.datatypes import DataType
from naiad.daemon.errors import ConfigError
from naiad.daemon.model_config import DynamicBatching, ModelConfig, ModelInput, ModelOutput

# Triton's default max_batch_size for a model that can batch and whose configuration gives none
DEFAULT_MAX_BATCH_SIZE = 4


@dataclass
class TensorSignature:
    name: str
    datatype: DataType | None    # None: the file does not say
    shape: list[int] | None      # the full shape, -1 where it varies; None: the file does not say


def _fits(configured: list[int], found: list[int]) -> bool:
    return len(configured) == len(found) and all(c == f or -1 in (c, f) for c, f in zip(configured, found))


def _shape_text(shape: list[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def complete(config: ModelConfig, file_name: str, inputs: list[TensorSignature],
             outputs: list[TensorSignature]) -> None:
    """Fill inputs, outputs, their data types and dims, and max_batch_size from a model file's
    signature; raise ConfigError listing every disagreement between the file and the configuration."""
    problems = []
    known = [s for s in inputs + outputs if s.shape is not None]
    if config.max_batch_size is None:
        # a model batches when the first dimension of every tensor varies
        batches = bool(known) and all(s.shape and s.shape[0] == -1 for s in known)
        config.max_batch_size = DEFAULT_MAX_BATCH_SIZE if batches else 0
        if batches and config.dynamic_batching is None:
            config.dynamic_batching = DynamicBatching()  # as Triton does for an auto-completed batcher
    batching = config.max_batch_size > 0
    for kind, configured, found, make in (("input", config.input, inputs, ModelInput),
                                          ("output", config.output, outputs, ModelOutput)):
        names = ", ".join(s.name for s in found)
        if not configured:
            configured.extend(make(name=s.name) for s in found)
        by_name = {s.name: s for s in found}
        for i, tensor in enumerate(configured):
            signature = by_name.get(tensor.name)
            if signature is None:
                problems.append(f"{kind}[{i}].name: '{tensor.name}' is not an {kind} of {file_name}; "
                                f"its {kind}s are {names}")
                continue
            if signature.datatype is not None:
                if tensor.data_type is None:
                    tensor.data_type = signature.datatype
                elif tensor.data_type is not signature.datatype:
                    problems.append(f"{kind}[{i}].data_type: {tensor.data_type.config_name}, but "
                                    f"{file_name} has {signature.datatype.config_name} for '{tensor.name}'")
            if signature.shape is None:
                continue
            shape = signature.shape
            if batching:
                if not shape or shape[0] != -1:
                    problems.append(f"max_batch_size: {config.max_batch_size} needs the first dimension "
                                    f"of {kind} '{tensor.name}' to vary in {file_name}, which has shape "
                                    f"{_shape_text(shape)}; set max_batch_size: 0")
                    continue
                shape = shape[1:]
            if tensor.dims is None and tensor.reshape is None:
                tensor.dims = shape
            model_side = tensor.reshape.shape if tensor.reshape is not None else tensor.dims
            if model_side is not None and not _fits(model_side, shape):
                field = "reshape.shape" if tensor.reshape is not None else "dims"
                problems.append(f"{kind}[{i}].{field}: {_shape_text(model_side)}, but {file_name} has "
                                f"{_shape_text(shape)} for '{tensor.name}'"
                                + (" (without the batch dimension)" if batching else ""))
        missing = [s.name for s in found if s.name not in {t.name for t in configured}]
        if missing and kind == "input":
            problems.append(f"input: {file_name} also takes {', '.join(repr(m) for m in missing)}; "
                            f"list every input, or none to take them from the file")
    if problems:
        raise ConfigError(problems)
