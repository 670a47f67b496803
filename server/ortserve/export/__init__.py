"""The companion tool: ``ortserve export | publish | inspect``.

Exports Hugging Face models to ONNX with Optimum, optimizes and quantizes them with ONNX Runtime,
checks them against PyTorch, benchmarks each variant in its own process, and publishes them into a
Triton-layout model repository by atomic rename. Needs the ``export`` extra (torch, transformers,
optimum); the daemon never imports this package, and ``ortserve.cli`` imports it only when one of
these commands runs.

Layout:

- ``cli``: the command line (flags, help, exit statuses); ``commands/``: one module per command
  (``export``, ``publish``, ``inspect``), ``ExportRun``, the state one export shares, and
  ``export_generation``, the export steps that differ for a causal LM (a generation model).
- ``convert/``: making graphs (the Optimum export, the LM head cut to the last position for a
  generation model, the optimizer, quantization).
- ``verify/``: judging them (sample inputs, parity check, a generation model's prefill and decode
  check, benchmark, which variants to publish).
- ``repository/``: writing them (atomic publish, config.pbtxt, manifest, the daemon's loader
  rules run beforehand).
- ``source`` (the model folder exported from), ``graph`` (an ONNX file described without running
  it), ``options``, ``report`` (what the user sees) and ``errors``, used across all of them.
"""
