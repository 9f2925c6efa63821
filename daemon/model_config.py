"""The model configuration: Triton's field names and meaning (ModelConfig in model_config.proto), as a
tree of dataclasses read from the dict that config.yaml (or a Triton config.pbtxt) holds.

`parse` checks shapes and types of every field and collects every problem instead of stopping at the
first; `validate` checks what fields mean together. Problems are located by a path such as
`input[1].dims` so the message can name the file, the field and what is expected.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from naiad.daemon import datatypes
from naiad.daemon.datatypes import DataType

InstanceKind = Literal["KIND_AUTO", "KIND_GPU", "KIND_CPU", "KIND_MODEL"]
TimeoutAction = Literal["REJECT", "DELAY"]
InputFormat = Literal["FORMAT_NONE", "FORMAT_NHWC", "FORMAT_NCHW"]

# parameters.execution: where a model's instances run their batches (the default is the backend's)
EXECUTION_MODES = {
    "process": "a worker process per instance (the Python backend's default)",
    "thread": "a worker thread per instance (the other backends' default)",
    "inline": "on the server's event loop, for models that take microseconds",
}

# parameters naiad reads to bound a model's time (seconds; left out: no bound), see docs/reliability.md
TIMEOUT_PARAMETERS = {
    "execution_timeout_seconds": "the longest one batch may run",
    "load_timeout_seconds": "the longest an instance's set-up (initialize) or finalize may take",
}


def timeout_seconds(config: "ModelConfig", name: str) -> float | None:
    """The timeout parameter `name` in seconds, or None when it is not set. Raises ValueError (naming
    the parameter) for a value that is not a number of seconds > 0."""
    text = config.parameters.get(name)
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86_400:
        raise ValueError(f"parameters.{name}: expected a number of seconds > 0 and at most 86400 "
                         f"({TIMEOUT_PARAMETERS[name]}), got '{text}'")
    return value

# Triton fields that naiad reads but does not act on yet: a config that sets one is refused, so that
# nobody believes a setting is in force when it is not.
UNSUPPORTED = {
    "sequence_batching": "stateful (sequence) models are not supported yet",
    "batch_input": "ragged batching is not supported yet",
    "batch_output": "ragged batching is not supported yet",
    "optimization": "optimization policies are not supported yet",
    "model_warmup": "warmup is not supported yet",
    "model_operations": "custom operation libraries are not supported",
    "model_repository_agents": "repository agents are not supported",
    "response_cache": "the response cache is not supported yet",
    "model_metrics": "per-model metric settings are not supported yet",
    "cc_model_filenames": "per-compute-capability model files are not supported",
    "metric_tags": "metric tags are not supported yet",
    "runtime": "custom backend runtimes are not supported",
}

# Bounds on the values that size a model's memory or its per-request work. A config beyond one is
# refused at load, naming the field and the range, instead of costing every request later.
MAX_DIMS = datatypes.MAX_DIMS            # dims of a tensor, the batch dimension included
MAX_DIM_SIZE = datatypes.MAX_ELEMENTS    # one dimension's size
MAX_BATCH_SIZE = 1 << 20
MAX_PRIORITY_LEVELS = 128
MAX_INSTANCES = 128                      # per instance group, and over all of a model's groups
MAX_QUEUE_SIZE = 1 << 20                 # a priority level's max_queue_size
MAX_QUEUE_DELAY_US = 60_000_000          # max_queue_delay_microseconds: one minute
MAX_TIMEOUT_US = 3_600_000_000           # default_timeout_microseconds: one hour
MAX_TENSORS = 1024                       # inputs, and outputs, of a model


@dataclass
class Reshape:
    shape: list[int] = field(default_factory=list)


@dataclass
class ModelInput:
    name: str = ""
    data_type: DataType | None = None
    format: InputFormat = "FORMAT_NONE"
    dims: list[int] | None = None
    reshape: Reshape | None = None
    is_shape_tensor: bool = False
    allow_ragged_batch: bool = False
    optional: bool = False
    is_non_linear_format_io: bool = False


@dataclass
class ModelOutput:
    name: str = ""
    data_type: DataType | None = None
    dims: list[int] | None = None
    reshape: Reshape | None = None
    label_filename: str = ""
    is_shape_tensor: bool = False
    is_non_linear_format_io: bool = False


@dataclass
class LatestPolicy:
    num_versions: int = 1


@dataclass
class AllPolicy:
    pass


@dataclass
class SpecificPolicy:
    versions: list[int] = field(default_factory=list)


@dataclass
class VersionPolicy:
    latest: LatestPolicy | None = None
    all: AllPolicy | None = None
    specific: SpecificPolicy | None = None


@dataclass
class InstanceGroup:
    name: str = ""
    kind: InstanceKind = "KIND_AUTO"
    count: int = 1
    gpus: list[int] = field(default_factory=list)


@dataclass
class QueuePolicy:
    timeout_action: TimeoutAction = "REJECT"
    default_timeout_microseconds: int = 0
    allow_timeout_override: bool = False
    max_queue_size: int = 0


@dataclass
class DynamicBatching:
    preferred_batch_size: list[int] = field(default_factory=list)
    max_queue_delay_microseconds: int = 0
    preserve_ordering: bool = False
    priority_levels: int = 0
    default_priority_level: int = 0
    default_queue_policy: QueuePolicy | None = None
    priority_queue_policy: dict[int, QueuePolicy] = field(default_factory=dict)


@dataclass
class TransactionPolicy:
    decoupled: bool = False


# the platform (or backend) of an ensemble: steps that run other models, no model file of its own
ENSEMBLE = "ensemble"


@dataclass
class EnsembleStep:
    model_name: str = ""
    model_version: int = -1                 # -1: the member's latest serving version
    input_map: dict[str, str] = field(default_factory=dict)    # member input -> ensemble tensor
    output_map: dict[str, str] = field(default_factory=dict)   # member output -> ensemble tensor


@dataclass
class EnsembleScheduling:
    step: list[EnsembleStep] = field(default_factory=list)
    max_inflight_requests: int = 0          # per step; 0: no bound


def _parameter_value(value: Any, path: str, problems: list[str]) -> str:
    """A parameter is written `key: value` or, as in Triton, `key: {string_value: value}`."""
    if isinstance(value, dict) and set(value) == {"string_value"}:
        value = value["string_value"]
    if isinstance(value, (str, int, float, bool)):
        return str(value).lower() if isinstance(value, bool) else str(value)
    problems.append(f"{path}: expected a string (or {{string_value: ...}}), got {_show(value)}")
    return ""


@dataclass
class ModelConfig:
    name: str = ""
    platform: str = ""
    backend: str = ""
    version_policy: VersionPolicy | None = None
    max_batch_size: int | None = None   # None until given or auto-completed; then 0 means no batching
    input: list[ModelInput] = field(default_factory=list)
    output: list[ModelOutput] = field(default_factory=list)
    instance_group: list[InstanceGroup] = field(default_factory=list)
    default_model_filename: str = ""
    dynamic_batching: DynamicBatching | None = None
    parameters: dict[str, str] = field(default_factory=dict, metadata={"value": _parameter_value})
    model_transaction_policy: TransactionPolicy | None = None
    ensemble_scheduling: EnsembleScheduling | None = None

    @property
    def is_ensemble(self) -> bool:
        return ENSEMBLE in (self.platform, self.backend)

    @property
    def decoupled(self) -> bool:
        """Whether the model answers a request with any number of responses (decoupled)."""
        return bool(self.model_transaction_policy and self.model_transaction_policy.decoupled)


# --- reading ---------------------------------------------------------------------------------------

def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _int(value: Any) -> int | None:
    """An integer, also from the decimal strings that protobuf's JSON form uses for 64-bit fields."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            return None
    return None


