"""The OpenAI-compatible routes and the classify route over a real socket: the official ``openai``
package (and httpx for raw shapes) against a real daemon, checked against the same models' gRPC
answers (ortserve_client)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
import tritonclient.grpc as tg
from tokenizers import Tokenizer

from ortserve_client import Client
from tests.conftest import Daemon, start_daemon
from tests.factories.causal_lm import write_generation_model
from tests.factories.text_models import write_text_model

TEXTS = ["i love this movie", "cats", "alice works at acme corporation in london",
         "this film is terrible and boring", "paris is the capital of france",
         "berlin", "bob visited new york with carol", "a b c d e"]  # fmt: skip
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
GREEDY = {"max_tokens": 8, "temperature": 0}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.getbasetemp()
    root = tmp_path_factory.mktemp("openai") / "repo"
    # max_batch_size 3: a request of 8 texts runs as three requests, answered in order.
    write_text_model(root, "embed", "feature-extraction", sentence_transformers=True,
                     config="max_batch_size: 3\n")  # fmt: skip
    write_text_model(root, "sentiment", "text-classification")
    write_text_model(
        root, "router", "text-classification", labels={0: "billing", 1: "tech"},
        config='max_batch_size: 8\nparameters { key: "confidence_threshold" value: { string_value: "0.999" } }\n'
               'parameters { key: "fallback_label" value: { string_value: "human" } }\n',
    )  # fmt: skip
    write_generation_model(root, "gpt", base, "gpt2")
    chat = write_generation_model(root, "gpt_chat", base, "gpt2")
    config = json.loads((chat / "tokenizer_config.json").read_text())
    config["chat_template"] = CHAT_TEMPLATE
    (chat / "tokenizer_config.json").write_text(json.dumps(config))
    return root


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[Daemon]:
    started = start_daemon(repo, repo.parent / "daemon.log")
    yield started
    assert started.stop() == 0


@pytest.fixture(scope="module")
def base_url(daemon: Daemon) -> str:
    return daemon.http_url


@pytest.fixture(scope="module")
def oai(base_url: str) -> Iterator[openai.OpenAI]:
    # No retries: a 429 or 5xx is what a test looks at, not something to hide.
    client = openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0)
    yield client
    client.close()


@pytest.fixture(scope="module")
def grpc_client(daemon: Daemon) -> Iterator[Client]:
    with Client(daemon.address) as client:
        yield client


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


# -- /v1/embeddings -------------------------------------------------------------------------------


def test_embeddings_match_grpc_in_float_and_base64(
    oai: openai.OpenAI, grpc_client: Client, repo: Path
) -> None:
    expected = np.concatenate([grpc_client.embed("embed", [text]) for text in TEXTS])
    as_floats = oai.embeddings.create(model="embed", input=TEXTS, encoding_format="float")
    # The SDK asks for base64 by default and decodes it itself (float32 little-endian).
    as_base64 = oai.embeddings.create(model="embed", input=TEXTS)
    for answer in (as_floats, as_base64):
        assert answer.model == "embed"
        assert [item.index for item in answer.data] == list(range(len(TEXTS)))
        got = np.array([item.embedding for item in answer.data], dtype=np.float32)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    tokenizer = Tokenizer.from_file(str(repo / "embed" / "1" / "tokenizer.json"))
    tokens = sum(len(encoding.ids) for encoding in tokenizer.encode_batch(TEXTS))
    assert as_floats.usage.prompt_tokens == tokens
    assert as_floats.usage.total_tokens == tokens


def test_embeddings_of_one_string(oai: openai.OpenAI, grpc_client: Client) -> None:
    answer = oai.embeddings.create(model="embed", input="cats", encoding_format="float")
    assert len(answer.data) == 1
    np.testing.assert_allclose(
        answer.data[0].embedding, grpc_client.embed("embed", ["cats"])[0], rtol=1e-5, atol=1e-6
    )


def test_embeddings_refusals_in_openai_shape(oai: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as tokens:
        oai.embeddings.create(model="embed", input=[[1, 2, 3]])
    assert tokens.value.status_code == 400
    assert "token ids" in tokens.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        oai.embeddings.create(model="nope", input="hi")
    assert "nope" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as wrong_kind:
        oai.embeddings.create(model="sentiment", input="hi")
    assert "not a" in wrong_kind.value.message
    assert "embedding" in wrong_kind.value.message

    raw = http.post(
        "/v1/embeddings", json={"model": "embed", "input": "hi", "encoding_format": "int8"}
    )
    assert raw.status_code == 400
    error = raw.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "encoding_format"
    bad_json = http.post(
        "/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 400
    assert "not valid JSON" in bad_json.json()["error"]["message"]
    missing = http.post("/v1/embeddings", json={"input": "hi"})
    assert missing.status_code == 400
    assert missing.json()["error"]["param"] == "model"


# -- /v1/models -----------------------------------------------------------------------------------


def test_models_lists_every_ready_model(oai: openai.OpenAI) -> None:
    ids = sorted(model.id for model in oai.models.list())
    assert ids == ["embed", "gpt", "gpt_chat", "router", "sentiment"]
    assert oai.models.retrieve("gpt").id == "gpt"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("nope")


# -- /v2/models/{name}/classify -------------------------------------------------------------------


def test_classify_route_matches_grpc_and_routes(http: httpx.Client, grpc_client: Client) -> None:
    one = http.post("/v2/models/sentiment/classify", json={"text": "i love this movie"})
    assert one.status_code == 200, one.text
    expected = grpc_client.classify("sentiment", ["i love this movie"])[0]
    [answer] = one.json()
    assert answer["label"] == expected.label
    assert "routed_label" not in answer
    assert answer["score"] == pytest.approx(expected.score, rel=1e-5)

    many = http.post("/v2/models/router/classify", json={"text": TEXTS})
    assert many.status_code == 200, many.text
    routed = grpc_client.classify("router", TEXTS)  # LABEL is the routed one over gRPC
    assert [a["routed_label"] for a in many.json()] == [c.label for c in routed]
    for answer, grpc_answer in zip(many.json(), routed, strict=True):
        assert answer["label"] in ("billing", "tech")
        assert answer["score"] == pytest.approx(grpc_answer.score, rel=1e-5)
        assert answer["routed_label"] == ("human" if answer["score"] < 0.999 else answer["label"])

    versioned = http.post("/v2/models/sentiment/versions/1/classify", json={"text": ["cats"]})
    assert versioned.status_code == 200


def test_classify_refusals(http: httpx.Client) -> None:
    unknown = http.post("/v2/models/nope/classify", json={"text": "hi"})
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["error"]
    missing = http.post("/v2/models/sentiment/classify", json={"texts": "hi"})
    assert missing.status_code == 400
    assert "'text'" in missing.json()["error"]
    wrong_kind = http.post("/v2/models/embed/classify", json={"text": "hi"})
    assert wrong_kind.status_code == 400
    assert "is a sentence-embeddings model" in wrong_kind.json()["error"]


# -- /v1/completions and /v1/chat/completions -----------------------------------------------------


@pytest.mark.slow
def test_completion_matches_grpc(oai: openai.OpenAI, grpc_client: Client) -> None:
    prompt = "The quick brown fox"
    expected = grpc_client.generate("gpt", prompt, **GREEDY)
    answer = oai.completions.create(model="gpt", prompt=prompt, **GREEDY)
    assert answer.object == "text_completion"
    assert answer.model == "gpt"
    [choice] = answer.choices
    assert choice.text == expected.text
    assert choice.finish_reason == ("length" if expected.finish_reason == "length" else "stop")
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == expected.input_tokens
    assert answer.usage.completion_tokens == expected.output_tokens
    assert answer.usage.total_tokens == expected.input_tokens + expected.output_tokens
    echoed = oai.completions.create(model="gpt", prompt=[prompt], echo=True, **GREEDY)
    assert echoed.choices[0].text == prompt + expected.text


@pytest.mark.slow
def test_completion_streams_server_sent_events(
    oai: openai.OpenAI, grpc_client: Client, http: httpx.Client
) -> None:
    prompt = "ONNX Runtime serves"
    expected = grpc_client.generate("gpt", prompt, **GREEDY)
    chunks = list(
        oai.completions.create(
            model="gpt", prompt=prompt, stream=True, stream_options={"include_usage": True},
            **GREEDY,
        )
    )  # fmt: skip
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == expected.text
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert reasons[-1] in ("length", "stop")
    assert all(r is None for r in reasons[:-1])
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == expected.output_tokens

    with http.stream("POST", "/v1/completions",
                     json={"model": "gpt", "prompt": prompt, "stream": True, **GREEDY}) as raw:  # fmt: skip
        assert raw.status_code == 200
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"


@pytest.mark.slow
def test_completion_refusals_in_openai_shape(oai: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        oai.completions.create(model="gpt", prompt="hi", temperature=-1)
    assert "temperature" in bad.value.message
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as many:
        oai.completions.create(model="gpt", prompt="hi", n=2)
    assert "'n'" in many.value.message
    with pytest.raises(openai.BadRequestError) as prompts:
        oai.completions.create(model="gpt", prompt=["a", "b"])
    assert "one prompt per request" in prompts.value.message
    with pytest.raises(openai.BadRequestError) as embedder:
        oai.completions.create(model="embed", prompt="hi")
    assert "text-generation" in embedder.value.message
    # A refusal of a streamed request comes before the stream: an HTTP status, not an event.
    raw = http.post("/v1/completions",
                    json={"model": "gpt", "prompt": "hi", "stream": True, "top_p": 2})  # fmt: skip
    assert raw.status_code == 400
    assert raw.json()["error"]["type"] == "invalid_request_error"
    assert "top_p" in raw.json()["error"]["message"]


@pytest.mark.slow
def test_chat_renders_the_models_template(oai: openai.OpenAI, grpc_client: Client) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    prompt = "<|endoftext|>system: Be brief.\nuser: Hello\nassistant:"
    expected = grpc_client.generate("gpt_chat", prompt, **GREEDY)
    answer = oai.chat.completions.create(model="gpt_chat", messages=messages, **GREEDY)  # type: ignore[arg-type]
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == expected.text
    assert answer.usage is not None
    assert answer.usage.prompt_tokens == expected.input_tokens

    stream = oai.chat.completions.create(
        model="gpt_chat",
        messages=messages,
        stream=True,
        **GREEDY,  # type: ignore[arg-type]
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == expected.text

    # Fields clients send at their defaults are welcome; the chat API's newer max name counts.
    short = oai.chat.completions.create(
        model="gpt_chat", messages=messages, logprobs=False, max_completion_tokens=2,  # type: ignore[arg-type]
        temperature=0,
    )  # fmt: skip
    assert short.usage is not None
    assert short.usage.completion_tokens <= 2
    assert expected.text.startswith(short.choices[0].message.content or "")

    with pytest.raises(openai.BadRequestError) as no_template:
        oai.chat.completions.create(model="gpt", messages=messages, **GREEDY)  # type: ignore[arg-type]
    assert "chat template" in no_template.value.message
    assert no_template.value.code is None


@pytest.mark.slow
def test_deadline_header_reaches_the_engine(http: httpx.Client) -> None:
    body = {"model": "gpt", "prompt": "hi", "max_tokens": 64, "ignore_eos": True}
    late = http.post("/v1/completions", json=body, headers={"X-Request-Timeout-Ms": "0.001"})
    assert late.status_code == 504, late.text
    assert late.json()["error"]["type"] == "server_error"
    bad = http.post("/v1/completions", json=body, headers={"X-Request-Timeout-Ms": "soon"})
    assert bad.status_code == 400
    assert "X-Request-Timeout-Ms" in bad.json()["error"]["message"]


@pytest.mark.slow
def test_closing_a_stream_cancels_the_generation(base_url: str, daemon: Daemon) -> None:
    body = {"model": "gpt", "prompt": "hi", "max_tokens": 120, "ignore_eos": True, "stream": True}
    with (
        httpx.Client(base_url=base_url, timeout=60) as client,
        client.stream("POST", "/v1/completions", json=body) as events,
    ):
        assert events.status_code == 200
        first = next(line for line in events.iter_lines() if line)
        assert first.startswith("data: {")
    # The request's cancelled response shows in its statistics (Triton's response_stats).
    deadline = time.monotonic() + 30
    with tg.InferenceServerClient(daemon.address) as triton:
        while time.monotonic() < deadline:
            stats = triton.get_inference_statistics("gpt", as_json=True)
            responses = stats["model_stats"][0].get("response_stats", {})
            if any(int(r.get("cancel", {}).get("count", 0)) for r in responses.values()):
                return
            time.sleep(0.05)
    raise AssertionError(f"no cancelled response in {responses}")
