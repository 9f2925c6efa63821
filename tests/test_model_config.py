"""Unit tests of the configuration schema: every problem found, located, and explained."""
from __future__ import annotations

from naiad.daemon import model_config

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
        "max_batch_size: expected 0 (no batching) or more, got -1",
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
    assert "ensemble_scheduling: ensembles are not supported yet; remove it" in found


def test_types_and_values():
    found = problems({**SIMPLE, "max_batch_size": "8x", "parameters": {"a": [1]},
                      "instance_group": [{"kind": "KIND_TPU", "count": 0}]})
    assert "max_batch_size: expected an integer, got '8x'" in found
    assert any(p.startswith("parameters.a: expected a string") for p in found)
    assert any(p.startswith("instance_group[0].kind: expected one of KIND_AUTO") for p in found)
    assert "instance_group[0].count: must be >= 1, got 0" in found


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
