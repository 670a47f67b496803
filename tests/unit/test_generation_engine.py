"""The generation engine against Hugging Face ``generate``: tiny random GPT-2 and Llama (GQA)
models built and exported here (tests/factories/causal_lm.py), served in process, no daemon.

Greedy tokens must equal ``generate(do_sample=False)`` alone and when 16 streams with prompts of
different lengths arrive staggered while others are generating; seeded sampling must not depend
on the batch. Nothing sleeps: staggering is gated on received deltas, and the tests of waiting,
cancellation and deadlines hold the scheduler with a gate in front of the real session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import warnings
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from ortserve.errors import DeadlineExpired, InvalidInput, ModelNotReady, Overloaded
from ortserve.generation.engine import GenerationEngine
from ortserve.generation.model import GenerationModel
from ortserve.generation.types import Delta, EngineLimits, SamplingParams, StepFailed
from ortserve_client.proto import model_config_pb2 as mc
from tests.factories.causal_lm import ARCHS, CONTEXT, SENTENCES, cached_causal_lm

BOUND_S = 30.0  # a bound on waits that should end at once: only a bug gets near it
GREEDY = SamplingParams(temperature=0, max_tokens=24)
WORDS = " ".join(SENTENCES).split()
PROMPTS = [" ".join(WORDS[i : i + 1 + (5 * i) % 23]) for i in range(16)]  # 1 to 23 words


@pytest.fixture(scope="session")
def causal_lms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    base = tmp_path_factory.getbasetemp()
    return {arch: cached_causal_lm(base, arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def models(causal_lms: dict[str, tuple[Path, Path]]) -> dict[str, GenerationModel]:
    config = mc.ModelConfig(name="lm")
    return {a: GenerationModel.load(v, config, "config.pbtxt") for a, (_, v) in causal_lms.items()}


@pytest.fixture(scope="module")
def oracle(causal_lms: dict[str, tuple[Path, Path]]) -> Callable[..., list[int]]:
    """HF ``generate(do_sample=False)`` on the same weights: (arch, prompt ids, n, **options of
    generate) -> the new ids."""
    import torch
    from transformers import AutoModelForCausalLM

    loaded: dict[str, Any] = {}
    known: dict[tuple[Any, ...], list[int]] = {}

    def generate(arch: str, ids: list[int], new: int, **options: Any) -> list[int]:
        key = (arch, tuple(ids), new, *sorted(options.items()))
        if key not in known:
            known[key] = _generate(arch, ids, new, **options)
        return known[key]

    def _generate(arch: str, ids: list[int], new: int, **options: Any) -> list[int]:
        if arch not in loaded:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                loaded[arch] = AutoModelForCausalLM.from_pretrained(causal_lms[arch][0]).eval()
        prompt = torch.tensor([ids])
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = loaded[arch].generate(
                prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                max_new_tokens=new, pad_token_id=0, **options,
            )  # fmt: skip
        return [int(t) for t in out[0, len(ids) :]]

    return generate


class Observer:
    """Records what the engine reports; ``changed`` is set at each report (after every step)."""

    def __init__(self) -> None:
        self.loads: list[tuple[int, int, int]] = []
        self.ends: list[tuple[int, int, str]] = []
        self.firsts = 0
        self.gaps = 0
        self.changed = asyncio.Event()

    def first_token(self, seconds: float) -> None:
        self.firsts += 1

    def token_gap(self, seconds: float) -> None:
        self.gaps += 1

    def finished(self, input_tokens: int, output_tokens: int, reason: str) -> None:
        self.ends.append((input_tokens, output_tokens, reason))
        self.changed.set()

    def load(self, running: int, waiting: int, kv_tokens: int) -> None:
        self.loads.append((running, waiting, kv_tokens))
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(BOUND_S):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


class GatedSession:
    """The real session behind a gate: each run waits for the test to open it; ``fail_decode``
    makes the next decode call raise as onnxruntime would."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._gate = threading.Event()
        self.entered = threading.Event()
        self.fail_decode = False

    def open(self) -> None:
        self._gate.set()

    def run(self, names: list[str], feeds: dict[str, Any]) -> Any:
        self.entered.set()
        if not self._gate.wait(BOUND_S):
            raise TimeoutError("the test never opened the gate")
        if self.fail_decode and feeds["input_ids"].shape[1] == 1:
            self.fail_decode = False
            raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : injected")
        return self._session.run(names, feeds)


