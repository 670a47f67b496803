"""The HTTP front: KServe v2 REST (as Triton serves it), OpenAI-compatible and task routes.

Served by uvicorn in the daemon's own process and event loop, beside gRPC, calling the same
inference service, registry, auth tokens, limits and shutdown (``server.HttpFront``). No grpc
import here: errors map through protocol/status.py's one table (``errors``).
"""
