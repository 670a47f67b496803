"""Would the daemon load the version about to be published? Its own loader rules, run before
anything is written into the repository.

The daemon (``ortserve.registry.versions.load_version``) takes the model folder's config.pbtxt
(or none), completes it from the graph's inputs and outputs (``complete_config``), and, when a
``tokenizer.json`` lies beside ``model.onnx``, builds a text adapter: the task settings
(``text_settings``) and the task's ``TextAdapter``, which takes only token inputs and a batch axis.
The same functions run here on the config that will be in force (the existing config.pbtxt,
which is never overwritten, else the one about to be written) and on the version's own text
files, so that a version the daemon would refuse is refused here, with the daemon's reason, and
nothing is written.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ortserve.errors import ModelLoadError, OrtserveError
from ortserve.export.errors import ExportError
from ortserve.export.options import GENERATION_TASK
from ortserve.export.repository.manifest import MANIFEST_FILENAME
from ortserve.repository.config import (
    DEFAULT_MAX_BATCH_SIZE,
    ParsedConfig,
    complete_config,
    parse_config_text,
    read_config,
)
from ortserve.repository.layout import CONFIG_FILENAME
from ortserve.repository.parameters import Parameters
from ortserve.runtime.session import session_signature
from ortserve.signature import Signature
from ortserve.text.adapters import ADAPTERS
from ortserve.text.base import TOKEN_INPUTS
from ortserve.text.files import TOKENIZER_FILE, read_files
from ortserve.text.settings import text_settings

#: What the daemon gives a model without ``max_batch_size`` in its config (``ortserve serve
#: --default-max-batch-size``, 32 unless changed).
DAEMON_DEFAULT_MAX_BATCH_SIZE = DEFAULT_MAX_BATCH_SIZE

#: The files the daemon reads beside a text model's model.onnx (``ortserve.text.files``).
_TEXT_FILES = (
    TOKENIZER_FILE,
    "config.json",
    "tokenizer_config.json",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)


_PAST = "past_key_values"


def takes_tokens(input_names: Sequence[str]) -> bool:
    """The daemon's rule for a text model's inputs: ``input_ids``, and only token inputs."""
    return "input_ids" in input_names and all(name in TOKEN_INPUTS for name in input_names)


def token_inputs_note(model: Path, input_names: Sequence[str]) -> str:
    return (
        f"{model} takes {', '.join(input_names) or 'no inputs'}, not token inputs (the daemon "
        f"serves text only to a model taking {', '.join(TOKEN_INPUTS)})"
    )


def takes_past(input_names: Sequence[str]) -> bool:
    """A text-generation-with-past graph: ``input_ids`` and ``past_key_values.*`` inputs."""
    return "input_ids" in input_names and any(n.startswith(_PAST) for n in input_names)


def past_inputs_note(model: Path) -> str:
    return (
        f"{model} takes no input_ids and {_PAST}.N.key/value inputs (the daemon generates "
        "text only with an Optimum text-generation-with-past export)"
    )


def signature(session: Any, model: Path) -> Signature:
    """The graph's inputs and outputs as the daemon reads them from its ONNX Runtime session."""
    try:
        return session_signature(session, model)
    except ModelLoadError as exc:
        raise ExportError(str(exc)) from None


def check_loadable(
    folder: Path,
    name: str,
    new_config: str | None,
    graph: Signature,
    files: Mapping[str, Path],
    manifest: Mapping[str, Any],
) -> None:
    """Refuse (ExportError) a version the daemon would not load from ``folder`` (the model
    folder): ``new_config`` is the config.pbtxt text to be written when there is none (None: no
    config written), ``files`` the version's files (relative name -> source), ``manifest`` its
    manifest."""
    where = f"{folder}/<next version>"
    existing = folder / CONFIG_FILENAME
    try:
        if existing.exists() or new_config is None:
            parsed = read_config(folder)
        else:
            parsed = parse_config_text(new_config, f"{existing} (to be written)")
        config = complete_config(parsed, name, graph, DAEMON_DEFAULT_MAX_BATCH_SIZE)
    except OrtserveError as exc:
        raise ExportError(f"the daemon would not load {where}: {exc}; nothing written") from None
    if Parameters(config, parsed.source).text("task") == GENERATION_TASK:
        _check_generation_model(config, files, where)
        return
    if TOKENIZER_FILE not in files:
        return  # a tensor model: nothing more to check
    _check_text_model(parsed, config, files, manifest, where)


def _check_generation_model(config: Any, files: Mapping[str, Path], where: str) -> None:
    """Read the version as the daemon's generation engine does (``GenerationModel.load``: the
    session, the KV cache layout, tokenizer, eos ids, context limit), from links to its files."""
    from ortserve.generation.model import GenerationModel

    with tempfile.TemporaryDirectory(prefix="ortserve-check-") as tmp:
        root = Path(tmp)
        for rel, src in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).symlink_to(src.resolve())
        try:
            model = GenerationModel.load(root, config, where)
        except OrtserveError as exc:
            reason = str(exc).replace(str(root), where)
            raise ExportError(
                f"the daemon would not load {where} as a text-generation model: {reason}; "
                "nothing written"
            ) from None
        if not model.eos_ids:
            raise ExportError(
                f"{where}: no eos token id (generation_config.json, config.json or the "
                "tokenizer's eos token): generation would only stop at max_tokens; nothing written"
            )
        del model


def _check_text_model(
    parsed: ParsedConfig,
    config: Any,
    files: Mapping[str, Path],
    manifest: Mapping[str, Any],
    where: str,
) -> None:
    """Build the daemon's text pipeline on a copy of the version's text files."""
    with tempfile.TemporaryDirectory(prefix="ortserve-check-") as tmp:
        root = Path(tmp)
        for rel in _TEXT_FILES:
            if rel in files:
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(files[rel], root / rel)
        (root / MANIFEST_FILENAME).write_text(json.dumps(manifest, default=str), encoding="utf-8")
        try:
            text_files = read_files(root)
            settings = text_settings(Parameters(config, parsed.source), text_files)
            ADAPTERS[settings.task](text_files, settings, config, where)
        except OrtserveError as exc:
            reason = str(exc).replace(str(root), where)
            raise ExportError(
                f"the daemon would not load {where} as a text model (it has a "
                f"{TOKENIZER_FILE} beside model.onnx): {reason}; nothing written"
            ) from None
