"""A model config's ``parameters`` (string values in config.pbtxt), read with their types.

One reader for every module that takes settings from there (session options, batching, text),
so that every bad value fails the same way: a ConfigError naming the file and the key.

``parameters`` is an open namespace in Triton (a backend reads the keys it knows), so a key
ortserve does not read is kept and logged as a warning (``check_keys``), with two exceptions that
are refused: a key that looks like a misspelling of one ortserve reads ("did you mean"), and a key
of Triton's ONNX Runtime backend that ortserve does not implement.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from ortserve.errors import ConfigError, shown
from ortserve_client.proto import model_config_pb2 as mc

_INTEGER = re.compile(r"[+-]?[0-9]+")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")

#: Read by runtime/options.py (ONNX Runtime session options and providers).
RUNTIME_KEYS = (
    "intra_op_thread_count",
    "inter_op_thread_count",
    "execution_mode",
    "enable_mem_arena",
    "enable_mem_pattern",
    "allow_provider_fallback",
)
#: Read by batching/policy.py.
BATCHING_KEYS = ("max_batch_tokens", "batch_grouping")
#: Read by text/settings.py (text models only; tests/unit/test_config.py keeps this in step).
TEXT_KEYS = (
    "task",
    "max_sequence_length",
    "truncation",
    "pooling",
    "normalize",
    "confidence_threshold",
    "fallback_label",
    "multi_label",
    "aggregation",
    "stride",
    "max_answer_length",
    "max_text_bytes",
)
#: Read by generation/types.py (EngineLimits: text-generation models only; same as its LIMIT_KEYS).
GENERATION_KEYS = ("max_num_seqs", "max_kv_tokens", "prefill_chunk", "max_queue_size")
KNOWN_KEYS = frozenset(RUNTIME_KEYS + BATCHING_KEYS + TEXT_KEYS + GENERATION_KEYS)

#: ``session.<key>`` parameters are ONNX Runtime session config entries, passed on as they are
#: (runtime/options.py), except that the flags below take true/false as well as 1/0: ONNX Runtime
#: itself compares them with "1", so that "true" would quietly mean off.
SESSION_PREFIX = "session."
SESSION_FLAGS = frozenset(
    {
        "session.intra_op.allow_spinning",
        "session.inter_op.allow_spinning",
        "session.set_denormal_as_zero",
        "session.disable_prepacking",
        "session.use_env_allocators",
        "session.disable_cpu_ep_fallback",
        "session.use_device_allocator_for_initializers",
        "session.disable_quant_qdq",
        "session.disable_double_qdq_remover",
        "session.enable_quant_qdq_cleanup",
        "session.disable_aot_function_inlining",
        "session.use_ort_model_bytes_directly",
        "session.use_ort_model_bytes_for_initializers",
        "session.qdqisint8allowed",
        "session.x64quantprecision",
        "session.strict_shape_type_inference",
        "session.allow_released_opsets_only",
    }
)
#: The largest integer any parameter takes (ONNX Runtime and the tokenizer read C ints): a larger
#: one is refused here, with the key named, rather than failing inside them.
INT32_MAX = 2**31 - 1
#: Thread pools are created whole: a mistyped count would start that many threads.
MAX_THREADS = 1024
#: Every integer parameter and the values it takes (inclusive): one table for the readers and for
#: the check of a whole config before anything loads (``check_integers``).
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "intra_op_thread_count": (0, MAX_THREADS),
    "inter_op_thread_count": (0, MAX_THREADS),
    "session.dynamic_block_base": (0, INT32_MAX),
    "max_batch_tokens": (0, INT32_MAX),
    "max_sequence_length": (1, INT32_MAX),
    "stride": (0, INT32_MAX),
    "max_answer_length": (1, INT32_MAX),
    "max_text_bytes": (1, INT32_MAX),
    "max_num_seqs": (1, INT32_MAX),
    "max_kv_tokens": (1, INT32_MAX),
    "prefill_chunk": (1, INT32_MAX),
    "max_queue_size": (0, INT32_MAX),
}
SESSION_INTEGERS = frozenset(key for key in INTEGER_RANGES if key.startswith(SESSION_PREFIX))

#: Other session config keys of the onnxruntime this ships with (for "did you mean" and the
#: warning about keys it would ignore).
SESSION_KEYS = (
    SESSION_FLAGS
    | SESSION_INTEGERS
    | frozenset(
        {
            "session.intra_op_thread_affinities",
            "session.intra_op.spin_duration_us",
            "session.inter_op.spin_duration_us",
            "session.load_model_format",
            "session.save_model_format",
            "session.optimized_model_external_initializers_file_name",
            "session.optimized_model_external_initializers_min_size_in_bytes",
            "session.node_partition_config_file",
            "session.qdq_matmulnbits_accuracy_level",
            "session.graph_optimizations_loop_level",
            "session.disable_model_compile",
            "session.enable_dq_matmulnbits_fusion",
            "session.disable_qdq_constant_folding",
            "session.debug_layout_transformation",
            "session.save_external_prepacked_constant_initializers",
            "session.collect_node_memory_stats_to_file",
            "session.layer_assignment_settings",
            "session.record_ep_graph_assignment_info",
        }
    )
)

#: Keys Triton's ONNX Runtime backend reads that ortserve does not implement.
UNSUPPORTED_KEYS = {
    "cudnn_conv_algo_search": "a CUDA provider option",
    "gpu_mem_limit": "a CUDA provider option",
    "arena_extend_strategy": "a CUDA provider option",
    "do_copy_in_default_stream": "a CUDA provider option",
    "memory.enable_memory_arena_shrinkage": "an ONNX Runtime run option",
}

# How alike a key must be to a known one to be taken for a misspelling of it (difflib ratio).
_MISSPELT = 0.8


class Parameters:
    def __init__(self, values: mc.ModelConfig | Mapping[str, str], source: str) -> None:
        if isinstance(values, mc.ModelConfig):
            values = {key: value.string_value for key, value in values.parameters.items()}
        self._values = dict(values)
        self._source = source

    def _raw(self, key: str) -> str | None:
        raw = self._values.get(key)
        return raw.strip() if raw and raw.strip() else None

    def _error(self, key: str, wanted: str, raw: str) -> ConfigError:
        return ConfigError(f"{self._source}: parameters '{key}' must be {wanted}, got {shown(raw)}")

    def where(self, key: str) -> str:
        """Names a parameter in a message: "<file>: parameters '<key>'"."""
        return f"{self._source}: parameters '{key}'"

    def given(self, key: str) -> bool:
        return self._raw(key) is not None

    def text(self, key: str, default: str = "") -> str:
        return self._raw(key) or default

    def integer(self, key: str, default: int, minimum: int | None = None) -> int:
        """An integer in the key's range (``INTEGER_RANGES``; ``minimum`` may raise its floor)."""
        raw = self._raw(key)
        if raw is None:
            return default
        low, high = INTEGER_RANGES.get(key, (-INT32_MAX, INT32_MAX))
        low = low if minimum is None else max(low, minimum)
        wanted = f"an integer from {low} to {high}"
        # Decimal ASCII digits only (int() also takes '٣' and '1_0'), and never more of them
        # than an int32 has: int() refuses a string past Python's digit limit with a ValueError.
        if not _INTEGER.fullmatch(raw) or len(raw.lstrip("+-0")) > len(str(INT32_MAX)):
            raise self._error(key, wanted, raw)
        value = int(raw)
        if not low <= value <= high:
            raise self._error(key, wanted, raw)
        return value

    def check_integers(self) -> None:
        """Refuse, with the key named, every integer parameter given out of its range."""
        for key in sorted(self._values):
            if key in INTEGER_RANGES:
                self.integer(key, 0)

    def choice(self, key: str, default: str, choices: Mapping[str, str]) -> str:
        """One of ``choices`` (value -> what it means, for the message)."""
        raw = self._raw(key)
        if raw is None:
            return default
        if raw not in choices:
            wanted = " or ".join(f"{value} ({meaning})" for value, meaning in choices.items())
            raise self._error(key, wanted, raw)
        return raw

    def number(self, key: str) -> float | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            return float(raw)
        except ValueError:
            raise self._error(key, "a number", raw) from None

    def flag(self, key: str, default: bool) -> bool:
        raw = self._raw(key)
        if raw is None:
            return default
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise self._error(key, "true or false", raw)

    def items(self) -> list[tuple[str, str]]:
        return list(self._values.items())

    def check_keys(self) -> list[str]:
        """Refuse the keys ortserve refuses (see the module's doc); return, sorted, those it
        does not read, for the caller to warn about."""
        ignored: list[str] = []
        for key in sorted(self._values):
            if key in KNOWN_KEYS or key in SESSION_KEYS:
                continue
            if key in UNSUPPORTED_KEYS:
                raise ConfigError(
                    f"{self.where(key)} ({UNSUPPORTED_KEYS[key]} that Triton's ONNX Runtime "
                    "backend reads) is not supported by ortserve; remove it"
                )
            guess = _misspelling_of(key)
            if guess is not None:
                raise ConfigError(
                    f"{self.where(key)} is not a parameter ortserve reads; did you mean '{guess}'?"
                )
            ignored.append(key)
        return ignored


def _misspelling_of(key: str) -> str | None:
    """The known key that ``key`` most likely misspells, if any."""
    folded = key.strip().lower()
    if folded.startswith(SESSION_PREFIX):
        # Compare what follows the shared prefix, which would make any two keys look alike.
        suffixes = {name.removeprefix(SESSION_PREFIX): name for name in SESSION_KEYS}
        close = difflib.get_close_matches(
            folded.removeprefix(SESSION_PREFIX), suffixes, n=1, cutoff=_MISSPELT
        )
        return suffixes[close[0]] if close else None
    candidates = sorted(KNOWN_KEYS | SESSION_KEYS)
    close = difflib.get_close_matches(folded, candidates, n=1, cutoff=_MISSPELT)
    return close[0] if close else None
