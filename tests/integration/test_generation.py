"""Text generation end to end: a real daemon serving tiny random GPT-2 and Llama exports, driven
over gRPC (raw, tritonclient and ortserve_client), against Hugging Face ``generate`` (greedy) on
the same weights as the oracle."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import urllib.request
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tg
from tokenizers import Tokenizer

from ortserve_client import AsyncClient, Client, InvalidArgumentError
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import grpc_service_pb2_grpc as pb_grpc
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import encode_raw
from tests.conftest import Daemon, DaemonFactory, start_daemon
from tests.factories.causal_lm import SENTENCES, cached_causal_lm, write_generation_model

pytestmark = pytest.mark.slow

FINAL = "triton_final_response"
WORDS = " ".join(SENTENCES[:4]).split()


@dataclass
class Expected:
    text: str  # the generated text (without the prompt)
    ids: list[int]
    reason: str


class Oracle:
    """Hugging Face greedy generation on the weights the daemon serves."""

    def __init__(self, hf_folder: Path) -> None:
        from transformers import AutoModelForCausalLM

        self.tokenizer = Tokenizer.from_file(str(hf_folder / "tokenizer.json"))
        self.model = AutoModelForCausalLM.from_pretrained(hf_folder)
        self.model.eval()

    def __call__(self, prompt: str, max_tokens: int, eos: int = 0) -> Expected:
        import torch

        ids = self.tokenizer.encode(prompt).ids
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            out = self.model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_tokens,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        new = out[0, len(ids) :].tolist()
        if eos in new:
            new = new[: new.index(eos)]
            return Expected(self.tokenizer.decode(new), new, "eos")
        return Expected(self.tokenizer.decode(new), new, "length")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="module")
def oracles(base: Path) -> dict[str, Oracle]:
    return {arch: Oracle(cached_causal_lm(base, arch)[0]) for arch in ("gpt2", "llama")}


EOS_PROMPT = "Paris"
EOS_AT = 3  # the gpt_eos model's eos is the 4th token greedy generation makes from EOS_PROMPT


@pytest.fixture(scope="module")
def repo(base: Path, oracles: dict[str, Oracle]) -> Path:
    root = base / "generation_repo"
    shutil.rmtree(root, ignore_errors=True)
    write_generation_model(root, "gpt", base, "gpt2")
    write_generation_model(root, "llama", base, "llama")
    one_row = {"max_num_seqs": "1", "max_queue_size": "1"}
    write_generation_model(root, "single", base, "gpt2", parameters=one_row)
    # The same weights with the eos id set to a token greedy generation makes: a known eos.
    eos_dir = write_generation_model(root, "gpt_eos", base, "gpt2")
    token = oracles["gpt2"](EOS_PROMPT, EOS_AT + 1).ids[EOS_AT]
    config = json.loads((eos_dir / "generation_config.json").read_text())
    config["eos_token_id"] = token
    (eos_dir / "generation_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[Daemon]:
    started = start_daemon(repo, repo.parent / "generation-daemon.log")
    yield started
    assert started.stop() == 0


@pytest.fixture
def stub(daemon: Daemon) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(daemon.address) as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def _bytes(data: bytes) -> np.ndarray:
    array = np.empty(1, dtype=np.object_)
    array[0] = data
    return array


def request(
    model: str,
    prompt: str,
    *,
    stream: bool = True,
    rid: str = "",
    sampling: dict[str, Any] | str | None = None,
    exclude_input: bool | None = None,
    parameters: dict[str, Any] | None = None,
) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model, id=rid)
    inputs: dict[str, tuple[str, np.ndarray]] = {
        "text_input": ("BYTES", _bytes(prompt.encode())),
        "stream": ("BOOL", np.array([stream])),
    }
    if sampling is not None:
        text = sampling if isinstance(sampling, str) else json.dumps(sampling)
        inputs["sampling_parameters"] = ("BYTES", _bytes(text.encode()))
    if exclude_input is not None:
        inputs["exclude_input_in_output"] = ("BOOL", np.array([exclude_input]))
    for name, (datatype, array) in inputs.items():
        message.inputs.add(name=name, datatype=datatype, shape=[1])
        message.raw_input_contents.append(encode_raw(array))
    for key, value in (parameters or {}).items():
        if isinstance(value, bool):
            message.parameters[key].bool_param = value
        else:
            message.parameters[key].int64_param = value
    return message


def greedy(max_tokens: int, **more: Any) -> dict[str, Any]:
    return {"max_tokens": max_tokens, "temperature": 0, **more}


def outputs(response: pb.ModelInferResponse) -> dict[str, Any]:
    """The answer's outputs as Python values (text as str, counts as int)."""
    found: dict[str, Any] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True):
        if tensor.datatype == "BYTES":
            found[tensor.name] = raw[4:].decode("utf-8")
        else:
            found[tensor.name] = int(np.frombuffer(raw, np.int64)[0])
    return found


