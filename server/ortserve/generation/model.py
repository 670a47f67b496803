"""A generation model's version folder, read once at load: the ONNX Runtime session of an Optimum
text-generation-with-past export, its tokenizer, eos ids and context limit.

The shapes of the KV cache (layers, KV heads, head size, dtype) and the inputs the graph takes
(``position_ids`` and ``attention_mask`` are optional) are read from the session itself, so GPT-2
and Llama-style (grouped-query attention) exports need nothing model-specific here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from tokenizers import Tokenizer

from ortserve.errors import ModelLoadError
from ortserve.runtime.options import ort_available_providers, provider_plan, session_options
from ortserve.text.files import read_files
from ortserve_client.proto import model_config_pb2 as mc

MODEL_FILE = "model.onnx"
_PAST = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_DTYPES: dict[str, type[np.generic]] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
# config.json keys that give the context limit, by model family.
_CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


@dataclass(frozen=True, slots=True)
class GraphSpec:
    """What the exported graph takes and gives, read from the session."""

    layers: int
    kv_heads: int
    head_dim: int
    kv_dtype: type[np.generic]
    has_attention_mask: bool
    has_position_ids: bool

    def past_names(self) -> list[str]:
        return [
            f"past_key_values.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")
        ]

    def present_names(self) -> list[str]:
        return [f"present.{i}.{kind}" for i in range(self.layers) for kind in ("key", "value")]


@dataclass(frozen=True, slots=True)
class GenerationModel:
    """Everything the engine needs of one model version (``load`` builds it)."""

    session: Any  # ort.InferenceSession: used only by the scheduler's thread
    tokenizer: Tokenizer
    spec: GraphSpec
    eos_ids: frozenset[int]
    context_limit: int  # prompt + generated tokens at most
    provider: str = "CPUExecutionProvider"
    name: str = "model"  # for messages

    @classmethod
    def load(cls, version_dir: Path, config: mc.ModelConfig, source: str) -> GenerationModel:
        """Read ``version_dir`` with the config's session options and providers (ModelLoadError
        or ConfigError naming the file)."""
        files = read_files(version_dir)
        tokenizer = files.tokenizer
        tokenizer.no_truncation()
        tokenizer.no_padding()
        session = _session(version_dir / MODEL_FILE, config, source)
        generation = _json_object(version_dir / "generation_config.json")
        return cls(
            session=session,
            tokenizer=tokenizer,
            spec=graph_spec(session, files.hf_config, version_dir / MODEL_FILE),
            eos_ids=eos_ids(generation, files.hf_config, tokenizer, version_dir),
            context_limit=context_limit(files.hf_config, generation, version_dir),
            provider=str(session.get_providers()[0]),
            name=config.name or version_dir.parent.name,
        )


def _session(path: Path, config: mc.ModelConfig, source: str) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"{path}: model file not found")
    options = session_options(config, source)
    plan = provider_plan(config, ort_available_providers(), source)
    try:
        return ort.InferenceSession(
            str(path),
            sess_options=options,
            providers=[name for name, _ in plan.providers],
            provider_options=[opts for _, opts in plan.providers],
        )
    except Exception as exc:  # ORT raises its own types for every load failure
        raise ModelLoadError(f"{path}: onnxruntime could not load it: {exc}") from None


def graph_spec(session: Any, hf_config: dict[str, Any], path: Path) -> GraphSpec:
    """The KV layout and optional inputs of a text-generation-with-past graph."""
    inputs = {arg.name: arg for arg in session.get_inputs()}
    outputs = {arg.name for arg in session.get_outputs()}
    if "input_ids" not in inputs or "logits" not in outputs:
        raise ModelLoadError(f"{path}: a generation model takes input_ids and gives logits")
    matches = [_PAST.fullmatch(name) for name in inputs]
    keys = sorted(int(m.group(1)) for m in matches if m and m.group(2) == "key")
    if not keys or keys != list(range(len(keys))):
        raise ModelLoadError(
            f"{path}: no past_key_values.N.key/value inputs: export it with the task "
            "text-generation-with-past"
        )
    first = inputs["past_key_values.0.key"]
    heads = hf_config.get("num_key_value_heads") or hf_config.get("num_attention_heads")
    heads = heads or hf_config.get("n_head")
    kv_heads = _dim(first.shape, 1, heads, path)
    hidden = hf_config.get("hidden_size") or hf_config.get("n_embd")
    width = hf_config.get("head_dim") or (
        hidden // (hf_config.get("num_attention_heads") or hf_config.get("n_head") or 1)
        if hidden
        else None
    )
    dtype = _DTYPES.get(first.type)
    if dtype is None:
        raise ModelLoadError(f"{path}: past_key_values of type {first.type} are not supported")
    spec = GraphSpec(
        layers=len(keys),
        kv_heads=kv_heads,
        head_dim=_dim(first.shape, 3, width, path),
        kv_dtype=dtype,
        has_attention_mask="attention_mask" in inputs,
        has_position_ids="position_ids" in inputs,
    )
    missing = [name for name in spec.past_names() if name not in inputs]
    missing += [name for name in spec.present_names() if name not in outputs]
    if missing:
        raise ModelLoadError(f"{path}: the KV cache inputs/outputs {missing[:4]} are missing")
    return spec


def _dim(shape: list[Any], axis: int, fallback: Any, path: Path) -> int:
    value = shape[axis] if len(shape) == 4 else None
    if isinstance(value, int) and value > 0:
        return value
    if isinstance(fallback, int) and fallback > 0:
        return fallback
    raise ModelLoadError(f"{path}: cannot tell the KV cache's shape (axis {axis} of {shape})")


def eos_ids(
    generation: dict[str, Any], hf_config: dict[str, Any], tokenizer: Tokenizer, folder: Path
) -> frozenset[int]:
    """The eos ids: generation_config.json, else config.json, else the tokenizer's eos token."""
    for source in (generation, hf_config):
        value = source.get("eos_token_id")
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise ModelLoadError(f"{folder}: eos_token_id must be an integer or a list of them")
        return frozenset(values)
    for token in ("<|endoftext|>", "</s>", "<eos>", "<|eot_id|>"):
        found = tokenizer.token_to_id(token)
        if found is not None:
            return frozenset({found})
    return frozenset()


def context_limit(hf_config: dict[str, Any], generation: dict[str, Any], folder: Path) -> int:
    """Tokens a sequence may hold: the model's position limit (config.json), capped by
    generation_config.json's max_length when that is smaller."""
    for key in _CONTEXT_KEYS:
        value = hf_config.get(key)
        if isinstance(value, int) and value > 0:
            limit = value
            break
    else:
        raise ModelLoadError(
            f"{folder / 'config.json'}: no context limit ({' or '.join(_CONTEXT_KEYS)})"
        )
    capped = generation.get("max_length")
    # transformers writes max_length 20 as a default everywhere: only a deliberate cap counts.
    if isinstance(capped, int) and 20 < capped < limit:
        limit = capped
    return limit


def _json_object(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ModelLoadError(f"{path}: expected a JSON object")
    return value
