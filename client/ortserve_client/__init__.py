"""ortserve_client: a typed Python client for the KServe v2 / Triton gRPC inference API.

Works against ortserve and any server speaking the same API (Triton too). Sync and asyncio,
numpy in and out, one exception root carrying the gRPC status code.

Example::

    import numpy as np
    from ortserve_client import Client

    with Client("127.0.0.1:8001") as client:
        print(client.infer("add", {"x": np.ones((1, 4), np.float32)})["y"])
"""

from ortserve_client._base import InferResult
from ortserve_client.aio import AsyncClient
from ortserve_client.client import Client
from ortserve_client.errors import (
    DeadlineExceededError,
    InferenceServerError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from ortserve_client.generation import Generation
from ortserve_client.tasks import Answer, Classification, Entity

__all__ = [
    "Answer",
    "AsyncClient",
    "Classification",
    "Client",
    "DeadlineExceededError",
    "Entity",
    "Generation",
    "InferResult",
    "InferenceServerError",
    "InvalidArgumentError",
    "NotFoundError",
    "ResourceExhaustedError",
    "UnavailableError",
]