def final_flag(response: pb.ModelInferResponse) -> bool | None:
    param = response.parameters.get(FINAL)
    return None if param is None else param.bool_param


def stream_all(
    stub: pb_grpc.GRPCInferenceServiceStub, requests: list[pb.ModelInferRequest]
) -> list[pb.ModelStreamInferResponse]:
    return list(stub.ModelStreamInfer(iter(requests), timeout=120))


def prompt_of(words: int, offset: int = 0) -> str:
    return " ".join(WORDS[offset : offset + words])


# -- the contract clients see ----------------------------------------------------------------


def test_metadata_and_config_show_the_vllm_contract(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="gpt")).config
    assert config.max_batch_size == 0
    assert config.model_transaction_policy.decoupled
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    assert inputs["text_input"] == (mc.TYPE_STRING, [1], False)
    assert inputs["stream"] == (mc.TYPE_BOOL, [1], True)
    assert inputs["sampling_parameters"] == (mc.TYPE_STRING, [1], True)
    assert inputs["exclude_input_in_output"] == (mc.TYPE_BOOL, [1], True)
    assert {o.name: o.data_type for o in config.output} == {
        "text_output": mc.TYPE_STRING,
        "finish_reason": mc.TYPE_STRING,
        "num_input_tokens": mc.TYPE_INT64,
        "num_output_tokens": mc.TYPE_INT64,
    }
    meta = stub.ModelMetadata(pb.ModelMetadataRequest(name="gpt"))
    assert {t.name: (t.datatype, list(t.shape)) for t in meta.inputs}["text_input"] == (
        "BYTES",
        [1],
    )
    assert [t.name for t in meta.outputs] == [
        "text_output",
        "finish_reason",
        "num_input_tokens",
        "num_output_tokens",
    ]


# -- greedy output equals the oracle ------------------------------------------------------------


@pytest.mark.parametrize(("model", "arch"), [("gpt", "gpt2"), ("llama", "llama")])
def test_unary_greedy_output_equals_hf_generate(
    stub: pb_grpc.GRPCInferenceServiceStub, oracles: dict[str, Oracle], model: str, arch: str
) -> None:
    prompt = "The quick brown fox"
    want = oracles[arch](prompt, 12)
    whole = outputs(stub.ModelInfer(request(model, prompt, stream=False, sampling=greedy(12))))
    assert whole["text_output"] == prompt + want.text  # the prompt first, as the vLLM backend
    assert whole["finish_reason"] == want.reason
    assert whole["num_input_tokens"] == len(oracles[arch].tokenizer.encode(prompt).ids)
    assert whole["num_output_tokens"] == len(want.ids)
    bare = stub.ModelInfer(request(model, prompt, sampling=greedy(12), exclude_input=True))
    assert final_flag(bare) is None  # unary: one response, even with stream true
    assert outputs(bare)["text_output"] == want.text