@asynccontextmanager
async def serving(
    model: GenerationModel, limits: EngineLimits | None = None, observer: Observer | None = None
) -> AsyncIterator[GenerationEngine]:
    engine = GenerationEngine(model, limits or EngineLimits(), observer)
    engine.start()
    try:
        yield engine
    finally:
        session = model.session
        if isinstance(session, GatedSession):
            session.open()
        await engine.aclose()


async def collect(
    engine: GenerationEngine, prompt: str, params: SamplingParams, **kwargs: Any
) -> list[Delta]:
    return [delta async for delta in engine.generate(prompt, params, **kwargs)]


def tokens(deltas: list[Delta]) -> list[int]:
    return [t for d in deltas for t in d.token_ids]


def text(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def gated(model: GenerationModel) -> tuple[GenerationModel, GatedSession]:
    gate = GatedSession(model.session)
    return dataclasses.replace(model, session=gate), gate


@pytest.mark.parametrize("arch", ARCHS)
async def test_greedy_matches_hf_generate_alone(
    arch: str, models: dict[str, GenerationModel], oracle: Any
) -> None:
    model = models[arch]
    async with serving(model) as engine:
        for prompt in PROMPTS[:4]:
            deltas = await collect(engine, prompt, GREEDY)
            ids = model.tokenizer.encode(prompt).ids
            assert tokens(deltas) == oracle(arch, ids, GREEDY.max_tokens), prompt
            assert deltas[-1].finish_reason in ("length", "eos")
            assert all(d.finish_reason is None for d in deltas[:-1])
            assert deltas[-1].input_tokens == len(ids) == engine.encode_length(prompt)
            assert deltas[-1].output_tokens == len(tokens(deltas))


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize(
    "limits",
    [EngineLimits(), EngineLimits(max_num_seqs=6, prefill_chunk=7)],
    ids=["16-rows", "6-rows-chunked"],
)
async def test_greedy_matches_hf_with_16_staggered_streams(
    arch: str, limits: EngineLimits, models: dict[str, GenerationModel], oracle: Any
) -> None:
    """16 prompts of 1-23 words, each arriving once the previous one has streamed 2 tokens,
    with room for all, or with 6 rows at most (so some wait and join as others leave) and
    prompts prefilled in chunks of 7 tokens between decode steps."""
    model, observer = models[arch], Observer()
    budgets = [6 + (7 * i) % 19 for i in range(16)]
    async with serving(model, limits, observer) as engine:
        ready = [asyncio.Event() for _ in PROMPTS]

        async def stream(i: int) -> list[Delta]:
            deltas = []
            params = dataclasses.replace(GREEDY, max_tokens=budgets[i])
            async for delta in engine.generate(PROMPTS[i], params):
                deltas.append(delta)
                if len(deltas) == 2:
                    ready[i].set()
            ready[i].set()
            return deltas

        tasks = []
        for i in range(len(PROMPTS)):
            tasks.append(asyncio.create_task(stream(i)))
            async with asyncio.timeout(BOUND_S):
                await ready[i].wait()
        results = await asyncio.gather(*tasks)
    for prompt, budget, deltas in zip(PROMPTS, budgets, results, strict=True):
        expected = oracle(arch, model.tokenizer.encode(prompt).ids, budget)
        assert tokens(deltas) == expected, prompt
    assert max(running for running, _, _ in observer.loads) >= 3
    assert len(observer.ends) == 16
    assert observer.firsts == 16


@pytest.mark.parametrize("arch", ARCHS)
async def test_repetition_penalty_matches_hf(
    arch: str, models: dict[str, GenerationModel], oracle: Any
) -> None:
    model = models[arch]
    params = SamplingParams(temperature=0, max_tokens=24, repetition_penalty=1.8)
    changed = 0
    async with serving(model) as engine:
        for prompt in PROMPTS[:4]:
            ids = model.tokenizer.encode(prompt).ids
            expected = oracle(arch, ids, 24, repetition_penalty=1.8)
            assert tokens(await collect(engine, prompt, params)) == expected
            changed += expected != oracle(arch, ids, 24)
    assert changed  # the penalty made a difference


async def test_the_kv_budget_holds_a_request_back_until_a_row_leaves(
    models: dict[str, GenerationModel],
) -> None:
    observer = Observer()
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    async with serving(models["gpt2"], EngineLimits(max_kv_tokens=60), observer) as engine:
        both = await asyncio.gather(*(collect(engine, p, params) for p in PROMPTS[0:6:5]))
        await observer.until(lambda: engine.running == 0)
    assert [d[-1].finish_reason for d in both] == ["length", "length"]
    # 30 + the prompt each (2 and 8 tokens): one fits in 60 at a time
    assert max(running for running, _, _ in observer.loads) == 1
    assert any(waiting == 1 for _, waiting, _ in observer.loads)
    assert max(kv for _, _, kv in observer.loads) > 30
    assert observer.loads[-1] == (0, 0, 0)
    assert engine.kv_tokens == 0


async def test_seeded_sampling_is_reproducible_whatever_the_batch(
    models: dict[str, GenerationModel],
) -> None:
    params = SamplingParams(
        max_tokens=20, temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.2,
        seed=1234, ignore_eos=True,
    )  # fmt: skip
    async with serving(models["gpt2"]) as engine:
        alone = tokens(await collect(engine, PROMPTS[3], params))
        assert tokens(await collect(engine, PROMPTS[3], params)) == alone
        others = [
            asyncio.create_task(collect(engine, PROMPTS[i], SamplingParams(max_tokens=30, seed=i)))
            for i in range(4)
        ] + [asyncio.create_task(collect(engine, PROMPTS[5], GREEDY))]
        batched = await collect(engine, PROMPTS[3], params)
        await asyncio.gather(*others)
        other_seed = await collect(engine, PROMPTS[3], dataclasses.replace(params, seed=99))
        unseeded = await collect(engine, PROMPTS[3], dataclasses.replace(params, seed=None))
    assert tokens(batched) == alone
    assert tokens(other_seed) != alone
    assert len(tokens(unseeded)) == 20


async def test_stop_string_is_held_back_then_cut(models: dict[str, GenerationModel]) -> None:
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    async with serving(models["gpt2"]) as engine:
        full = text(await collect(engine, PROMPTS[1], params))
        k, stop = next(
            (k, full[k : k + 2])
            for k in range(1, len(full) - 2)
            if "\ufffd" not in full[k : k + 2] and full.find(full[k : k + 2]) == k
        )
        deltas = await collect(engine, PROMPTS[1], dataclasses.replace(params, stop=(stop,)))
    assert deltas[-1].finish_reason == "stop"
    assert text(deltas) == full[:k]
    assert len(tokens(deltas)) < 40


async def test_eos_ends_a_request_unless_ignored(models: dict[str, GenerationModel]) -> None:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    async with serving(models["gpt2"]) as engine:
        reference = tokens(await collect(engine, PROMPTS[2], params))
    j = next(j for j in range(2, 16) if reference[j] not in reference[:j])
    model = dataclasses.replace(models["gpt2"], eos_ids=frozenset({reference[j]}))
    async with serving(model) as engine:
        ended = await collect(engine, PROMPTS[2], dataclasses.replace(params, ignore_eos=False))
        ignored = await collect(engine, PROMPTS[2], params)
    assert tokens(ended) == reference[: j + 1]  # the eos token is counted, not shown
    assert (ended[-1].finish_reason, ended[-1].output_tokens) == ("eos", j + 1)
    assert tokens(ignored) == reference
    assert (ignored[-1].finish_reason, ignored[-1].output_tokens) == ("length", 16)


async def test_context_limit(models: dict[str, GenerationModel]) -> None:
    long_text = " ".join(SENTENCES * 3)
    async with serving(models["llama"]) as engine:
        with pytest.raises(InvalidInput, match="context is 128 tokens"):
            await collect(engine, long_text, GREEDY)
        words = long_text.split()
        prompt = next(
            p for n in range(len(words)) if engine.encode_length(p := " ".join(words[:n])) >= 90
        )
        used = engine.encode_length(prompt)
        params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
        deltas = await collect(engine, prompt, params)
    assert len(tokens(deltas)) == CONTEXT - used
    assert deltas[-1].finish_reason == "length"


async def test_bad_requests_are_refused_before_they_queue(
    models: dict[str, GenerationModel],
) -> None:
    async with serving(models["gpt2"], EngineLimits(max_kv_tokens=20)) as engine:
        with pytest.raises(InvalidInput, match="prompt is empty"):
            await collect(engine, "", GREEDY)
        with pytest.raises(InvalidInput, match="top_p"):
            await collect(engine, "Hello", SamplingParams(top_p=2.0))
        with pytest.raises(InvalidInput, match="max_kv_tokens"):
            await collect(engine, PROMPTS[3], SamplingParams(max_tokens=30))
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExpired):
            await collect(engine, "Hello", SamplingParams(max_tokens=4), deadline=loop.time() - 1)
        assert engine.waiting == engine.running == 0


