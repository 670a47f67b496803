"""Making ONNX graphs: the Optimum export, ONNX Runtime's transformer optimizer, quantization.

Each step writes a new graph beside the last and never changes the one it was given."""