def test_a_stream_sends_deltas_with_exactly_one_final_flag(
    stub: pb_grpc.GRPCInferenceServiceStub, oracles: dict[str, Oracle]
) -> None:
    prompt = "Hello world"
    want = oracles["llama"](prompt, 16)
    answers = stream_all(stub, [request("llama", prompt, rid="a", sampling=greedy(16))])
    assert all(not a.error_message and a.infer_response.id == "a" for a in answers)
    flags = [final_flag(a.infer_response) for a in answers]
    assert flags == [False] * (len(answers) - 1) + [True]
    pieces = [outputs(a.infer_response) for a in answers]
    assert all(set(p) == {"text_output"} and p["text_output"] for p in pieces[:-1])
    assert "".join(p["text_output"] for p in pieces) == want.text  # deltas, no prompt
    assert pieces[-1]["finish_reason"] == "length"
    assert pieces[-1]["num_output_tokens"] == 16
    # Triton's response_stats: by response index, "0" being the first text of each request.
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="llama")).model_stats[0]
    first = stats.response_stats["0"]
    assert first.success.count >= 1
    assert first.compute_infer.ns > 0
    assert stats.response_stats[str(len(answers) - 1)].success.count >= 1
    assert stats.execution_count > 0  # scheduler steps


def test_sixteen_staggered_streams_each_equal_their_oracle(
    daemon: Daemon, oracles: dict[str, Oracle]
) -> None:
    """16 requests on one stream, each sent once the engine has answered since the previous
    one: they join a batch mid-generation, with prompts of different lengths."""
    prompts = [prompt_of(1 + (i * 5) % 13, i % 7) for i in range(16)]
    wants = [oracles["gpt2"](prompt, 24) for prompt in prompts]

    async def scenario() -> list[pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=120)
            seen: list[pb.ModelStreamInferResponse] = []
            arrived = asyncio.Event()

            async def read() -> None:
                async for answer in call:
                    seen.append(answer)
                    arrived.set()

            reader = asyncio.ensure_future(read())
            for index, prompt in enumerate(prompts):
                arrived.clear()
                await call.write(request("gpt", prompt, rid=str(index), sampling=greedy(24)))
                if index < len(prompts) - 1:
                    await asyncio.wait_for(arrived.wait(), 60)
            await call.done_writing()
            await reader
            return seen

    answers = asyncio.run(scenario())
    assert not [a.error_message for a in answers if a.error_message]
    order = [int(a.infer_response.id) for a in answers]
    assert order != sorted(order), "the requests' responses did not interleave"
    finals = Counter(int(a.infer_response.id) for a in answers if final_flag(a.infer_response))
    assert finals == Counter(range(16))  # exactly one final flag per request
    for index, want in enumerate(wants):
        mine = [outputs(a.infer_response) for a in answers if a.infer_response.id == str(index)]
        text = "".join(piece["text_output"] for piece in mine)
        assert text == want.text, f"request {index} ({prompts[index]!r})"
        assert mine[-1]["finish_reason"] == want.reason


def test_seeded_sampling_is_reproducible_whatever_the_batch(daemon: Daemon) -> None:
    """The same seed gives the same text, alone or among other requests on one stream."""
    sampled = {"max_tokens": 16, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 1234}

    def texts(requests: list[pb.ModelInferRequest]) -> dict[str, str]:
        with grpc.insecure_channel(daemon.address) as channel:
            answers = stream_all(pb_grpc.GRPCInferenceServiceStub(channel), requests)
        assert not [a.error_message for a in answers if a.error_message]
        found: dict[str, str] = {}
        for answer in answers:
            piece = outputs(answer.infer_response).get("text_output", "")
            found[answer.infer_response.id] = found.get(answer.infer_response.id, "") + piece
        return found

    alone = texts([request("gpt", "Hello world", rid="s", sampling=sampled)])["s"]
    crowd = [
        request("gpt", prompt_of(2 + i, i), rid=f"o{i}", sampling=greedy(16)) for i in range(5)
    ]
    batched = texts(
        [*crowd[:3], request("gpt", "Hello world", rid="s", sampling=sampled), *crowd[3:]]
    )
    assert batched["s"] == alone
    assert alone


# -- how a generation ends ------------------------------------------------------------------------


