"""Unit tests of the configuration schema: every problem found, located, and explained."""
from __future__ import annotations

import pickle

from naiad.daemon import model_config
from naiad.daemon.errors import Code, ConfigError, NaiadError

SIMPLE = {"backend": "python", "max_batch_size": 8,
          "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}],
          "output": [{"name": "OUTPUT0", "data_type": "INT32", "dims": [16]}]}


def problems(raw: dict) -> list[str]:
    return model_config.load(raw, "simple")[1]


def test_a_good_config_and_its_completed_form():
    config, found = model_config.load(SIMPLE, "simple")
    assert found == []
    model_config.fill_defaults(config, "simple")
    as_dict = model_config.to_dict(config)
    assert as_dict["name"] == "simple" and as_dict["max_batch_size"] == 8
    assert as_dict["input"][0]["data_type"] == "TYPE_INT32" and as_dict["output"][0]["data_type"] == "TYPE_INT32"
    assert as_dict["instance_group"] == [{"name": "simple_0", "kind": "KIND_CPU", "count": 1, "gpus": []}]
    assert as_dict["version_policy"] == {"latest": {"num_versions": 1}}


def test_every_problem_is_reported_once():
    raw = {**SIMPLE, "max_batch_size": -1, "frobnicate": 1,
           "input": [{"name": "INPUT0", "data_type": "FP33", "dims": [16]},
                     {"name": "INPUT0", "data_type": "FP32", "dims": [0, -2]}],
           "output": [{"name": "OUTPUT0", "data_type": "FP32"}]}
    found = problems(raw)
    expected = [
        "frobnicate: unknown field",
        "input[0].data_type: expected a data type",
        "max_batch_size: expected 0 (no batching) to 1048576, got -1",
        "input[1].name: 'INPUT0' is used by two inputs",
        "input[1].dims[0]: expected a size >= 1 or -1 (varies), got 0",
        "input[1].dims[1]: expected a size >= 1 or -1 (varies), got -2",
        "output[0].dims: missing",
    ]
    for words in expected:
        assert sum(p.startswith(words) for p in found) == 1, (words, found)
    assert not any(p.startswith("input[0].data_type: missing") for p in found)


def test_misspelled_field_gets_a_suggestion():
    raw = {**SIMPLE, "max_batch_sise": 4}
    assert any("did you mean 'max_batch_size'?" in p for p in problems(raw))


def test_unsupported_triton_fields_are_refused_by_name():
    found = problems({**SIMPLE, "sequence_batching": {}, "ensemble_scheduling": {"step": []}})
    assert "sequence_batching: stateful (sequence) models are not supported yet; remove it" in found
    # ensembles are supported; steps on a model that is not one are refused
    assert ("ensemble_scheduling: only an ensemble has steps; set platform: ensemble, or remove "
            "ensemble_scheduling") in found


def test_types_and_values():
    found = problems({**SIMPLE, "max_batch_size": "8x", "parameters": {"a": [1]},
                      "instance_group": [{"kind": "KIND_TPU", "count": 0}]})
    assert "max_batch_size: expected an integer, got '8x'" in found
    assert any(p.startswith("parameters.a: expected a string") for p in found)
    assert any(p.startswith("instance_group[0].kind: expected one of KIND_AUTO") for p in found)
    assert "instance_group[0].count: expected 1 to 128, got 0" in found


def test_batching_rules():
    found = problems({**SIMPLE, "max_batch_size": 0,
                      "dynamic_batching": {"preferred_batch_size": [4], "priority_levels": 2,
                                           "default_priority_level": 3}})
    assert any(p.startswith("dynamic_batching: needs max_batch_size > 0") for p in found)
    assert any(p.startswith("dynamic_batching.preferred_batch_size[0]") for p in found)
    assert any(p.startswith("dynamic_batching.default_priority_level: expected 1 to priority_levels 2")
               for p in found)


def test_version_policy_and_reshape():
    found = problems({**SIMPLE, "version_policy": {"latest": {"num_versions": 0}, "all": {}},
                      "input": [{"name": "I", "data_type": "FP32", "dims": [6], "reshape": {"shape": [4]}}]})
    assert any(p.startswith("version_policy: set exactly one of latest, all, specific") for p in found)
    assert "version_policy.latest.num_versions: must be >= 1" in found
    assert any(p.startswith("input[0].reshape.shape: [4] holds a different number") for p in found)


