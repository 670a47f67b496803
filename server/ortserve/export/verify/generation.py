"""The parity check of a generation model: next-token logits, after the prompt and after one
decode step, ONNX against PyTorch.

The published graph serves both steps the engine runs: prefill (the prompt, an empty past) and
decode (one token, the past the prefill returned). Both are checked, on the sample texts as one
batch padded on the left (as the engine pads its rows) and one row at a time:

- ``logits``: the last position after the prompt (the graph's LM head sees only that position
  once ``convert/last_position`` has sliced it; PyTorch's full logits are cut to it);
- ``decode_logits``: after feeding PyTorch's greedy next token with the ``present.*`` outputs of
  the prefill as ``past_key_values.*``, against PyTorch run on the prompt and that token.

Every variant decodes the same token (PyTorch's choice), so a quantized graph is judged on the
same continuation. The figures then go through ``check.compare`` and ``check.judge`` as for any
model: max |diff| for FP32, cosine and argmax agreement for quantized variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ortserve.export.options import GENERATION_OUTPUTS
from ortserve.export.verify.check import Figures, compare
from ortserve.export.verify.samples import torch_inputs
from ortserve_client.tensors import Array

LOGITS, DECODE_LOGITS = GENERATION_OUTPUTS
_NEXT = "next_ids"  # the reference's greedy token after the prompt, [batch, 1]


def reference_generation(model: Any, batches: Sequence[dict[str, Array]]) -> list[dict[str, Array]]:
    """PyTorch's last-position logits after each prompt and after one greedy token more."""
    import torch

    results = []
    with torch.inference_mode():
        for feeds in batches:
            prompt = _torch_logits(model, torch_inputs(feeds))
            next_ids = prompt.argmax(axis=-1).astype(np.int64)
            extended = _extend(torch_inputs(feeds), next_ids)
            results.append(
                {
                    LOGITS: prompt,
                    DECODE_LOGITS: _torch_logits(model, extended),
                    _NEXT: next_ids,
                }
            )
    return results


def run_generation(
    session: Any, batches: Sequence[dict[str, Array]], reference: Sequence[dict[str, Array]]
) -> list[dict[str, Array]]:
    """The ONNX graph's prefill on each batch, then one decode step on its own past, fed the
    reference's next token."""
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    results = []
    for feeds, ref in zip(batches, reference, strict=True):
        prefill = dict(zip(names, session.run(names, _only(feeds, wanted)), strict=True))
        step = _extend(torch_inputs(feeds), ref[_NEXT])
        step["input_ids"] = ref[_NEXT]
        if "position_ids" in step:
            step["position_ids"] = step["position_ids"][:, -1:]
        for name, value in prefill.items():
            if name.startswith("present."):
                step["past_key_values." + name.removeprefix("present.")] = value
        decoded = dict(zip(names, session.run(names, _only(step, wanted)), strict=True))
        results.append(
            {LOGITS: prefill[LOGITS][:, -1:, :], DECODE_LOGITS: decoded[LOGITS][:, -1:, :]}
        )
    return results


def compare_generation(
    reference: Sequence[dict[str, Array]], got: Sequence[dict[str, Array]]
) -> Figures:
    """``check.compare`` on the [batch, 1, vocab] logits: one vector per row and step."""
    no_mask: list[dict[str, Array]] = [{} for _ in reference]
    return compare(reference, got, no_mask, True, GENERATION_OUTPUTS)


def _torch_logits(model: Any, feeds: dict[str, Array]) -> Array:
    import torch

    inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
    logits = model(**inputs).logits
    result: Array = logits[:, -1:, :].detach().float().numpy()
    return result


def _extend(feeds: dict[str, Array], next_ids: Array) -> dict[str, Array]:
    """The feeds with one token more on the right: its id, mask 1, the next position."""
    out = dict(feeds)
    out["input_ids"] = np.concatenate([feeds["input_ids"], next_ids.astype(np.int64)], axis=1)
    mask = feeds.get("attention_mask")
    if mask is not None:
        out["attention_mask"] = np.concatenate([mask, np.ones_like(mask[:, :1])], axis=1)
    positions = feeds.get("position_ids")
    if positions is not None:
        following = positions.max(axis=1, keepdims=True) + 1
        out["position_ids"] = np.concatenate([positions, following.astype(positions.dtype)], axis=1)
    return out


def _only(feeds: dict[str, Array], wanted: set[str]) -> dict[str, Array]:
    return {k: v for k, v in feeds.items() if k in wanted}