def _read(hint: Any, value: Any, path: str, problems: list[str]) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _read(inner, value, path, problems)
    if hint is DataType:
        found = datatypes.parse(value)
        if found is None:
            names = ", ".join(dt.config_name for dt in datatypes.ALL)
            problems.append(f"{path}: expected a data type ({names}; the prefix TYPE_ may be left out, "
                            f"and BYTES means TYPE_STRING), got {_show(value)}")
        return found
    if dataclasses.is_dataclass(hint):
        return _read_dataclass(hint, value, path, problems)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            problems.append(f"{path}: expected one of {', '.join(choices)}, got {_show(value)}")
            return choices[0]
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            problems.append(f"{path}: expected a list, got {_show(value)}")
            return []
        return [_read(item, v, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict:
        key_type, item = typing.get_args(hint)
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {_show(value)}")
            return {}
        out = {}
        for key, v in value.items():
            k = _int(key) if key_type is int else str(key)
            if k is None:
                problems.append(f"{path}: keys must be integers, got {_show(key)}")
                continue
            out[k] = _read(item, v, f"{path}.{key}", problems)
        return out
    if hint is bool:
        if not isinstance(value, bool):
            problems.append(f"{path}: expected true or false, got {_show(value)}")
            return False
        return value
    if hint is int:
        number = _int(value)
        if number is None:
            problems.append(f"{path}: expected an integer, got {_show(value)}")
            return 0
        return number
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{path}: expected a string, got {_show(value)}")
            return ""
        return value
    raise TypeError(f"no reader for {hint}")


def _read_dataclass(cls: type, value: Any, path: str, problems: list[str]) -> Any:
    if value is None and not dataclasses.fields(cls):
        return cls()
    if not isinstance(value, dict):
        problems.append(f"{path or 'the configuration'}: expected a mapping, got {_show(value)}")
        return cls()
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, item in value.items():
        where = f"{path}.{key}" if path else str(key)
        if key in known:
            value_reader = known[key].metadata.get("value")
            if value_reader is not None:
                if not isinstance(item, dict):
                    problems.append(f"{where}: expected a mapping, got {_show(item)}")
                    continue
                kwargs[key] = {str(k): value_reader(v, f"{where}.{k}", problems) for k, v in item.items()}
            else:
                kwargs[key] = _read(hints[key], item, where, problems)
        elif cls is ModelConfig and key in UNSUPPORTED:
            problems.append(f"{where}: {UNSUPPORTED[key]}; remove it")
        else:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            problems.append(f"{where}: unknown field; {hint}known fields here: {', '.join(known)}")
    return cls(**kwargs)


def parse(raw: Any) -> tuple[ModelConfig, list[str]]:
    """Read a configuration from its plain-data form; returns it and the problems found."""
    problems: list[str] = []
    if raw is None:
        raw = {}
    config = _read_dataclass(ModelConfig, raw, "", problems)
    return config, problems


# --- meaning ---------------------------------------------------------------------------------------

def _in_range(path: str, value: int, low: int, high: int, problems: list[str], low_text: str = ""
              ) -> None:
    """Report `value` when it is outside low..high; low_text says what `low` means."""
    if not low <= value <= high:
        problems.append(f"{path}: expected {low}{low_text} to {high}, got {value}")


def _check_dims(dims: list[int] | None, path: str, problems: list[str], max_dims: int = MAX_DIMS) -> None:
    if dims is None:
        problems.append(f"{path}: missing; give the tensor's shape without the batch dimension, "
                        f"e.g. dims: [16] (-1 for a dimension that varies)")
        return
    if not dims:
        problems.append(f"{path}: must have at least one dimension; for a scalar write dims: [1]")
    if len(dims) > max_dims:
        problems.append(f"{path}: {len(dims)} dimensions; at most {max_dims} are allowed"
                        + (" (the batch dimension takes one of 64)" if max_dims < MAX_DIMS else ""))
    for i, d in enumerate(dims):
        if d < -1 or d == 0:
            problems.append(f"{path}[{i}]: expected a size >= 1 or -1 (varies), got {d}")
        elif d > MAX_DIM_SIZE:
            problems.append(f"{path}[{i}]: {d} is too large; a size is at most 2^40 ({MAX_DIM_SIZE})")


def _check_reshape(tensor: ModelInput | ModelOutput, path: str, problems: list[str]) -> None:
    if tensor.reshape is None or tensor.dims is None:
        return
    shape = tensor.reshape.shape
    if any(d < -1 or d == 0 for d in shape):
        problems.append(f"{path}.reshape.shape: expected sizes >= 1 or -1, got {shape}")
    elif -1 not in shape and -1 not in tensor.dims:
        if datatypes.element_count(shape) != datatypes.element_count(tensor.dims):
            problems.append(f"{path}.reshape.shape: {shape} holds a different number of elements "
                            f"than dims {tensor.dims}")
    elif shape.count(-1) != tensor.dims.count(-1):
        problems.append(f"{path}.reshape.shape: {shape} must vary in as many dimensions as dims "
                        f"{tensor.dims}")


def _check_tensors(kind: str, tensors: list, problems: list[str], max_dims: int) -> None:
    if len(tensors) > MAX_TENSORS:
        problems.append(f"{kind}: {len(tensors)} {kind}s; at most {MAX_TENSORS} are allowed")
    seen: set[str] = set()
    for i, tensor in enumerate(tensors):
        path = f"{kind}[{i}]"
        if not tensor.name:
            problems.append(f"{path}.name: missing; every {kind} needs a name")
        elif tensor.name in seen:
            problems.append(f"{path}.name: '{tensor.name}' is used by two {kind}s; names must differ")
        seen.add(tensor.name)
        if tensor.data_type is None:
            problems.append(f"{path}.data_type: missing; e.g. data_type: TYPE_FP32")
        _check_dims(tensor.dims, f"{path}.dims", problems, max_dims)
        _check_reshape(tensor, path, problems)
        if tensor.is_shape_tensor:
            problems.append(f"{path}.is_shape_tensor: shape tensors are not supported")
        if getattr(tensor, "allow_ragged_batch", False):
            problems.append(f"{path}.allow_ragged_batch: ragged batching is not supported yet")


def _check_batching(config: ModelConfig, problems: list[str]) -> None:
    batching = config.dynamic_batching
    if batching is None:
        return
    if config.max_batch_size == 0:
        problems.append("dynamic_batching: needs max_batch_size > 0, since a model that does not "
                        "batch cannot be given batches")
    for i, size in enumerate(batching.preferred_batch_size):
        if not 1 <= size <= max(config.max_batch_size, 1):
            problems.append(f"dynamic_batching.preferred_batch_size[{i}]: expected 1 to max_batch_size "
                            f"{config.max_batch_size}, got {size}")
    _in_range("dynamic_batching.max_queue_delay_microseconds", batching.max_queue_delay_microseconds,
              0, MAX_QUEUE_DELAY_US, problems)
    levels = batching.priority_levels
    _in_range("dynamic_batching.priority_levels", levels, 0, MAX_PRIORITY_LEVELS, problems,
              " (no priorities)")
    if levels and not 1 <= batching.default_priority_level <= levels:
        problems.append(f"dynamic_batching.default_priority_level: expected 1 to priority_levels "
                        f"{levels}, got {batching.default_priority_level}")
    if not levels and batching.default_priority_level:
        problems.append("dynamic_batching.default_priority_level: needs priority_levels")
    for level in batching.priority_queue_policy:
        if not 1 <= level <= levels:
            problems.append(f"dynamic_batching.priority_queue_policy.{level}: expected a level from 1 "
                            f"to priority_levels {levels}")
    policies = [("default_queue_policy", batching.default_queue_policy)] + [
        (f"priority_queue_policy.{k}", v) for k, v in batching.priority_queue_policy.items()]
    for where, policy in policies:
        if policy is None:
            continue
        _in_range(f"dynamic_batching.{where}.default_timeout_microseconds",
                  policy.default_timeout_microseconds, 0, MAX_TIMEOUT_US, problems, " (none)")
        _in_range(f"dynamic_batching.{where}.max_queue_size", policy.max_queue_size, 0, MAX_QUEUE_SIZE,
                  problems, " (no bound)")


def _check_ensemble(config: ModelConfig, problems: list[str]) -> None:
    """An ensemble has steps and nothing that only models with a file of their own have; how the
    steps fit together is checked at load (naiad.ensembles)."""
    scheduling = config.ensemble_scheduling
    if not config.is_ensemble:
        if scheduling is not None:
            problems.append("ensemble_scheduling: only an ensemble has steps; set platform: ensemble, or "
                            "remove ensemble_scheduling")
        return
    if config.dynamic_batching is not None:
        problems.append("dynamic_batching: an ensemble does not batch by itself (its members' dynamic "
                        "batching applies); remove it")
    if scheduling is None or not scheduling.step:
        problems.append("ensemble_scheduling.step: missing; an ensemble lists its steps, e.g. step: "
                        "[{model_name: tokenizer, model_version: -1, input_map: {TEXT: TEXT}, "
                        "output_map: {INPUT_IDS: ids}}]")
        return
    for i, step in enumerate(scheduling.step):
        where = f"ensemble_scheduling.step[{i}]"
        if not step.model_name:
            problems.append(f"{where}.model_name: missing; name the model this step runs")
        if step.model_version < -1 or step.model_version == 0:
            problems.append(f"{where}.model_version: expected -1 (the latest) or a version >= 1, got "
                            f"{step.model_version}")
        if not step.input_map:
            problems.append(f"{where}.input_map: missing; map the model's inputs to ensemble tensors, "
                            f"e.g. input_map: {{INPUT0: TEXT}}")
        if not step.output_map:
            problems.append(f"{where}.output_map: missing; map the model's outputs to ensemble tensors, "
                            f"e.g. output_map: {{OUTPUT0: ids}}")
    _in_range("ensemble_scheduling.max_inflight_requests", scheduling.max_inflight_requests, 0,
              MAX_QUEUE_SIZE, problems, " (no bound)")


def validate(config: ModelConfig, model_name: str) -> list[str]:
    """Check what the fields mean together; returns the problems found."""
    problems: list[str] = []
    if config.name and config.name != model_name:
        problems.append(f"name: '{config.name}' differs from the model's folder name '{model_name}'; "
                        f"remove it or make them equal")
    _in_range("max_batch_size", config.max_batch_size, 0, MAX_BATCH_SIZE, problems, " (no batching)")
    file_problem = check_model_filename(config.default_model_filename)
    if file_problem:
        problems.append(file_problem)
    if not config.input:
        problems.append("input: missing; list the model's inputs, e.g. "
                        "input: [{name: INPUT0, data_type: TYPE_FP32, dims: [16]}]")
    if not config.output:
        problems.append("output: missing; list the model's outputs, e.g. "
                        "output: [{name: OUTPUT0, data_type: TYPE_FP32, dims: [16]}]")
    # a batching model's tensors have the batch dimension too
    max_dims = MAX_DIMS - 1 if config.max_batch_size > 0 else MAX_DIMS
    _check_tensors("input", config.input, problems, max_dims)
    _check_tensors("output", config.output, problems, max_dims)
    policy = config.version_policy
    if policy is not None:
        chosen = [name for name in ("latest", "all", "specific") if getattr(policy, name) is not None]
        if len(chosen) != 1:
            problems.append(f"version_policy: set exactly one of latest, all, specific; got "
                            f"{', '.join(chosen) or 'none'}")
        if policy.latest is not None and policy.latest.num_versions < 1:
            problems.append("version_policy.latest.num_versions: must be >= 1")
        if policy.specific is not None and (not policy.specific.versions
                                            or min(policy.specific.versions) < 1):
            problems.append("version_policy.specific.versions: list one or more versions >= 1")
    for i, group in enumerate(config.instance_group):
        _in_range(f"instance_group[{i}].count", group.count, 1, MAX_INSTANCES, problems)
        if any(g < 0 for g in group.gpus):
            problems.append(f"instance_group[{i}].gpus: GPU ids are >= 0, got {group.gpus}")
        if group.kind == "KIND_MODEL":
            problems.append(f"instance_group[{i}].kind: KIND_MODEL is not supported; use KIND_CPU, "
                            f"KIND_GPU or KIND_AUTO")
    instances = sum(group.count for group in config.instance_group)
    if len(config.instance_group) > 1 and instances > MAX_INSTANCES:
        problems.append(f"instance_group: {instances} instances in all; at most {MAX_INSTANCES} are "
                        f"allowed")
    _check_batching(config, problems)
    _check_ensemble(config, problems)
    execution = config.parameters.get("execution")
    if execution is not None and execution not in EXECUTION_MODES:
        problems.append(f"parameters.execution: expected one of {', '.join(EXECUTION_MODES)}, got "
                        f"'{execution}'")
    for name in TIMEOUT_PARAMETERS:
        try:
            timeout_seconds(config, name)
        except ValueError as e:
            problems.append(str(e))
    if config.decoupled and config.backend not in ("", "python"):
        problems.append(f"model_transaction_policy.decoupled: only Python models can be decoupled; "
                        f"this model's backend is {config.backend}")
    return problems


def check_model_filename(name: str) -> str | None:
    """The problem with default_model_filename, or None: it must name a file in the version folder
    itself, never a path that leads elsewhere."""
    if name and (name in (".", "..") or "/" in name or "\\" in name or "\0" in name):
        return (f"default_model_filename: expected a plain file name inside the version folder, such "
                f"as model.onnx; got {name!r}")
    return None


def fill_defaults(config: ModelConfig, model_name: str, auto_kind: str = "KIND_CPU") -> None:
    """Complete what Triton completes: the name, the version policy and the instance groups, where
    KIND_AUTO becomes `auto_kind` (KIND_GPU when the backend can use this machine's GPUs)."""
    config.name = model_name
    if config.version_policy is None:
        config.version_policy = VersionPolicy(latest=LatestPolicy(1))
    if not config.instance_group and not config.is_ensemble:  # an ensemble has no instances
        config.instance_group = [InstanceGroup()]
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{model_name}_{i}"
        if group.kind == "KIND_AUTO":
            group.kind = auto_kind


# --- writing ---------------------------------------------------------------------------------------

def to_dict(value: Any) -> Any:
    """The configuration in Triton's JSON form (ModelConfig's field names), as the config endpoints
    return it; fields that were not given and have no default are left out."""
    if isinstance(value, DataType):
        return value.config_name
    if dataclasses.is_dataclass(value):
        out = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None:
                continue
            if "value" in f.metadata:  # parameters
                out[f.name] = {k: {"string_value": v} for k, v in item.items()}
            else:
                out[f.name] = to_dict(item)
        return out
    if isinstance(value, list):
        return [to_dict(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_dict(v) for k, v in value.items()}
    return value


def shape_matches(dims: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a tensor's shape fits configured dims (-1: any size); both as tuples."""
    return shape == dims or (len(shape) == len(dims) and all(d == -1 or d == s for d, s in zip(dims, shape)))


def shape_text(dims: list[int], max_batch_size: int) -> str:
    """A tensor's full shape as clients see it: [-1,16] when the model batches."""
    full = ([-1] if max_batch_size > 0 else []) + list(dims or [])
    return "[" + ",".join(str(d) for d in full) + "]"


def load(raw: Any, model_name: str, complete=None) -> tuple[ModelConfig, list[str]]:
    """parse, then `complete(config)` (a backend fills what its model file tells, and returns its
    problems), then validate; each
    problem is said once (a field that failed to parse is not also reported as missing)."""
    config, problems = parse(raw)
    # a backend reads the model file while completing: never one outside the version folder
    if complete is not None and check_model_filename(config.default_model_filename) is None:
        problems += complete(config)
    if config.max_batch_size is None:
        config.max_batch_size = 0
    reported = {p.split(":", 1)[0] for p in problems}
    problems += [p for p in validate(config, model_name) if p.split(":", 1)[0] not in reported]
    return config, problems
