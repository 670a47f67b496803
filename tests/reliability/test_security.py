"""TLS, mTLS and the bearer token: the configured client gets in, the others are refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve_client import Client, InferenceServerError
from tests.conftest import DaemonFactory
from tests.factories.certs import make_certs
from tests.factories.onnx_models import add_model, write_model

X = np.ones((1, 4), np.float32)


def test_tls_mtls_and_token(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    certs = make_certs(tmp_path / "certs")
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    tokens = tmp_path / "tokens"
    tokens.write_text("# rotated tokens, one a line\nold-secret\ns3cret\n")
    daemon = daemon_factory(
        repo,
        "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
        "--tls-client-ca", str(certs.ca), "--auth-token-file", str(tokens),
        wait_ready=False,
    )  # fmt: skip
    ca = certs.ca.read_bytes()
    mine = {"certificate_chain": certs.client_cert.read_bytes(),
            "private_key": certs.client_key.read_bytes()}  # fmt: skip
    # The right certificate and token: served.
    with Client(daemon.address, root_certificates=ca, token="s3cret", timeout=30,
                wait_for_ready=True, **mine) as client:  # fmt: skip
        np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 1)
    with Client(daemon.address, root_certificates=ca, token="old-secret", **mine) as client:
        assert client.ready()
    # No token, or a wrong one: UNAUTHENTICATED, with a message saying what to send.
    for token in (None, "guess"):
        with (
            Client(daemon.address, root_certificates=ca, token=token, retries=0, **mine) as client,
            pytest.raises(InferenceServerError) as info,
        ):
            client.infer("add", {"x": X})
        assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
        assert "bearer token" in info.value.message
    # A client certificate from another CA, or none: the TLS handshake fails.
    stranger = {"certificate_chain": certs.other_client_cert.read_bytes(),
                "private_key": certs.other_client_key.read_bytes()}  # fmt: skip
    for extra in (stranger, {}):
        with (
            Client(daemon.address, root_certificates=ca, token="s3cret", retries=0, timeout=5,
                   **extra) as client,
            pytest.raises(InferenceServerError) as info,
        ):  # fmt: skip
            client.live()
        assert info.value.code == grpc.StatusCode.UNAVAILABLE
    # Plain text to a TLS port: refused too.
    with (
        Client(daemon.address, token="s3cret", retries=0, timeout=5) as client,
        pytest.raises(InferenceServerError),
    ):
        client.live()
    # Health stays open without a token (but still over mTLS).
    creds = grpc.ssl_channel_credentials(ca, mine["private_key"], mine["certificate_chain"])
    with grpc.secure_channel(daemon.address, creds) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        status = health.Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10, wait_for_ready=True
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    # The token never reaches the log.
    assert "s3cret" not in daemon.log_path.read_text()


def _start_fails(tmp_path: Path, *flags: str) -> str:
    import subprocess
    import sys

    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    result = subprocess.run(
        [sys.executable, "-m", "ortserve", "serve", "--model-repository", str(repo),
         "--host", "127.0.0.1", "--grpc-port", "0", "--metrics-port", "-1", *flags],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    return result.stderr


def test_bad_tls_files_are_named(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    cases = [
        (["--tls-cert", str(junk), "--tls-key", str(certs.server_key)], f"--tls-cert {junk}"),
        # a key that is not the certificate's own
        (["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.client_key)],
         "not a PEM certificate and its matching private key"),
        (["--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key),
          "--tls-client-ca", str(junk)], f"--tls-client-ca {junk}: not a PEM CA bundle"),
    ]  # fmt: skip
    for flags, says in cases:
        err = _start_fails(tmp_path, *flags)
        assert "cannot start" in err
        assert says in err
        assert "Failed to bind" not in err


def test_a_token_file_with_a_byte_order_mark(tmp_path: Path, daemon_factory: DaemonFactory) -> None:
    repo = tmp_path / "repo"
    write_model(repo, "add", add_model())
    tokens = tmp_path / "tokens"
    tokens.write_bytes("\ufeffs3cret\n".encode())
    daemon = daemon_factory(repo, "--auth-token-file", str(tokens), wait_ready=False)
    with Client(daemon.address, token="s3cret", timeout=30, wait_for_ready=True) as client:
        np.testing.assert_array_equal(client.infer("add", {"x": X})["y"], X + 1)
