"""Config fields ortserve does not implement, through the real daemon: the model is refused with
the file and the field named, never served with the field quietly ignored; the other models of
the repository serve on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tritonclient.grpc as tg

from tests.conftest import DaemonFactory
from tests.factories.onnx_models import add_model, write_model

WARMUP_100 = (
    "max_batch_size: 4\n"
    'model_warmup [ { name: "big" batch_size: 100\n'
    '  inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } } } ]\n'
)

#: model -> (config.pbtxt, what the index reason must say after "<path>/config.pbtxt: ")
REFUSED = {
    "reshaped_out": (
        'max_batch_size: 8\noutput [ { name: "y" dims: [ 2, 2 ] reshape: { shape: [ 4 ] } } ]\n',
        "output[0] 'y': reshape is not supported by ortserve for outputs",
    ),
    "labelled": (
        'output [ { name: "y" label_filename: "labels.txt" } ]\n',
        "output[0] 'y': label_filename is not supported by ortserve",
    ),
    "twice": (
        'input [ { name: "x" }, { name: "x" } ]\n',
        "input[1] 'x': listed twice (also input[0])",
    ),
    "decoupled": (
        "model_transaction_policy { decoupled: true }\n",
        "model_transaction_policy.decoupled is not supported by ortserve",
    ),
    "stateful": ("sequence_batching { }\n", "sequence_batching (stateful models) is not"),
    "misspelt": (
        'parameters { key: "intra_op_threads" value: { string_value: "1" } }\n',
        "parameters 'intra_op_threads' is not a parameter ortserve reads; did you mean "
        "'intra_op_thread_count'?",
    ),
    "banana": (
        'parameters { key: "session.intra_op.allow_spinning" value: { string_value: "banana" } }\n',
        "parameters 'session.intra_op.allow_spinning' must be true or false, got 'banana'",
    ),
    "negative": (
        'parameters { key: "intra_op_thread_count" value: { string_value: "-3" } }\n',
        "parameters 'intra_op_thread_count' must be an integer from 0 to 1024, got '-3'",
    ),
    "tokens": (
        'max_batch_size: 4\nparameters { key: "max_batch_tokens" value: { string_value: "-5" } }\n',
        "parameters 'max_batch_tokens' must be an integer from 0 to 2147483647, got '-5'",
    ),
    "bigwarm": (WARMUP_100, "model_warmup[0] 'big': batch_size 100 is more than max_batch_size 4"),
}


def _reasons(client: tg.InferenceServerClient) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    for row in client.get_model_repository_index(as_json=True)["models"]:
        rows.setdefault(row["name"], []).append(row)
    return rows


def test_unimplemented_config_fields_are_refused_by_name(
    tmp_path: Path, daemon_factory: DaemonFactory
) -> None:
    repo = tmp_path / "repo"
    for name, (config, _) in REFUSED.items():
        write_model(repo, name, add_model(), config=config)
    (repo / "labelled" / "labels.txt").write_text("a\nb\nc\nd\n")
    write_model(repo, "plain", add_model())
    write_model(
        repo,
        "custom",
        add_model(),
        config='max_batch_size: 4\nparameters { key: "team" value: { string_value: "search" } }\n',
    )
    daemon = daemon_factory(repo)
    with tg.InferenceServerClient(daemon.address) as client:
        rows = _reasons(client)
        for name, (_, message) in REFUSED.items():
            assert not client.is_model_ready(name), name
            assert all(row["state"] == "UNAVAILABLE" for row in rows[name]), rows[name]
            reasons = " | ".join(row.get("reason", "") for row in rows[name])
            assert f"{repo / name / 'config.pbtxt'}: {message}" in reasons, reasons
        # The others serve; an unknown parameter is kept, with a warning naming it.
        x = tg.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.zeros((1, 4), dtype=np.float32))
        for name in ("plain", "custom"):
            assert client.is_model_ready(name), rows[name]
            assert float(client.infer(name, [x]).as_numpy("y")[0, 0]) == 1.0
        served = client.get_model_config("custom", as_json=True)["config"]
        assert served["parameters"]["team"]["string_value"] == "search"
    warnings = [
        record
        for record in daemon.log_records()
        if record.get("event") == "config parameters that ortserve does not read are ignored"
    ]
    assert warnings, daemon.log_path.read_text()
    assert warnings[0]["keys"] == ["team"]
    assert warnings[0]["source"] == str(repo / "custom" / "config.pbtxt")
