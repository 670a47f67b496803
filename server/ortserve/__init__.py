"""ortserve: a gRPC serving daemon for ONNX models."""
