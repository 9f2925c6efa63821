"""The committed protobuf modules match the .proto files, and speak Triton's wire format."""
from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_generated_modules_are_fresh():
    result = subprocess.run([sys.executable, str(REPO_ROOT / "proto" / "generate.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_messages_are_wire_compatible_with_tritonclient():
    from tritonclient.grpc import model_config_pb2 as triton_config
    from tritonclient.grpc import service_pb2 as triton

    from naiad.proto import grpc_service_pb2 as ours
    from naiad.proto import model_config_pb2 as our_config

    for name, message in triton.DESCRIPTOR.message_types_by_name.items():
        mine = ours.DESCRIPTOR.message_types_by_name[name]
        assert {(f.name, f.number, f.type) for f in message.fields} == \
            {(f.name, f.number, f.type) for f in mine.fields}, name
    for name, message in triton_config.DESCRIPTOR.message_types_by_name.items():
        mine = our_config.DESCRIPTOR.message_types_by_name[name]
        assert {(f.name, f.number, f.type) for f in message.fields} == \
            {(f.name, f.number, f.type) for f in mine.fields}, name
    ours_service = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = triton.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert [m.name for m in ours_service.methods] == [m.name for m in theirs.methods]
