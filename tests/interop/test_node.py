"""Other clients work too: Node.js (@grpc/grpc-js + @grpc/proto-loader over protos/), and a
grpcurl-style look at the service through server reflection."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import Daemon, start_daemon
from tests.factories.onnx_models import add_model, write_model

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("interop")
    write_model(root / "repo", "add", add_model())
    started = start_daemon(root / "repo", root / "daemon.log")
    yield started
    assert started.stop() == 0


def test_node_client(daemon: Daemon) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed (scripts/test.sh installs the npm packages)"
    assert (HERE / "node_modules" / "@grpc" / "grpc-js").is_dir(), (
        "run: npm ci --prefix tests/interop"
    )
    result = subprocess.run([node, str(HERE / "client.js"), daemon.address, "add"],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout.strip().splitlines()[-1])
    assert reply["server"] == "ortserve"
    assert "statistics" in reply["extensions"]
    assert reply["platform"] == "onnxruntime_onnx"
    assert reply["input"] == "x"
    assert reply["id"] == "from-node"
    assert reply["version"] == "1"
    assert reply["output"] == [2.5, 3.5, 4.5, 5.5]
    assert reply["error"]["code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert "no-such-model" in reply["error"]["details"]


def test_reflection_describes_model_infer_like_grpcurl(daemon: Daemon) -> None:
    """What `grpcurl list` and `grpcurl describe inference.ModelInferRequest` would show."""
    with grpc.insecure_channel(daemon.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(
                file_containing_symbol="inference.ModelInferRequest"
            ),
        ]
        listing, described = list(stub.ServerReflectionInfo(iter(requests), timeout=10))
    services = sorted(s.name for s in listing.list_services_response.service)
    assert "inference.GRPCInferenceService" in services
    files = {
        f.name: f
        for f in (descriptor_pb2.FileDescriptorProto.FromString(raw)
                  for raw in described.file_descriptor_response.file_descriptor_proto)
    }  # fmt: skip
    request = next(
        m for m in files["grpc_service.proto"].message_type if m.name == "ModelInferRequest"
    )
    fields = {f.name: f.number for f in request.field}
    assert fields == {"model_name": 1, "model_version": 2, "id": 3, "parameters": 4, "inputs": 5,
                      "outputs": 6, "raw_input_contents": 7}  # fmt: skip