async def test_cancelling_a_stream_frees_its_row(models: dict[str, GenerationModel]) -> None:
    model, gate = gated(models["gpt2"])
    observer = Observer()
    params = SamplingParams(temperature=0, max_tokens=100, ignore_eos=True)
    async with serving(model, EngineLimits(max_num_seqs=1), observer) as engine:
        first = engine.generate("Hello", params)
        gate.open()
        await anext(first)  # prefilled and decoding; the only row
        waiting = asyncio.create_task(collect(engine, "The quick", GREEDY))
        await observer.until(lambda: any(w == 1 for _, w, _ in observer.loads))
        assert engine.running == 1
        await first.aclose()  # the caller goes away
        second = await asyncio.wait_for(waiting, BOUND_S)
        await observer.until(lambda: len(observer.ends) == 2 and engine.running == 0)
    assert second[-1].finish_reason in ("length", "eos")
    assert observer.ends[0][2] == "cancelled"
    assert observer.ends[0][1] < 100


async def test_a_full_queue_is_refused_at_once(models: dict[str, GenerationModel]) -> None:
    model, gate = gated(models["gpt2"])
    async with serving(model, EngineLimits(max_num_seqs=1, max_queue_size=1)) as engine:
        running = asyncio.create_task(collect(engine, "Hello", GREEDY))
        assert await asyncio.to_thread(gate.entered.wait, BOUND_S)  # admitted, held in prefill
        queued = asyncio.create_task(collect(engine, "The quick", GREEDY))
        await asyncio.sleep(0)  # let it queue (no clock: one turn of the loop)
        assert engine.waiting == 1
        with pytest.raises(Overloaded, match="max_queue_size 1"):
            await collect(engine, "Paris", GREEDY)
        gate.open()
        assert (await running)[-1].finish_reason is not None
        assert (await queued)[-1].finish_reason is not None


