"""Container health check: exit 0 when the daemon's grpc.health.v1 says SERVING for service "".

The image's HEALTHCHECK runs it (Docker, Podman, Compose); Kubernetes ignores HEALTHCHECK and uses
its own gRPC probes (deploy/kubernetes/deployment.yaml). It asks ORTSERVE_HEALTH_TARGET, else
127.0.0.1:$ORTSERVE_GRPC_PORT (default 8001), over plaintext: with --tls-cert, replace the
HEALTHCHECK. Needs grpcio-health-checking, which the server extra installs.

    python deploy/healthcheck.py [HOST:PORT]
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

TIMEOUT_S = 3.0


def main(argv: list[str]) -> int:
    default = "127.0.0.1:" + os.environ.get("ORTSERVE_GRPC_PORT", "8001")
    target = argv[1] if len(argv) > 1 else os.environ.get("ORTSERVE_HEALTH_TARGET", default)
    request = health_pb2.HealthCheckRequest(service="")
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(request, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        print(f"{target}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
