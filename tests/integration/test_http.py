"""The HTTP front over a real socket: KServe v2 REST as Triton serves it (tritonclient.http,
curl-style JSON, the binary tensor extension), the same answers as gRPC, and the same guarantees:
auth, body limit, 4xx naming the field, 429 on a full queue, 503 and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from ortserve.settings import ServeSettings
from tests.conftest import START_TIMEOUT_S, Daemon, DaemonFactory, _read_listening, start_daemon
from tests.factories.certs import make_certs
from tests.factories.onnx_models import add_model, identity_model, slow_model, write_model
from tests.factories.text_models import write_text_model

SLOW = (
    "max_batch_size: 1\ndynamic_batching { default_queue_policy { max_queue_size: 2 } }\n"
    'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
)
LIMIT = 1 << 20  # --max-message-bytes of the module's daemon
X = np.arange(8, dtype=np.float32).reshape(2, 4)


def build_repo(repo: Path) -> None:
    write_model(repo, "add", add_model())
    write_model(repo, "bytes", identity_model(["BYTES"]))
    write_model(repo, "ints", identity_model(["INT64", "BOOL"]))
    write_text_model(repo, "sentiment", "text-classification", config="max_batch_size: 16\n")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("http")
    build_repo(root / "repo")
    started = start_daemon(root / "repo", root / "daemon.log", "--max-message-bytes", str(LIMIT))
    yield started
    assert started.stop() == 0


@pytest.fixture
def http(daemon: Daemon) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=daemon.http_url, timeout=30) as client:
        yield client


@pytest.fixture
def triton(daemon: Daemon) -> Iterator[th.InferenceServerClient]:
    client = th.InferenceServerClient(f"127.0.0.1:{daemon.http_port}")
    yield client
    client.close()


def _grpc_add(daemon: Daemon, x: np.ndarray) -> np.ndarray:
    with tg.InferenceServerClient(daemon.address) as client:
        tensor = tg.InferInput("x", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("add", [tensor]).as_numpy("y")
    assert result is not None
    return result


def test_the_http_port_is_logged(daemon: Daemon) -> None:
    assert isinstance(daemon.http_port, int)
    assert daemon.http_port > 0
    assert daemon.http_port not in (8000, daemon.port, daemon.metrics_port)


@pytest.mark.parametrize(
    ("given", "bound"),
    [
        ({}, 8000),
        ({"grpc_port": 0}, 0),  # free gRPC port: a free HTTP port too, as for metrics
        ({"grpc_port": 0, "http_port": 8080}, 8080),
        ({"http_port": 0}, 0),
        ({"no_http": True, "http_port": 8080}, None),
    ],
)
def test_the_http_port_follows_a_free_grpc_port_unless_given(
    given: dict[str, Any], bound: int | None
) -> None:
    assert ServeSettings(Path("repo"), **given).http_port_to_bind() == bound


def test_two_daemons_on_free_grpc_ports_take_free_http_ports(tmp_path: Path) -> None:
    """Without --http-port, two daemons started with --grpc-port 0 both start: neither takes
    8000; both ports are on their 'listening' lines."""
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORTSERVE_")}
    processes, ports = [], []
    try:
        for n in range(2):
            log_path = tmp_path / f"daemon-{n}.log"
            with log_path.open("wb") as log_file:
                processes.append(subprocess.Popen(
                    [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo),
                     "--host", "127.0.0.1", "--grpc-port", "0", "--log-format", "json"],
                    stdout=log_file, stderr=subprocess.STDOUT, env=env,
                ))  # fmt: skip
            record = _read_listening(log_path, processes[-1], time.monotonic() + START_TIMEOUT_S)
            ports.append(record["http_port"])
        assert len({*ports, 8000}) == 3
        for port in ports:
            deadline = time.monotonic() + 60
            while httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
            process.wait(30)


def test_health_metadata_config_over_tritonclient_http(
    triton: th.InferenceServerClient,
) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    assert triton.is_model_ready("add")
    assert not triton.is_model_ready("nope")
    server = triton.get_server_metadata()
    assert server["name"] == "ortserve"
    assert "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata("add")
    assert meta["name"] == "add"
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
    config = triton.get_model_config("add")
    assert config["name"] == "add"
    assert config["max_batch_size"] > 0
    with pytest.raises(InferenceServerException, match="nope"):
        triton.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http_infer_answers_as_grpc_does(
    daemon: Daemon, triton: th.InferenceServerClient, binary: bool
) -> None:
    tensor = th.InferInput("x", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    output = th.InferRequestedOutput("y", binary_data=binary)
    result = triton.infer("add", [tensor], outputs=[output], request_id="r-1")
    np.testing.assert_array_equal(result.as_numpy("y"), _grpc_add(daemon, X))
    response = result.get_response()
    assert response["model_name"] == "add"
    assert response["model_version"] == "1"
    assert response["id"] == "r-1"
    assert response["parameters"]["batch_size"] >= 1


def test_text_model_answers_as_over_grpc(daemon: Daemon, triton: th.InferenceServerClient) -> None:
    texts = np.array([[b"a fine day"], [b"a terrible day"]], dtype=np.object_)
    over_http = th.InferInput("TEXT", list(texts.shape), "BYTES")
    over_http.set_data_from_numpy(texts)
    http_result = triton.infer("sentiment", [over_http])
    with tg.InferenceServerClient(daemon.address) as client:
        over_grpc = tg.InferInput("TEXT", list(texts.shape), "BYTES")
        over_grpc.set_data_from_numpy(texts)
        grpc_result = client.infer("sentiment", [over_grpc])
    for name in ("LABEL", "SCORE", "SCORES"):
        np.testing.assert_array_equal(http_result.as_numpy(name), grpc_result.as_numpy(name))


def test_curl_style_json_infer(daemon: Daemon, http: httpx.Client) -> None:
    body = {
        "id": "42",
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}],
    }
    response = http.post("/v2/models/add/infer", json=body, headers={"X-Request-ID": "abc"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "abc"
    assert response.headers["content-type"].startswith("application/json")
    answer = response.json()
    assert (answer["model_name"], answer["model_version"], answer["id"]) == ("add", "1", "42")
    [out] = answer["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("y", "FP32", [2, 4])
    assert out["data"] == (X + 1).reshape(-1).tolist()
    # The version in the path, and a request id made up when none is sent.
    versioned = http.post("/v2/models/add/versions/1/infer", json=body)
    assert versioned.status_code == 200
    assert len(versioned.headers["x-request-id"]) == 32
    access = [r for r in daemon.log_records() if r.get("event") == "access"]
    assert any(
        r.get("request_id") == "abc" and r.get("route") == "infer" and r.get("status") == 200
        for r in access
    ), access[-3:]


def test_bytes_are_strings_and_bools_are_booleans_in_json(http: httpx.Client) -> None:
    body = {"inputs": [{"name": "in_BYTES", "shape": [1, 3], "datatype": "BYTES",
                        "data": ["é", "b", ""]}]}  # fmt: skip
    response = http.post("/v2/models/bytes/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == ["é", "b", ""]
    body = {"inputs": [
        {"name": "in_INT64", "shape": [1, 3], "datatype": "INT64", "data": [[1, -2, 2**40]]},
        {"name": "in_BOOL", "shape": [1, 3], "datatype": "BOOL", "data": [True, False, True]},
    ]}  # fmt: skip
    outputs = {
        o["name"]: o["data"]
        for o in http.post("/v2/models/ints/infer", json=body).json()["outputs"]
    }
    assert outputs == {"out_INT64": [1, -2, 2**40], "out_BOOL": [True, False, True]}


def test_binary_tensor_extension_round_trip(http: httpx.Client) -> None:
    raw = X.tobytes()
    header = json.dumps({
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)}}],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    response = http.post(
        "/v2/models/add/infer",
        content=header + raw,
        headers={"Inference-Header-Content-Length": str(len(header)),
                 "Content-Type": "application/octet-stream"},
    )  # fmt: skip
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    answer = json.loads(response.content[:length])
    [out] = answer["outputs"]
    assert out["parameters"]["binary_data_size"] == 32
    y = np.frombuffer(response.content[length:], np.float32).reshape(out["shape"])
    np.testing.assert_array_equal(y, X + 1)
    # BYTES in binary form: length-prefixed elements, as over gRPC.
    elements = b"".join(struct.pack("<I", len(s)) + s for s in (b"x", b"yz", "é".encode()))
    header = json.dumps({
        "inputs": [{"name": "in_BYTES", "shape": [1, 3], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(elements)}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    response = http.post("/v2/models/bytes/infer", content=header + elements,
                         headers={"Inference-Header-Content-Length": str(len(header))})  # fmt: skip
    assert response.status_code == 200, response.text
    length = int(response.headers["inference-header-content-length"])
    assert response.content[length:] == elements


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/v2/models/nope/infer", {"inputs": []}, 404, "nope"),
        ("/v2/models/add/versions/7/infer", {"inputs": []}, 404, "7"),
        (
            "/v2/models/add/infer",
            {"inputs": [{"name": "z", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            400,
            "'z'",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3]}]},
            400,
            "'data' has 3",
        ),
        (
            "/v2/models/add/infer",
            {
                "inputs": [
                    {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": ["a", 2, 3, 4]}
                ]
            },
            400,
            "must be numbers",
        ),
        (
            "/v2/models/add/infer",
            {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "F32", "data": [1, 2, 3, 4]}]},
            400,
            "datatype 'F32'",
        ),
        ("/v2/models/add/infer", {"inputs": "x"}, 400, "'inputs'"),
        ("/v2/models/add/infer", [1], 400, "JSON object"),
    ],
)
def test_errors_name_the_model_or_the_field(
    http: httpx.Client, path: str, body: object, status: int, named: str
) -> None:
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert named in response.json()["error"]


def test_bad_json_and_unknown_routes(http: httpx.Client) -> None:
    response = http.post("/v2/models/add/infer", content=b"{not json")
    assert response.status_code == 400
    assert "not JSON" in response.json()["error"]
    assert http.get("/v2/nothing/here").status_code == 404
    bad = http.post("/v2/models/add/infer", json={"inputs": []},
                    headers={"X-Request-Timeout-Ms": "soon"})  # fmt: skip
    assert bad.status_code == 400
    assert "X-Request-Timeout-Ms" in bad.json()["error"]


def test_a_body_over_the_limit_gets_413_naming_it(http: httpx.Client) -> None:
    response = http.post("/v2/models/add/infer", content=b" " * (LIMIT + 1))
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(LIMIT // 65536 + 2):
            yield b" " * 65536

    response = http.post("/v2/models/add/infer", content=chunks())
    assert response.status_code == 413
    assert str(LIMIT) in response.json()["error"]


def test_statistics_index_and_metrics(daemon: Daemon, http: httpx.Client) -> None:
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}]}
    assert http.post("/v2/models/add/infer", json=body).status_code == 200
    stats = http.get("/v2/models/add/stats").json()
    [entry] = stats["model_stats"]
    assert entry["name"] == "add"
    assert entry["inference_count"] >= 1
    assert entry["inference_stats"]["success"]["count"] >= 1
    assert http.get("/v2/models/stats").status_code == 200
    index = http.post("/v2/repository/index", json={"ready": True}).json()
    assert {(r["name"], r["version"], r["state"]) for r in index} >= {("add", "1", "READY")}
    load = http.post("/v2/repository/models/add/load")
    assert load.status_code == 503
    assert "--enable-repository-control" in load.json()["error"]
    metrics = httpx.get(f"http://127.0.0.1:{daemon.metrics_port}/metrics").text
    assert 'ortserve_http_requests_total{route="infer",status="200"}' in metrics


def test_a_full_queue_gets_429_with_retry_after(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", slow_model(size=768), config=SLOW)
    daemon = daemon_factory(repo)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}

    async def flood() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=64)
        async with httpx.AsyncClient(base_url=daemon.http_url, timeout=60, limits=limits) as c:
            return await asyncio.gather(
                *(c.post("/v2/models/slow/infer", json=body) for _ in range(60))
            )

    responses = asyncio.run(flood())
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {200, 429}, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.headers["retry-after"] == "1"
    assert "queue is full" in refused.json()["error"]

    async def hurried() -> list[httpx.Response]:  # a deadline shorter than the queue's wait
        async with httpx.AsyncClient(base_url=daemon.http_url, timeout=60) as c:
            return await asyncio.gather(*(
                c.post("/v2/models/slow/infer", json=body, headers={"X-Request-Timeout-Ms": "20"})
                for _ in range(3)
            ))  # fmt: skip

    codes = Counter(r.status_code for r in asyncio.run(hurried()))
    assert codes[504] >= 1, codes
    assert set(codes) <= {200, 429, 504}, codes


def test_auth_guards_all_but_health(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    (tmp_path / "tokens").write_text("s3cret\n")
    daemon = daemon_factory(repo, "--auth-token-file", str(tmp_path / "tokens"), wait_ready=False)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    with httpx.Client(base_url=daemon.http_url, timeout=30) as http:
        deadline = time.monotonic() + 60
        while http.get("/v2/health/ready").status_code != 200:  # open without a token
            assert time.monotonic() < deadline
            time.sleep(0.05)
        denied = http.post("/v2/models/add/infer", json=body)
        assert denied.status_code == 401
        assert "Bearer" in denied.json()["error"]
        wrong = http.get("/v2", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        allowed = http.post("/v2/models/add/infer", json=body,
                            headers={"Authorization": "Bearer s3cret"})  # fmt: skip
        assert allowed.status_code == 200
    triton = th.InferenceServerClient(f"127.0.0.1:{daemon.http_port}")
    assert triton.get_model_metadata("add", headers={"Authorization": "Bearer s3cret"})["name"]
    triton.close()


def test_tls_serves_https_with_the_grpc_certificate(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    certs = make_certs(tmp_path / "certs")
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(
        repo, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        wait_ready=False,
    )  # fmt: skip
    url = f"https://127.0.0.1:{daemon.http_port}"
    with httpx.Client(
        base_url=url, verify=ssl.create_default_context(cafile=certs.ca), timeout=30
    ) as https:
        deadline = time.monotonic() + 60
        while https.get("/v2/health/ready").status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{daemon.http_port}/v2/health/ready", timeout=5)


def test_mtls_requires_a_client_certificate(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    certs = make_certs(tmp_path / "certs")
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(
        repo, "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca), wait_ready=False,
    )  # fmt: skip
    url = f"https://127.0.0.1:{daemon.http_port}/v2/health/live"
    with_cert = ssl.create_default_context(cafile=certs.ca)
    with_cert.load_cert_chain(certs.client_cert, certs.client_key)
    deadline = time.monotonic() + 60
    while True:
        try:
            assert httpx.get(url, verify=with_cert, timeout=5).status_code == 200
            break
        except httpx.ConnectError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with pytest.raises(httpx.HTTPError):
        httpx.get(url, verify=ssl.create_default_context(cafile=certs.ca), timeout=5)


def test_no_http_serves_grpc_only(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, "--no-http")
    assert daemon.http_port is None
    assert _grpc_add(daemon, X).shape == (2, 4)


def test_sigterm_drains_both_fronts(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "slow", slow_model(size=768), config=SLOW.replace("2 }", "64 }"))
    daemon = daemon_factory(repo, "--drain-seconds", "1", "--grace-seconds", "30")
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0, 0, 0, 0]}]}
    answers: list[int] = []

    def one() -> None:
        answers.append(httpx.post(f"{daemon.http_url}/v2/models/slow/infer", json=body,
                                  timeout=60).status_code)  # fmt: skip

    in_flight = [threading.Thread(target=one) for _ in range(6)]
    for thread in in_flight:
        thread.start()
    time.sleep(0.3)
    daemon.process.send_signal(signal.SIGTERM)
    with httpx.Client(base_url=daemon.http_url, timeout=10) as http:
        deadline = time.monotonic() + 10
        while (ready := http.get("/v2/health/ready").status_code) == 200:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert ready == 503  # draining: not ready, still answering
        late = None
        while late is None or late.status_code == 200:
            assert time.monotonic() < deadline + 10
            late = http.post("/v2/models/slow/infer", json=body)
        assert late.status_code == 503
        assert "shutting down" in late.json()["error"]
    for thread in in_flight:
        thread.join(60)
    assert answers == [200] * 6  # admitted before the stop: every one answered
    assert daemon.process.wait(30) == 0
    records = daemon.log_records()
    [counts] = [r for r in records if r.get("event") == "requests"]
    assert counts["admitted"] == counts["answered"]
    assert records[-1]["event"] == "stopped"


def test_repository_load_and_unload_over_http(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    daemon = daemon_factory(repo, "--model-control-mode", "explicit")
    with httpx.Client(base_url=daemon.http_url, timeout=60) as http:
        assert http.get("/v2/models/add/ready").status_code == 503
        assert "model_repository" in http.get("/v2").json()["extensions"]
        loaded = http.post("/v2/repository/models/add/load")
        assert loaded.status_code == 200, loaded.text
        assert http.get("/v2/models/add/ready").status_code == 200
        bad = http.post("/v2/repository/models/add/load", json={"parameters": {"size": 1}})
        assert bad.status_code == 400
        assert "'size'" in bad.json()["error"]
        assert http.post("/v2/repository/models/add/unload").status_code == 200
        assert http.get("/v2/models/add/ready").status_code == 503
        missing = http.post("/v2/repository/models/nope/load")
        assert missing.status_code in (400, 404), missing.text
        assert "nope" in missing.json()["error"]