async def test_a_deadline_expires_while_the_session_is_busy(
    models: dict[str, GenerationModel],
) -> None:
    model, gate = gated(models["gpt2"])
    observer = Observer()
    async with serving(model, observer=observer) as engine:
        loop = asyncio.get_running_loop()
        with pytest.raises(DeadlineExpired, match="deadline passed"):
            await collect(engine, "Hello", GREEDY, deadline=loop.time() + 0.05)
        gate.open()  # the step it was held in ends; its row is dropped at the next
        await observer.until(lambda: bool(observer.ends) and engine.running == 0)
    assert observer.ends[0][2] in ("cancelled", "length", "eos")


async def test_a_failed_step_ends_its_rows_and_the_engine_goes_on(
    models: dict[str, GenerationModel],
) -> None:
    model, gate = gated(models["llama"])
    gate.fail_decode = True
    gate.open()
    async with serving(model) as engine:
        with pytest.raises(StepFailed, match=r"generation step failed.*injected"):
            await collect(engine, "Hello", GREEDY)
        after = await collect(engine, "Hello", GREEDY)
        assert after[-1].finish_reason in ("length", "eos")
        assert engine.running == 0


async def test_closing_the_engine_ends_open_requests(models: dict[str, GenerationModel]) -> None:
    model, gate = gated(models["gpt2"])
    engine = GenerationEngine(model, EngineLimits())
    engine.start()
    task = asyncio.create_task(collect(engine, "Hello", SamplingParams(max_tokens=100)))
    assert await asyncio.to_thread(gate.entered.wait, BOUND_S)
    closing = asyncio.create_task(engine.aclose())
    gate.open()
    await closing
    with pytest.raises(ModelNotReady, match="unloading"):
        await task
    with pytest.raises(ModelNotReady):
        await collect(engine, "Hello", GREEDY)
