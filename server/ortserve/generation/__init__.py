"""Text generation: prompts in, tokens streamed out, many requests sharing each decode step.

``model`` reads a generation model's version folder (the ONNX Runtime session of an Optimum
text-generation-with-past export, the tokenizer, eos ids, context limit); ``scheduler`` owns that
session in a thread and runs continuous batching over a left-padded KV cache (``kvcache``), with
vectorised sampling (``sampling``) and incremental decoding with stop strings (``detokenize``);
``engine`` is its asyncio face (``GenerationEngine.generate`` yields ``types.Delta``). The
Triton vLLM-backend request protocol on top is ``adapter`` and ``params``.
"""
