"""ortserve_client: typed Python client for the KServe v2 / Triton gRPC inference API."""
