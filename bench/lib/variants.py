"""bench.ratio's variants: one repository per set of session options, over one shared model file.

A variant name ending in ``+stream`` is not a repository of its own: it is the daemon of the
variant before it, driven by perf_analyzer --streaming (one ModelStreamInfer stream per client).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from bench.lib.encoder import MODEL, SEQ, VOCAB, input_data

# name -> (config parameters over intra_op_thread_count "2", extra config.pbtxt text)
VARIANTS: dict[str, tuple[dict[str, str], str]] = {
    "spin": ({}, ""),  # ONNX Runtime's default: intra-op threads spin while waiting for work
    "nospin": ({"session.intra_op.allow_spinning": "0"}, ""),
    # parallel loops hand out shrinking blocks on demand: a preempted thread holds less back
    "dyn": ({"session.dynamic_block_base": "4"}, ""),
    "nospin-dyn": (
        {"session.intra_op.allow_spinning": "0", "session.dynamic_block_base": "4"},
        "",
    ),
    # not in the default run: one intra-op thread leaves a core to the event loop and the client
    "intra1": ({"intra_op_thread_count": "1"}, ""),
    # two single-threaded sessions: no parallel-for barrier, one batch forms while one runs
    "2x1": ({"intra_op_thread_count": "1"}, "instance_group { count: 2 kind: KIND_CPU }\n"),
    # two 2-thread sessions: one fills the cores while the other's threads wait on each other
    "2x2": ({}, "instance_group { count: 2 kind: KIND_CPU }\n"),
    "2x2-nospin": (
        {"session.intra_op.allow_spinning": "0"},
        "instance_group { count: 2 kind: KIND_CPU }\n",
    ),
}

#: A variant name ending in this runs perf_analyzer with --streaming (ModelStreamInfer) against
#: the daemon of the variant before it: ``nospin+stream`` is nospin's daemon, over one stream.
STREAM = "+stream"


def base(variant: str) -> str:
    """The repository / daemon / raw measurement behind a run label."""
    return variant.removesuffix(STREAM)


def streaming(variant: str) -> bool:
    return variant.endswith(STREAM)


def config_text(variant: str) -> str:
    params, extra = VARIANTS[variant]
    lines = [
        f'name: "{MODEL}"',
        'platform: "onnxruntime_onnx"',
        "max_batch_size: 64",
        "dynamic_batching { }",
    ]
    for key, value in {"intra_op_thread_count": "2", **params}.items():
        lines += ["parameters {", f'  key: "{key}"', f'  value: {{ string_value: "{value}" }}', "}"]
    return "\n".join(lines) + "\n" + extra


def build_repos(root: Path, variants: Sequence[str], rebuild: bool) -> tuple[dict[str, Path], Path]:
    """root/{model.onnx, encoder-input-seq32.json, <variant>/encoder/...}: the repositories by
    variant, and the perf_analyzer input-data file. The model is written once and hard-linked."""
    root.mkdir(parents=True, exist_ok=True)
    master = root / "model.onnx"
    stamp = root / "model.stamp"
    want = f"encoder_model(vocab={VOCAB}) seq {SEQ}"
    if rebuild or not master.is_file() or not stamp.is_file() or stamp.read_text() != want:
        from tests.factories.onnx_models import encoder_model

        tmp = master.with_suffix(".tmp")
        tmp.write_bytes(encoder_model(vocab=VOCAB).SerializeToString())
        tmp.replace(master)
        stamp.write_text(want)
    data = root / f"{MODEL}-input-seq{SEQ}.json"
    data.write_text(json.dumps(input_data()) + "\n")
    repos: dict[str, Path] = {}
    for name in variants:
        repo = root / name
        version = repo / MODEL / "1"
        version.mkdir(parents=True, exist_ok=True)
        target = version / "model.onnx"
        if not target.is_file() or target.stat().st_ino != master.stat().st_ino:
            target.unlink(missing_ok=True)
            try:
                os.link(master, target)
            except OSError:
                shutil.copyfile(master, target)
        (repo / MODEL / "config.pbtxt").write_text(config_text(name))
        repos[name] = repo
    return repos, data