def _word_in(text: str) -> str:
    """Three letters of ``text`` past its start, to stop at."""
    for start in range(1, len(text) - 2):
        if text[start : start + 3].isalpha() and text[start : start + 3].isascii():
            return text[start : start + 3]
    pytest.fail(f"no three ASCII letters in the oracle's text {text!r}")


def test_max_tokens_stop_strings_and_eos_end_a_generation(
    stub: pb_grpc.GRPCInferenceServiceStub, oracles: dict[str, Oracle]
) -> None:
    prompt = "Hello world"
    want = oracles["llama"](prompt, 16)
    length = outputs(stub.ModelInfer(request("llama", prompt, sampling=greedy(5))))
    assert length["finish_reason"] == "length"
    assert length["num_output_tokens"] == 5
    # A stop string taken from the oracle's own text: the text ends before it.
    stop = _word_in(want.text)
    stopped = outputs(
        stub.ModelInfer(
            request("llama", prompt, sampling=greedy(16, stop=[stop]), exclude_input=True)
        )
    )
    assert stopped["finish_reason"] == "stop"
    assert stopped["text_output"] == want.text[: want.text.index(stop)]
    eos_want = oracles["gpt2"](EOS_PROMPT, EOS_AT)
    eos = outputs(
        stub.ModelInfer(request("gpt_eos", EOS_PROMPT, sampling=greedy(16), exclude_input=True))
    )
    assert eos["finish_reason"] == "eos"
    assert eos["text_output"] == eos_want.text
    assert eos["num_output_tokens"] == EOS_AT + 1  # the eos token counts, as in vLLM
    ignored = outputs(
        stub.ModelInfer(request("gpt_eos", EOS_PROMPT, sampling=greedy(8, ignore_eos=True)))
    )
    assert ignored["finish_reason"] == "length"


def test_the_empty_final_response_only_when_asked(stub: pb_grpc.GRPCInferenceServiceStub) -> None:
    asked = request(
        "gpt", "Hello", rid="e", sampling=greedy(6),
        parameters={"triton_enable_empty_final_response": True},
    )  # fmt: skip
    answers = [a.infer_response for a in stream_all(stub, [asked])]
    assert [final_flag(a) for a in answers] == [False] * (len(answers) - 1) + [True]
    assert not answers[-1].outputs  # the empty final response
    assert outputs(answers[-2])["finish_reason"] == "length"
    plain = [
        a.infer_response for a in stream_all(stub, [request("gpt", "Hello", sampling=greedy(6))])
    ]
    assert plain[-1].outputs
    assert final_flag(plain[-1])


def test_stream_false_answers_once_with_the_whole_text(
    stub: pb_grpc.GRPCInferenceServiceStub, oracles: dict[str, Oracle]
) -> None:
    want = oracles["gpt2"]("Hello", 6)
    answers = stream_all(stub, [request("gpt", "Hello", stream=False, sampling=greedy(6))])
    assert len(answers) == 1
    assert final_flag(answers[0].infer_response) is True
    assert outputs(answers[0].infer_response)["text_output"] == "Hello" + want.text


