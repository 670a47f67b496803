"""The generation engine's parts, on small arrays and a real tokenizer: sampling, incremental
decoding, stop strings, the left-padded KV cache, limits and parameter checks. No model runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ortserve.errors import ConfigError, InvalidInput, ModelLoadError
from ortserve.generation import sampling
from ortserve.generation.detokenize import IncrementalDecoder, StopMatcher
from ortserve.generation.kvcache import KVCache
from ortserve.generation.model import GraphSpec, context_limit, eos_ids
from ortserve.generation.types import EngineLimits, SamplingParams
from ortserve_client.proto import model_config_pb2 as mc
from tests.factories.causal_lm import train_tokenizer

NEG = -np.inf


def row(**params: object) -> sampling.RowSampling:
    return sampling.RowSampling.create(SamplingParams(**params), 6, [])  # type: ignore[arg-type]


def test_top_k_keeps_the_k_highest_per_row() -> None:
    scores = np.array([[1.0, 5.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    kept = sampling.top_k(scores, np.array([2, 0]))
    assert kept[0].tolist() == [NEG, 5.0, NEG, 4.0]
    assert kept[1].tolist() == [4.0, 3.0, 2.0, 1.0]  # k = 0: off


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    probs = np.array([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]])
    kept = sampling.top_p(np.log(probs), np.array([0.75, 0.81]))
    assert np.isfinite(kept[0]).tolist() == [True, True, False, False]  # 0.5 + 0.3 >= 0.75
    assert np.isfinite(kept[1]).tolist() == [True, True, True, False]  # 0.8 < 0.81
    tiny = sampling.top_p(np.log(probs[:1]), np.array([0.01]))
    assert np.isfinite(tiny[0]).tolist() == [True, False, False, False]  # the top one always


def test_temperature_sharpens_and_flattens() -> None:
    scores = np.array([[2.0, 1.0, 0.0]], dtype=np.float32)
    cold = sampling.probabilities(scores, [row(temperature=0.5)])
    hot = sampling.probabilities(scores, [row(temperature=2.0)])
    plain = sampling.softmax(scores.astype(np.float64))
    assert cold[0, 0] > plain[0, 0] > hot[0, 0]
    np.testing.assert_allclose(cold, sampling.softmax(scores.astype(np.float64) * 2))


def test_repetition_penalty_has_hf_semantics() -> None:
    scores = np.array([[2.0, -2.0, 2.0, -2.0]], dtype=np.float32)
    seen = np.array([[True, True, False, False]])
    out = sampling.repetition_penalty(scores, seen, np.array([2.0], dtype=np.float32))
    assert out.tolist() == [[1.0, -4.0, 2.0, -2.0]]  # positive / p, negative * p


def test_repetition_penalty_counts_prompt_and_output() -> None:
    penalised = sampling.RowSampling.create(SamplingParams(repetition_penalty=100.0), 3, [0])
    plain = sampling.RowSampling.create(SamplingParams(), 3, [0])
    logits = np.array([[3.0, 2.0, 1.0]], dtype=np.float32)
    penalised_greedy = sampling.RowSampling.create(
        SamplingParams(temperature=0, repetition_penalty=100.0), 3, [0]
    )
    assert sampling.choose(logits, [penalised_greedy]).tolist() == [1]  # 0 was in the prompt
    penalised_greedy.saw(1)
    assert sampling.choose(logits, [penalised_greedy]).tolist() == [2]  # and 1 was generated
    assert penalised.seen is not None
    assert plain.seen is None  # no penalty: nothing kept


def test_inverse_cdf_picks_the_interval_holding_the_draw() -> None:
    probs = np.array([[0.2, 0.5, 0.0, 0.3]] * 5)
    draws = np.array([0.1, 0.25, 0.69, 0.71, 0.999999999])
    assert sampling.inverse_cdf(probs, draws).tolist() == [0, 1, 1, 3, 3]


def test_greedy_rows_take_the_argmax_and_leave_the_rng_alone() -> None:
    logits = np.array([[0.0, 3.0, 1.0], [5.0, 0.0, 1.0]], dtype=np.float32)
    greedy = sampling.RowSampling.create(SamplingParams(temperature=0, seed=1), 3, [])
    state = greedy.rng.bit_generator.state
    assert sampling.choose(logits, [greedy, greedy]).tolist() == [1, 0]
    assert greedy.rng.bit_generator.state == state


def test_a_seeded_row_samples_the_same_whatever_its_neighbours() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((8, 50)).astype(np.float32)
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.95, seed=42)

    def tokens(batch_with: list[SamplingParams]) -> list[int]:
        mine = sampling.RowSampling.create(params, 50, [])
        others = [sampling.RowSampling.create(p, 50, []) for p in batch_with]
        picked = []
        for _ in range(20):
            rows = [*others, mine]
            block = np.concatenate([logits[: len(others)], logits[-1:]])
            picked.append(int(sampling.choose(block, rows)[-1]))
        return picked

    alone = tokens([])
    assert alone == tokens([SamplingParams(temperature=1.0, seed=s) for s in range(5)])
    assert alone == tokens([SamplingParams(temperature=0), SamplingParams(top_p=0.5)])
    assert len(set(alone)) > 1


def test_sampling_follows_the_distribution() -> None:
    logits = np.log(np.array([[0.7, 0.2, 0.1, 1e-12]], dtype=np.float32))
    state = sampling.RowSampling.create(SamplingParams(seed=3, top_k=3), 4, [])
    counts = np.bincount(
        [int(sampling.choose(logits, [state])[0]) for _ in range(2000)], minlength=4
    )
    assert counts[3] == 0
    np.testing.assert_allclose(counts[:3] / 2000, [0.7, 0.2, 0.1], atol=0.04)


@pytest.mark.parametrize(
    "text", ["Café naïve façade", "日本語のテキスト", "emoji 🙂🚀 end", "plain ascii text"]
)
def test_incremental_decoding_never_splits_a_character(text: str) -> None:
    tokenizer = train_tokenizer()
    ids = tokenizer.encode(text).ids
    if not text.isascii():
        split = any("\ufffd" in tokenizer.decode([i]) for i in ids)
        assert split, "the tokenizer should split a multi-byte character over tokens"
    decoder = IncrementalDecoder(tokenizer, tokenizer.encode("Hello").ids)
    pieces = [decoder.add(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)
    assert "" in pieces or text.isascii()  # something was held back mid-character


def test_stop_strings_are_held_back_then_cut() -> None:
    matcher = StopMatcher(["STOP", "xyz"])
    assert matcher.feed("hello ST") == ("hello ", False)
    assert matcher.held == "ST"
    assert matcher.feed("O") == ("", False)
    assert matcher.feed("P and more") == ("", True)


def test_a_false_start_of_a_stop_string_is_released() -> None:
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("a ST") == ("a ", False)
    assert matcher.feed("ART") == ("START", False)
    assert matcher.flush() == ""


def test_the_earliest_stop_string_wins_and_flush_returns_what_is_held() -> None:
    matcher = StopMatcher(["bc", "ab"])
    assert matcher.feed("xxabc") == ("xx", True)
    held = StopMatcher(["end"])
    assert held.feed("the en") == ("the ", False)
    assert held.flush() == "en"


def test_kv_cache_pads_on_the_left_and_drops_unused_columns() -> None:
    spec = GraphSpec(2, 2, 3, np.float32, True, True)
    cache = KVCache(spec)

    def present(length: int, value: float) -> list[np.ndarray]:
        return [np.full((1, 2, length, 3), value, dtype=np.float32) for _ in range(4)]

    cache.add_row(present(2, 1.0))
    cache.add_row(present(4, 2.0))
    assert cache.mask.tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert cache.positions().tolist() == [[2], [4]]
    assert cache.past[0][0, 0, :, 0].tolist() == [0, 0, 1, 1]
    cache.advance([np.concatenate([p, p[:, :, -1:]], axis=2) for p in cache.past])
    assert cache.decode_mask().shape == (2, 6)
    assert cache.tokens == 10
    cache.keep([0])  # the long row leaves: its extra columns go
    assert cache.mask.tolist() == [[1, 1, 1]]
    assert cache.past[0].shape == (1, 2, 3, 3)
    cache.keep([])
    assert cache.rows == 0
    assert cache.tokens == 0


def test_engine_limits_from_config() -> None:
    config = mc.ModelConfig()
    assert EngineLimits.from_config(config, "cfg") == EngineLimits()
    config.parameters["max_num_seqs"].string_value = "4"
    config.parameters["prefill_chunk"].string_value = "32"
    limits = EngineLimits.from_config(config, "cfg")
    assert (limits.max_num_seqs, limits.prefill_chunk, limits.max_kv_tokens) == (4, 32, 16384)
    config.parameters["max_queue_size"].string_value = "0"  # no limit, as in Triton
    assert EngineLimits.from_config(config, "cfg").max_queue_size == 0
    config.parameters["max_kv_tokens"].string_value = "0"
    with pytest.raises(ConfigError, match="'max_kv_tokens'"):
        EngineLimits.from_config(config, "cfg")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (SamplingParams(max_tokens=0), "max_tokens"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_k=-2), "top_k"),
        (SamplingParams(top_p=0), "top_p"),
        (SamplingParams(repetition_penalty=0), "repetition_penalty"),
        (SamplingParams(seed=-1), "seed"),
        (SamplingParams(stop=("",)), "stop"),
    ],
)
def test_bad_sampling_parameters_are_named(params: SamplingParams, field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        params.check()


def test_eos_ids_come_from_generation_config_then_config_then_the_tokenizer() -> None:
    tokenizer = train_tokenizer()
    here = Path("model")
    assert eos_ids({"eos_token_id": [5, 7]}, {"eos_token_id": 1}, tokenizer, here) == {5, 7}
    assert eos_ids({}, {"eos_token_id": 1}, tokenizer, here) == {1}
    assert eos_ids({}, {}, tokenizer, here) == {tokenizer.token_to_id("<|endoftext|>")}
    with pytest.raises(ModelLoadError, match="eos_token_id"):
        eos_ids({"eos_token_id": "x"}, {}, tokenizer, here)


def test_context_limit_is_the_position_limit_capped_by_max_length() -> None:
    here = Path("model")
    assert context_limit({"n_positions": 1024}, {}, here) == 1024
    assert context_limit({"max_position_embeddings": 2048}, {"max_length": 20}, here) == 2048
    assert context_limit({"max_position_embeddings": 2048}, {"max_length": 512}, here) == 512
    with pytest.raises(ModelLoadError, match="no context limit"):
        context_limit({}, {}, here)
