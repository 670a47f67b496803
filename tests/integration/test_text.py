"""Text in, answers out: each task end to end over gRPC, against references computed here with
tokenizers + onnxruntime + numpy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as tg
import tritonclient.grpc.aio as tga
from tokenizers import Tokenizer
from tritonclient.utils import InferenceServerException

from tests.conftest import Daemon, start_daemon
from tests.factories.text_models import TOKEN_LABELS, write_text_model

SENTENCES = [
    "i love this movie",
    "this film is terrible and boring i hate it and everything about it",
    "alice works at acme corporation in london",
    "cats",
]
CONTEXT = (
    "paris is the capital of france and berlin is the capital of germany . "
    "alice works at acme corporation in london and bob visited new york with carol ."
)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("text") / "repo"
    write_text_model(
        root,
        "sentiment",
        "text-classification",
        config="max_batch_size: 16\ndynamic_batching { }\n",
    )
    write_text_model(
        root, "router", "text-classification", labels={0: "billing", 1: "tech"},
        config='max_batch_size: 8\nparameters { key: "confidence_threshold" value: { string_value: "0.999" } }\n'
               'parameters { key: "fallback_label" value: { string_value: "human" } }\n',
    )  # fmt: skip
    write_text_model(root, "ner", "token-classification")
    write_text_model(root, "ner_tokens", "token-classification",
                     config='parameters { key: "aggregation" value: { string_value: "none" } }\n')  # fmt: skip
    write_text_model(
        root, "qa", "question-answering",
        config='parameters { key: "max_sequence_length" value: { string_value: "24" } }\n'
               'parameters { key: "stride" value: { string_value: "8" } }\n',
    )  # fmt: skip
    write_text_model(
        root, "qa_narrow", "question-answering",
        config="max_batch_size: 2\ndynamic_batching { }\n"
               'parameters { key: "max_sequence_length" value: { string_value: "24" } }\n'
               'parameters { key: "stride" value: { string_value: "8" } }\n',
    )  # fmt: skip
    write_text_model(root, "embed", "feature-extraction", sentence_transformers=True)
    write_text_model(
        root, "strict", "text-classification",
        config='parameters { key: "truncation" value: { string_value: "false" } }\n'
               'parameters { key: "max_sequence_length" value: { string_value: "8" } }\n',
    )  # fmt: skip
    write_text_model(root, "badlabels", "text-classification", labels={0: "a", 1: "b"})
    config = json.loads((root / "badlabels" / "1" / "config.json").read_text())
    config["id2label"] = {"0": "a", "1": "b", "2": "c"}
    (root / "badlabels" / "1" / "config.json").write_text(json.dumps(config))
    write_text_model(root, "badtokenizer", "text-classification")
    (root / "badtokenizer" / "1" / "tokenizer.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def daemon(repo: Path) -> Iterator[Daemon]:
    started = start_daemon(repo, repo.parent / "daemon.log")
    yield started
    assert started.stop() == 0


@pytest.fixture
def client(daemon: Daemon) -> Iterator[tg.InferenceServerClient]:
    with tg.InferenceServerClient(daemon.address) as c:
        yield c


def _texts(name: str, texts: list[str] | list[bytes]) -> tg.InferInput:
    data = np.array([[t if isinstance(t, bytes) else t.encode()] for t in texts], dtype=np.object_)
    tensor = tg.InferInput(name, list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    return tensor


class Reference:
    """What the daemon should answer, computed without it."""

    def __init__(self, folder: Path, max_length: int = 64) -> None:
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length)
        self.session = ort.InferenceSession(
            str(folder / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        self.labels = {
            int(k): v
            for k, v in json.loads((folder / "config.json").read_text()).get("id2label", {}).items()
        }

    def run(self, text: str, pair: str | None = None) -> tuple[list[np.ndarray], object]:
        enc = self.tokenizer.encode(text, pair) if pair else self.tokenizer.encode(text)
        feeds = {
            "input_ids": np.array([enc.ids], np.int64),
            "attention_mask": np.array([enc.attention_mask], np.int64),
            "token_type_ids": np.array([enc.type_ids], np.int64),
        }
        return self.session.run(None, feeds), enc


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_metadata_shows_the_text_contract(client: tg.InferenceServerClient) -> None:
    meta = client.get_model_metadata("sentiment", as_json=True)
    inputs = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert inputs["TEXT"] == ("BYTES", ["-1", "1"])
    assert inputs["TEXT_PAIR"] == ("BYTES", ["-1", "1"])
    assert "input_ids" in inputs
    outputs = [(o["name"], o["datatype"], o["shape"]) for o in meta["outputs"]]
    assert outputs[:3] == [("LABEL", "BYTES", ["-1", "1"]), ("SCORE", "FP32", ["-1", "1"]),
                           ("SCORES", "FP32", ["-1", "2"])]  # fmt: skip
    config = client.get_model_config("sentiment", as_json=True)["config"]
    assert all(i.get("optional") for i in config["input"])


def test_classification_matches_the_reference(client: tg.InferenceServerClient, repo: Path) -> None:
    ref = Reference(repo / "sentiment" / "1")
    result = client.infer("sentiment", [_texts("TEXT", SENTENCES)])
    labels = result.as_numpy("LABEL").reshape(-1)
    scores = result.as_numpy("SCORE").reshape(-1)
    all_scores = result.as_numpy("SCORES")
    for row, text in enumerate(SENTENCES):
        (logits,), _ = ref.run(text)
        probs = _softmax(logits[0])
        np.testing.assert_allclose(all_scores[row], probs, atol=1e-5)
        assert labels[row].decode() == ref.labels[int(probs.argmax())]
        assert scores[row] == pytest.approx(float(probs.max()), abs=1e-5)
    params = result.get_response().parameters
    assert params["padding_ratio"].double_param >= 1.0


def test_threshold_routes_to_the_fallback(client: tg.InferenceServerClient) -> None:
    result = client.infer("router", [_texts("TEXT", SENTENCES)])
    labels = {label.decode() for label in result.as_numpy("LABEL").reshape(-1)}
    scores = result.as_numpy("SCORE").reshape(-1)
    assert labels == {"human"}  # a random tiny model is never 99.9% sure
    assert (scores < 0.999).all()


def test_classification_extension_on_scores(client: tg.InferenceServerClient) -> None:
    result = client.infer("sentiment", [_texts("TEXT", SENTENCES[:2])],
                          outputs=[tg.InferRequestedOutput("SCORES", class_count=2)])  # fmt: skip
    top = result.as_numpy("SCORES")
    assert top.shape == (2, 2)
    score, index, label = top[0, 0].decode().split(":")
    assert label in ("NEGATIVE", "POSITIVE")
    assert float(score) >= float(top[0, 1].decode().split(":")[0])
    assert int(index) in (0, 1)


def test_embeddings_match_mean_pooling_and_normalization(
    client: tg.InferenceServerClient, repo: Path
) -> None:
    ref = Reference(repo / "embed" / "1", max_length=32)
    result = client.infer("embed", [_texts("TEXT", SENTENCES)])
    embeddings = result.as_numpy("EMBEDDING")
    assert embeddings.shape == (len(SENTENCES), 8)
    for row, text in enumerate(SENTENCES):
        (hidden,), enc = ref.run(text)
        mask = np.array(enc.attention_mask, np.float32)[:, None]
        pooled = (hidden[0] * mask).sum(0) / mask.sum()
        np.testing.assert_allclose(embeddings[row], pooled / np.linalg.norm(pooled), atol=1e-5)


def test_token_classification_entities(client: tg.InferenceServerClient, repo: Path) -> None:
    ref = Reference(repo / "ner_tokens" / "1")
    text = SENTENCES[2]
    result = client.infer("ner_tokens", [_texts("TEXT", [text])])
    found = json.loads(result.as_numpy("ENTITIES")[0, 0])
    (logits,), enc = ref.run(text)
    expected = []
    for i, ((start, end), special) in enumerate(
        zip(enc.offsets, enc.special_tokens_mask, strict=True)
    ):
        probs = _softmax(logits[0, i])
        label = TOKEN_LABELS[int(probs.argmax())]
        if special or label == "O":
            continue
        expected.append((label, text[start:end], start, end, float(probs.max())))
    assert [(e["entity"], e["word"], e["start"], e["end"]) for e in found] == [
        x[:4] for x in expected
    ]
    for e, x in zip(found, expected, strict=True):
        assert e["score"] == pytest.approx(x[4], abs=1e-5)
    grouped = json.loads(client.infer("ner", [_texts("TEXT", [text])]).as_numpy("ENTITIES")[0, 0])
    for entity in grouped:
        assert entity["word"] == text[entity["start"] : entity["end"]]
        assert not entity["entity"].startswith(("B-", "I-"))


def _best_span(
    ref: Reference, question: str, context: str, window: int, stride: int
) -> tuple[str, int, int, float]:
    tok = Tokenizer.from_str(ref.tokenizer.to_str())
    tok.enable_truncation(window, stride=stride, strategy="only_second")
    first = tok.encode(question, context)
    best = ("", 0, 0, -1.0)
    for enc in [first, *first.overflowing]:
        feeds = {"input_ids": np.array([enc.ids]), "attention_mask": np.array([enc.attention_mask]),
                 "token_type_ids": np.array([enc.type_ids])}  # fmt: skip
        start_logits, end_logits = ref.session.run(None, feeds)
        ctx = [i for i, s in enumerate(enc.sequence_ids) if s == 1]
        ps = np.exp(start_logits[0][ctx] - start_logits[0][ctx].max())
        ps /= ps.sum()
        pe = np.exp(end_logits[0][ctx] - end_logits[0][ctx].max())
        pe /= pe.sum()
        for a, i in enumerate(ctx):
            for b, j in enumerate(ctx):
                if i <= j < i + 30 and ps[a] * pe[b] > best[3]:
                    begin, finish = enc.offsets[i][0], enc.offsets[j][1]
                    best = (context[begin:finish], begin, finish, float(ps[a] * pe[b]))
    return best


def test_question_answering_over_windows(client: tg.InferenceServerClient, repo: Path) -> None:
    ref = Reference(repo / "qa" / "1")
    questions = ["where does alice work", "what is the capital of france"]
    result = client.infer(
        "qa", [_texts("TEXT", questions), _texts("TEXT_PAIR", [CONTEXT, CONTEXT])]
    )
    for row, question in enumerate(questions):
        text, start, end, score = _best_span(ref, question, CONTEXT, 24, 8)
        assert result.as_numpy("ANSWER")[row, 0].decode() == text
        assert int(result.as_numpy("START")[row, 0]) == start
        assert int(result.as_numpy("END")[row, 0]) == end
        assert CONTEXT[start:end] == text
        assert float(result.as_numpy("SCORE")[row, 0]) == pytest.approx(score, rel=1e-4)


def test_token_inputs_still_work(client: tg.InferenceServerClient, repo: Path) -> None:
    ref = Reference(repo / "sentiment" / "1")
    (logits,), enc = ref.run(SENTENCES[0])
    inputs = []
    for name, values in (("input_ids", enc.ids), ("attention_mask", enc.attention_mask),
                         ("token_type_ids", enc.type_ids)):  # fmt: skip
        tensor = tg.InferInput(name, [1, len(values)], "INT64")
        tensor.set_data_from_numpy(np.array([values], np.int64))
        inputs.append(tensor)
    result = client.infer("sentiment", inputs)
    assert [o.name for o in result.get_response().outputs] == ["logits"]
    np.testing.assert_allclose(result.as_numpy("logits"), logits, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "texts", "fragments"),
    [
        ("sentiment", ["ok", "   "], ["input 'TEXT'", "row 1 is empty"]),
        ("sentiment", [b"ok", b"\xff\xfe"], ["input 'TEXT'", "row 1 is not valid UTF-8"]),
        (
            "strict",
            [" ".join(["cats"] * 20)],
            ["more than max_sequence_length 8", "truncation is off"],
        ),
        ("qa", ["where"], ["needs the question in 'TEXT' and the context in 'TEXT_PAIR'"]),
    ],
)
def test_bad_text_is_invalid_argument(
    client: tg.InferenceServerClient, model: str, texts: list[str], fragments: list[str]
) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.infer(model, [_texts("TEXT", texts)])
    assert info.value.status() == "StatusCode.INVALID_ARGUMENT"
    for fragment in fragments:
        assert fragment in info.value.message()


def test_task_outputs_need_text(client: tg.InferenceServerClient) -> None:
    tensor = tg.InferInput("input_ids", [1, 3], "INT64")
    tensor.set_data_from_numpy(np.array([[2, 5, 3]], np.int64))
    mask = tg.InferInput("attention_mask", [1, 3], "INT64")
    mask.set_data_from_numpy(np.ones((1, 3), np.int64))
    types = tg.InferInput("token_type_ids", [1, 3], "INT64")
    types.set_data_from_numpy(np.zeros((1, 3), np.int64))
    with pytest.raises(InferenceServerException, match="task outputs need TEXT"):
        client.infer("sentiment", [tensor, mask, types], outputs=[tg.InferRequestedOutput("LABEL")])


def test_broken_text_models_name_the_file(client: tg.InferenceServerClient) -> None:
    rows = {r["name"]: r for r in client.get_model_repository_index(as_json=True)["models"]}
    assert rows["badlabels"]["state"] == "UNAVAILABLE"
    assert (
        "config.json: id2label has 3 labels but the model's 'logits' output has 2"
        in rows["badlabels"]["reason"]
    )
    assert "tokenizer.json: not a tokenizers file" in rows["badtokenizer"]["reason"]


def test_concurrent_texts_of_mixed_length_are_padded_and_trimmed(
    daemon: Daemon, repo: Path
) -> None:
    """Batches mix lengths (padded to the longest); each answer equals a batch-1 reference."""
    ref = Reference(repo / "embed" / "1", max_length=32)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "the",
        "lazy",
        "dog",
        "again",
        "and",
        "again",
    ]
    texts = [" ".join(words[: 1 + i % len(words)]) for i in range(48)]

    async def run() -> list[np.ndarray]:
        async with tga.InferenceServerClient(daemon.address) as client:
            results = await asyncio.gather(
                *(client.infer("embed", [_texts("TEXT", [t])]) for t in texts)
            )
            return [r.as_numpy("EMBEDDING")[0] for r in results]

    embeddings = asyncio.run(run())
    for text, embedding in zip(texts, embeddings, strict=True):
        (hidden,), enc = ref.run(text)
        mask = np.array(enc.attention_mask, np.float32)[:, None]
        pooled = (hidden[0] * mask).sum(0) / mask.sum()
        np.testing.assert_allclose(embedding, pooled / np.linalg.norm(pooled), atol=1e-5)
    with tg.InferenceServerClient(daemon.address) as client:
        stats = client.get_inference_statistics("embed", as_json=True)["model_stats"][0]
    assert int(stats["execution_count"]) < int(stats["inference_count"])


def _success_and_fail(client: tg.InferenceServerClient, model: str) -> tuple[int, int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    inference = stats["inference_stats"]
    return (
        int(stats.get("inference_count", 0)),
        int(inference["success"].get("count", 0)),
        int(inference["fail"].get("count", 0)),
    )


def test_a_context_with_more_windows_than_a_batch_runs_in_slices(
    client: tg.InferenceServerClient, repo: Path
) -> None:
    # qa_narrow takes 2 rows a batch; this context needs more windows than that.
    long_context = " ".join([CONTEXT] * 3)
    question = "where does alice work"
    ref = Reference(repo / "qa_narrow" / "1")
    tok = Tokenizer.from_str(ref.tokenizer.to_str())
    tok.enable_truncation(24, stride=8, strategy="only_second")
    windows = len(tok.encode(question, long_context).overflowing) + 1
    before = _success_and_fail(client, "qa_narrow")
    result = client.infer(
        "qa_narrow", [_texts("TEXT", [question]), _texts("TEXT_PAIR", [long_context])]
    )
    text, start, end, score = _best_span(ref, question, long_context, 24, 8)
    assert windows > 2
    assert result.as_numpy("ANSWER")[0, 0].decode() == text
    assert (int(result.as_numpy("START")[0, 0]), int(result.as_numpy("END")[0, 0])) == (start, end)
    assert float(result.as_numpy("SCORE")[0, 0]) == pytest.approx(score, rel=1e-4)
    after = _success_and_fail(client, "qa_narrow")
    # One text is one inference, however many windows it took.
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


def test_a_question_too_long_for_the_window_is_invalid_argument(
    client: tg.InferenceServerClient,
) -> None:
    # 13 words leave the context no more room than the stride (tokenizers would panic on
    # that one); 30 words do not fit the window at all.
    for words in (13, 30):
        question = " ".join((["where", "does", "alice", "work"] * 8)[:words])
        with pytest.raises(InferenceServerException) as error:
            client.infer("qa", [_texts("TEXT", [question]), _texts("TEXT_PAIR", [CONTEXT])])
        assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
        message = str(error.value)
        assert "leaves too little room for its context in a window of 24 tokens" in message
    # The same 13-word question with a context short enough to share its window: no window is
    # cut, so nothing is refused.
    question = " ".join((["where", "does", "alice", "work"] * 8)[:13])
    result = client.infer("qa", [_texts("TEXT", [question]), _texts("TEXT_PAIR", ["in london"])])
    assert result.as_numpy("ANSWER")[0, 0] is not None
    # The daemon carries on: the next request is answered.
    result = client.infer(
        "qa", [_texts("TEXT", ["where does alice work"]), _texts("TEXT_PAIR", [CONTEXT])]
    )
    assert result.as_numpy("ANSWER")[0, 0]


def test_a_failure_after_the_run_is_not_counted_as_a_success(
    client: tg.InferenceServerClient,
) -> None:
    before = _success_and_fail(client, "sentiment")
    with pytest.raises(InferenceServerException) as error:
        client.infer(
            "sentiment",
            [_texts("TEXT", ["fine"])],
            outputs=[tg.InferRequestedOutput("LABEL", class_count=2)],
        )
    assert error.value.status() == "StatusCode.INVALID_ARGUMENT"
    after = _success_and_fail(client, "sentiment")
    assert after[1] == before[1]  # no success
    assert after[2] == before[2] + 1  # one failure
