"""Warm a freshly loaded version up before it serves, and check what it answers.

Runs the config's ``model_warmup`` entries (Triton's: zero, random or file data), or, when there
are none, one row of zeros (empty strings for BYTES) through every session instance. Outputs must
come back with the config's names, datatypes and batch rows; otherwise the version is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import ModelLoadError, OrtserveError
from ortserve.runtime.session import ModelSessions
from ortserve_client._proto import model_config_pb2 as mc
from ortserve_client.tensors import DATATYPE_TO_DTYPE, datatype_of

Array = npt.NDArray[Any]


def run_warmup(
    config: mc.ModelConfig, sessions: ModelSessions, version_dir: Path, source: str
) -> None:
    samples = [_sample(config, warm, version_dir, source) for warm in config.model_warmup]
    if not samples:
        samples = [(_zeros(config), 1, 1)]
    outputs = [out.name for out in config.output]
    for feeds, rows, count in samples:
        for _ in range(max(count, 1)):
            try:
                results = sessions.run_everywhere(feeds, outputs)
            except OrtserveError as exc:
                raise ModelLoadError(f"{version_dir}: warmup failed: {exc}") from None
            except Exception as exc:  # ORT's own errors: the version is unusable
                raise ModelLoadError(f"{version_dir}: warmup failed: {exc}") from None
            for arrays in results:
                _check(config, arrays, rows if config.max_batch_size > 0 else None, version_dir)


def _zeros(config: mc.ModelConfig) -> dict[str, Array]:
    batch = [1] if config.max_batch_size > 0 else []
    feeds: dict[str, Array] = {}
    for entry in config.input:
        if entry.optional:
            continue
        # The session takes the reshaped form (the request path reshapes before it runs).
        dims = entry.reshape.shape if entry.HasField("reshape") else entry.dims
        shape = batch + [1 if dim < 0 else int(dim) for dim in dims]
        feeds[entry.name] = _fill(CONFIG_TO_WIRE[entry.data_type], shape, random=False)
    return feeds


def _sample(
    config: mc.ModelConfig, warm: mc.ModelWarmup, version_dir: Path, source: str
) -> tuple[dict[str, Array], int, int]:
    rows = max(int(warm.batch_size), 1)
    batch = [rows] if config.max_batch_size > 0 else []
    feeds: dict[str, Array] = {}
    for name, spec in warm.inputs.items():
        datatype = CONFIG_TO_WIRE.get(spec.data_type)
        if datatype is None:
            raise ModelLoadError(
                f"{source}: model_warmup '{warm.name}' input '{name}': no data_type"
            )
        shape = batch + [int(dim) for dim in spec.dims]
        kind = spec.WhichOneof("input_data_type")
        if kind == "input_data_file":
            feeds[name] = _from_file(
                version_dir / "warmup" / spec.input_data_file, datatype, shape, source
            )
        else:
            feeds[name] = _fill(datatype, shape, random=kind == "random_data")
    return feeds, rows, int(warm.count)


def _fill(datatype: str, shape: list[int], random: bool) -> Array:
    dtype = DATATYPE_TO_DTYPE[datatype]
    if datatype == "BYTES":
        out = np.empty(shape, dtype=np.object_)
        out.fill(b"")
        return out
    if not random:
        return np.zeros(shape, dtype=dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f" or datatype == "BF16":
        return rng.random(shape).astype(dtype)
    return rng.integers(0, 2, size=shape).astype(dtype)


def _from_file(path: Path, datatype: str, shape: list[int], source: str) -> Array:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{source}: model_warmup input_data_file {path}: {exc}") from None
    dtype = DATATYPE_TO_DTYPE[datatype]
    count = int(np.prod(shape)) if shape else 1
    if datatype == "BYTES" or len(raw) != count * dtype.itemsize:
        raise ModelLoadError(
            f"{source}: model_warmup input_data_file {path} holds {len(raw)} bytes, not "
            f"{count * dtype.itemsize} for {datatype} {shape}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _check(config: mc.ModelConfig, arrays: list[Array], rows: int | None, where: Path) -> None:
    for entry, array in zip(config.output, arrays, strict=True):
        want = CONFIG_TO_WIRE[entry.data_type]
        got = datatype_of(array)
        if got != want:
            raise ModelLoadError(
                f"{where}: warmup output '{entry.name}' came back as {got}, the config says {want}"
            )
        if rows is not None and (array.ndim == 0 or array.shape[0] != rows):
            raise ModelLoadError(
                f"{where}: warmup output '{entry.name}' has shape {list(array.shape)}; a batched "
                f"model must keep the batch dimension ({rows} rows in)"
            )
