"""The companion tool: ``ortserve export | publish | inspect``.

Exports Hugging Face models to ONNX with Optimum, optimizes and quantizes them with ONNX Runtime,
checks them against PyTorch, benchmarks each variant in its own process, and publishes them into a
Triton-layout model repository by atomic rename. Needs the ``export`` extra (torch, transformers,
optimum); the daemon never imports this package, and ``ortserve.cli`` imports it only when one of
these commands runs.
"""