def test_names_and_execution_mode():
    found = model_config.load({**SIMPLE, "name": "other", "parameters": {"execution": "gpu"}}, "simple")[1]
    assert any(p.startswith("name: 'other' differs from the model's folder name 'simple'") for p in found)
    assert any(p.startswith("parameters.execution: expected one of process, thread, inline") for p in found)


def test_protobuf_json_form_is_read():
    """What tritonclient's get_model_config(as_json=True) returns (int64 as strings) reads back."""
    raw = {**SIMPLE, "input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": ["16"]}],
           "parameters": {"k": {"string_value": "v"}}}
    config, found = model_config.load(raw, "simple")
    assert found == [] and config.input[0].dims == [16] and config.parameters == {"k": "v"}


def test_values_that_size_memory_or_work_are_bounded():
    batching = {"dynamic_batching": {"priority_levels": 2000000,
                                     "max_queue_delay_microseconds": 10 ** 12,
                                     "default_queue_policy": {"max_queue_size": 2 ** 40,
                                                              "default_timeout_microseconds": 10 ** 13}}}
    found = problems({**SIMPLE, "max_batch_size": 2 ** 31, **batching,
                      "instance_group": [{"count": 100}, {"count": 100}, {"count": 1000}]})
    for expected in [
        "max_batch_size: expected 0 (no batching) to 1048576, got 2147483648",
        "dynamic_batching.priority_levels: expected 0 (no priorities) to 128, got 2000000",
        "dynamic_batching.max_queue_delay_microseconds: expected 0 to 60000000, got 1000000000000",
        "dynamic_batching.default_queue_policy.max_queue_size: expected 0 (no bound) to 1048576",
        "dynamic_batching.default_queue_policy.default_timeout_microseconds: expected 0 (none) to 3600000000",
        "instance_group[2].count: expected 1 to 128, got 1000",
        "instance_group: 1200 instances in all; at most 128 are allowed",
    ]:
        assert sum(p.startswith(expected) for p in found) == 1, (expected, found)
    # at the bounds, all is well
    at_bounds = {"dynamic_batching": {"priority_levels": 128, "default_priority_level": 1,
                                      "max_queue_delay_microseconds": 60_000_000}}
    assert problems({**SIMPLE, "max_batch_size": 1 << 20, **at_bounds,
                     "instance_group": [{"count": 64}, {"count": 64}]}) == []


def test_dimensions_are_bounded():
    def dims_problems(dims, max_batch_size=8):
        return problems({**SIMPLE, "max_batch_size": max_batch_size,
                         "input": [{"name": "INPUT0", "data_type": "INT32", "dims": dims}]})
    assert dims_problems([1] * 63) == [] and dims_problems([1] * 64, max_batch_size=0) == []
    assert dims_problems([1] * 64) == [
        "input[0].dims: 64 dimensions; at most 63 are allowed (the batch dimension takes one of 64)"]
    assert dims_problems([1] * 65, max_batch_size=0) == ["input[0].dims: 65 dimensions; at most 64 are allowed"]
    assert dims_problems([2 ** 41]) == [
        "input[0].dims[0]: 2199023255552 is too large; a size is at most 2^40 (1099511627776)"]


def test_default_model_filename_is_a_file_of_the_version_folder():
    completed = []

    def complete(config):  # a backend reading the model file
        completed.append(config.default_model_filename)
        return []

    for bad in ("../../other/1/model.py", "sub/model.py", "..", "a\\b"):
        config, found = model_config.load({**SIMPLE, "default_model_filename": bad}, "simple", complete)
        assert found == [f"default_model_filename: expected a plain file name inside the version "
                         f"folder, such as model.onnx; got {bad!r}"]
    assert completed == []  # nothing read the file it names
    assert model_config.load({**SIMPLE, "default_model_filename": "net.py"}, "simple", complete)[1] == []
    assert completed == ["net.py"]


def test_config_error_is_an_invalid_argument_that_keeps_its_problems():
    error = ConfigError(["config.yaml: max_batch_size: bad", "config.yaml: input: missing"])
    assert isinstance(error, NaiadError) and error.code is Code.INVALID_ARGUMENT
    assert error.message == "config.yaml: max_batch_size: bad; config.yaml: input: missing"
    copied = pickle.loads(pickle.dumps(error))  # as it crosses from a worker process
    assert type(copied) is ConfigError and copied.problems == error.problems
    assert copied.message == error.message