# -- errors and cancellation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampling", "named"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": "many"}, "top_k"),
        ({"bogus": 1}, "bogus"),
        ("[1, 2]", "JSON object"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_sampling_parameters_are_invalid_argument_naming_the_field(
    stub: pb_grpc.GRPCInferenceServiceStub, sampling: dict[str, Any] | str, named: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("gpt", "Hello", sampling=sampling))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in (caught.value.details() or "")


def test_a_prompt_beyond_the_context_is_invalid_argument(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("gpt", "Hello world " * 100, sampling=greedy(4)))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "context" in (caught.value.details() or "")


def test_an_error_mid_stream_ends_its_request_only(
    stub: pb_grpc.GRPCInferenceServiceStub, oracles: dict[str, Oracle]
) -> None:
    want = oracles["gpt2"]("Hello world", 20)
    answers = stream_all(
        stub,
        [
            request("gpt", "Hello world", rid="good", sampling=greedy(20)),
            request("gpt", "Hello", rid="bad", sampling={"temperature": "hot"}),
        ],
    )
    bad = [a for a in answers if a.infer_response.id == "bad"]
    assert len(bad) == 1
    assert bad[0].error_message.startswith("[INVALID_ARGUMENT]")
    assert "temperature" in bad[0].error_message
    assert final_flag(bad[0].infer_response) is True
    good = [a.infer_response for a in answers if a.infer_response.id == "good"]
    assert "".join(outputs(g)["text_output"] for g in good) == want.text
    assert [final_flag(g) for g in good].count(True) == 1


def test_a_full_queue_is_resource_exhausted_at_once(
    stub: pb_grpc.GRPCInferenceServiceStub,
) -> None:
    """One row and one waiting place: of five long requests sent at once, those beyond them are
    refused at once (each one final answer), and the others run to the end."""
    long = greedy(100, ignore_eos=True)
    requests = [request("single", "Hi", rid=str(i), sampling=long) for i in range(5)]
    answers = stream_all(stub, requests)
    refused = [a for a in answers if a.error_message]
    assert refused
    assert all(a.error_message.startswith("[RESOURCE_EXHAUSTED]") for a in refused)
    assert all(final_flag(a.infer_response) for a in refused)
    finals = Counter(a.infer_response.id for a in answers if final_flag(a.infer_response))
    assert finals == Counter(str(i) for i in range(5))
    served = {a.infer_response.id for a in answers if not a.error_message}
    assert served
    assert len(served) + len(refused) == 5


def _metric_line(daemon: Daemon, series: str) -> float:
    """The value of one series (``name{labels}``) on the daemon's /metrics page (0 if absent)."""
    assert daemon.metrics_port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{daemon.metrics_port}/metrics") as page:
        text = page.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line[len(series) + 1 :])
    return 0.0


def _metric(daemon: Daemon, name: str, model: str) -> float:
    return _metric_line(daemon, f'{name}{{model="{model}"}}')


def _success_count(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> int:
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return int(stats.model_stats[0].inference_stats.success.count)


def test_cancelling_a_stream_frees_its_row(
    daemon: Daemon, stub: pb_grpc.GRPCInferenceServiceStub
) -> None:
    """The stream is cancelled at its first response, long before its 120 tokens are made."""
    before = _success_count(stub, "llama")
    cancelled = 'ortserve_generations_total{model="llama",reason="cancelled"}'
    cancelled_before = _metric_line(daemon, cancelled)

    async def start_and_cancel() -> None:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=120)
            long = greedy(120, ignore_eos=True)
            # "Hello world": its first greedy token is plain text, so the first response comes
            # with it.
            await call.write(request("llama", "Hello world", rid="long", sampling=long))
            first = await asyncio.wait_for(call.read(), 60)
            assert final_flag(first.infer_response) is False
            call.cancel()

    asyncio.run(start_and_cancel())
    for _ in range(200):  # the row is freed at the engine's next step (bounded: 10 s)
        if _metric_line(daemon, cancelled) > cancelled_before:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert _metric_line(daemon, cancelled) == cancelled_before + 1
    assert _metric(daemon, "ortserve_running_sequences", "llama") == 0
    assert _success_count(stub, "llama") == before  # a cancelled request is no success
    stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name="llama")).model_stats[0]
    assert sum(r.cancel.count for r in stats.response_stats.values()) >= 1
    # The model goes on serving.
    assert outputs(stub.ModelInfer(request("llama", "Hi", sampling=greedy(3))))["text_output"]
    assert _metric(daemon, "ortserve_generated_tokens_total", "llama") > 0
    assert _success_count(stub, "llama") == before + 1


