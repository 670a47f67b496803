"""The values the generation engine takes and gives: sampling parameters, streamed deltas, the
scheduler's limits (from config.pbtxt) and the observer that metrics hook into.

Kept free of the engine itself so that the serving side (the request adapter, parameter parsing)
imports these without importing the scheduler.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from ortserve.errors import InvalidInput, OrtserveError
from ortserve.repository.parameters import Parameters
from ortserve_client.proto import model_config_pb2 as mc

#: Finish reasons, as vLLM (and so Triton's vLLM backend) names them.
LENGTH = "length"
STOP = "stop"
EOS = "eos"
CANCELLED = "cancelled"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """How one request samples; the defaults are vLLM's."""

    max_tokens: int = 16  # new tokens at most
    temperature: float = 1.0  # 0 = greedy (argmax)
    top_k: int = 0  # 0 or -1 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0  # HF: logits of seen tokens /p if > 0 else *p
    seed: int | None = None  # per-request RNG: same seed, same tokens, whatever the batch
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def check(self) -> None:
        """InvalidInput naming the first field out of range."""
        if self.max_tokens < 1:
            raise InvalidInput(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise InvalidInput(f"temperature must be 0 or more, got {self.temperature}")
        if self.top_k < -1:
            raise InvalidInput(f"top_k must be -1, 0 (off) or a positive count, got {self.top_k}")
        if not math.isfinite(self.top_p) or not 0 < self.top_p <= 1:
            raise InvalidInput(f"top_p must be in (0, 1], got {self.top_p}")
        if not math.isfinite(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise InvalidInput(
                f"repetition_penalty must be more than 0, got {self.repetition_penalty}"
            )
        if self.seed is not None and self.seed < 0:
            raise InvalidInput(f"seed must be 0 or more, got {self.seed}")
        if any(not stop for stop in self.stop):
            raise InvalidInput("stop strings must not be empty")


@dataclass(frozen=True, slots=True)
class Delta:
    """What one request produced since its previous Delta."""

    text: str  # never splits a character; text that may start a stop string is held back
    token_ids: tuple[int, ...]  # the new tokens
    finish_reason: str | None  # None while running; "length" | "stop" | "eos" | "cancelled"
    input_tokens: int  # prompt tokens
    output_tokens: int  # generated so far


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """The scheduler's limits, from a generation model's config.pbtxt ``parameters``."""

    max_num_seqs: int = 16  # rows decoding at once
    max_kv_tokens: int = 16384  # KV positions reserved over all rows (prompt + max_tokens each)
    prefill_chunk: int = 256  # prompt tokens prefilled per scheduler iteration
    max_queue_size: int = 256  # waiting requests before Overloaded (0: no limit, as Triton)

    @classmethod
    def from_config(cls, config: mc.ModelConfig, source: str) -> EngineLimits:
        """The limits a config sets (ConfigError naming the key for a bad value)."""
        params = Parameters(config, source)
        default = cls()
        return cls(
            max_num_seqs=params.integer("max_num_seqs", default.max_num_seqs, minimum=1),
            max_kv_tokens=params.integer("max_kv_tokens", default.max_kv_tokens, minimum=1),
            prefill_chunk=params.integer("prefill_chunk", default.prefill_chunk, minimum=1),
            max_queue_size=params.integer("max_queue_size", default.max_queue_size, minimum=0),
        )


#: The config parameters EngineLimits reads (for the repository's list of known keys).
LIMIT_KEYS = ("max_num_seqs", "max_kv_tokens", "prefill_chunk", "max_queue_size")


class GenerationObserver(Protocol):
    """Where the engine reports timings and load (the serving side feeds metrics from it).

    Called on the event loop's thread (the engine posts each step's reports there), so an
    implementation needs no locking; it must be quick.
    """

    def first_token(self, seconds: float) -> None:
        """Time from a request's arrival to its first token."""

    def token_gap(self, seconds: float) -> None:
        """Time between two consecutive tokens of one request."""

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None:
        """A request ended (any finish reason)."""

    def load(self, running: int, waiting: int, kv_tokens: int) -> None:
        """After each scheduler step: rows decoding, requests waiting, KV positions in use."""


class StepFailed(OrtserveError):
    """A scheduler step failed (onnxruntime raised): the requests of that step end with it, and
    the engine goes on with the others. Not the caller's fault: INTERNAL, with this message."""