def test_a_shutdown_lets_a_running_generation_finish(
    repo: Path, tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    """SIGTERM while a stream generates: its request was admitted, so it is answered to the
    end (the version's lease is held until its last response); then the daemon stops."""
    single = tmp_path / "repo"
    shutil.copytree(repo / "gpt", single / "gpt")
    daemon = daemon_factory(single, "--grace-seconds", "60")

    ended: list[grpc.StatusCode] = []

    async def scenario() -> list[pb.ModelStreamInferResponse]:
        async with grpc.aio.insecure_channel(daemon.address) as channel:
            call = pb_grpc.GRPCInferenceServiceStub(channel).ModelStreamInfer(timeout=120)
            long = greedy(100, ignore_eos=True)
            await call.write(request("gpt", "Hello world", rid="long", sampling=long))
            answers = [await asyncio.wait_for(call.read(), 60)]
            daemon.process.send_signal(signal.SIGTERM)
            await call.done_writing()
            try:
                while (answer := await call.read()) is not grpc.aio.EOF:
                    answers.append(answer)
            except grpc.aio.AioRpcError as error:  # the stream may end UNAVAILABLE after it
                ended.append(error.code())
            return answers

    answers = asyncio.run(scenario())
    assert ended in ([], [grpc.StatusCode.UNAVAILABLE])
    assert not [a.error_message for a in answers if a.error_message]
    last = answers[-1].infer_response
    assert final_flag(last) is True
    assert outputs(last)["finish_reason"] == "length"
    assert outputs(last)["num_output_tokens"] == 100
    assert daemon.process.wait(30) == 0


# -- clients --------------------------------------------------------------------------------------


def test_tritonclient_streaming_end_to_end(daemon: Daemon, oracles: dict[str, Oracle]) -> None:
    want = oracles["gpt2"]("The quick brown", 10)
    results: list[Any] = []

    def callback(result: Any, error: Any) -> None:
        results.append(error if error is not None else result)

    with tg.InferenceServerClient(daemon.address) as client:
        text = tg.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([b"The quick brown"], dtype=np.object_))
        stream = tg.InferInput("stream", [1], "BOOL")
        stream.set_data_from_numpy(np.array([True]))
        sampling = tg.InferInput("sampling_parameters", [1], "BYTES")
        sampling.set_data_from_numpy(np.array([json.dumps(greedy(10)).encode()], np.object_))
        client.start_stream(callback=callback)
        client.async_stream_infer("gpt", [text, stream, sampling], request_id="t1")
        client.stop_stream()  # waits for the stream's responses
    assert all(not isinstance(r, Exception) for r in results), results
    pieces = [r.as_numpy("text_output")[0].decode() for r in results]
    assert "".join(pieces) == want.text
    flags = [r.get_response().parameters[FINAL].bool_param for r in results]
    assert flags == [False] * (len(results) - 1) + [True]
    assert results[-1].as_numpy("finish_reason")[0] == b"length"


def test_ortserve_client_generate_and_generate_stream(
    daemon: Daemon, oracles: dict[str, Oracle]
) -> None:
    want = oracles["llama"]("Hello world", 12)
    with Client(daemon.address, timeout=60) as client:
        result = client.generate("llama", "Hello world", max_tokens=12, temperature=0)
        assert result.text == want.text
        assert result.finish_reason == "length"
        assert result.output_tokens == 12
        assert result.input_tokens == len(oracles["llama"].tokenizer.encode("Hello world").ids)
        pieces = list(client.generate_stream("llama", "Hello world", max_tokens=12, temperature=0))
        assert "".join(pieces) == want.text
        with pytest.raises(InvalidArgumentError, match="top_p"):
            client.generate("llama", "Hello", top_p=2.0)
        with pytest.raises(InvalidArgumentError, match="unknown sampling parameter"):
            client.generate("llama", "Hello", beam_width=2)

    async def asynchronous() -> tuple[str, list[str]]:
        async with AsyncClient(daemon.address, timeout=60) as client:
            whole = await client.generate("llama", "Hello world", max_tokens=12, temperature=0)
            streamed = [
                piece
                async for piece in client.generate_stream(
                    "llama", "Hello world", max_tokens=12, temperature=0
                )
            ]
            with pytest.raises(InvalidArgumentError, match="temperature"):
                async for _ in client.generate_stream("llama", "Hello", temperature=-2):
                    pass
            return whole.text, streamed

    whole, streamed = asyncio.run(asynchronous())
    assert whole == want.text
    assert "".join(streamed) == want.text
