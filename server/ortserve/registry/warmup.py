"""Warm a freshly loaded version up before it serves, and check what it answers.

Runs the config's ``model_warmup`` entries (Triton's: zero, random or file data), or, when there
are none, one row of zeros (empty strings for BYTES) through every session instance. Outputs must
come back with the config's names, datatypes and batch rows; otherwise the version is refused.

A config may come from the network (a ``RepositoryModelLoad`` ``config``), so a warm-up is
planned and bounded before anything is allocated or opened: every sample is checked against
``WARMUP_SAMPLE_LIMIT_BYTES`` and the runs against ``WARMUP_RUN_LIMIT``, and ``input_data_file``
is read only from the version's own ``warmup/`` folder, only as a regular file of exactly the
size the declared shape needs.

A generation model is warmed up by one short greedy generation (``warm_up_generation``: a prefill
and a decode step on its session), or skipped with the reason logged when the warm-up prompt
cannot be generated from (a tokenizer that makes no token of it, a tiny context).
"""

from __future__ import annotations

import asyncio
import math
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final

import numpy as np
import structlog

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.errors import InvalidInput, ModelLoadError, OrtserveError
from ortserve.generation.engine import GenerationEngine
from ortserve.generation.types import SamplingParams
from ortserve.runtime.session import ModelSessions
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import DATATYPE_TO_DTYPE, Array, datatype_of

#: The most one warm-up sample may hold, all its input tensors together (64 MiB): the implicit
#: row of zeros as much as an explicit ``model_warmup`` entry. Checked before allocating.
WARMUP_SAMPLE_LIMIT_BYTES: Final = 64 * 2**20
#: The most warm-up runs a version may ask for: ``count`` summed over its ``model_warmup``
#: entries (each at least 1). A load is blocking work no signal interrupts, so it is bounded.
WARMUP_RUN_LIMIT: Final = 1000
#: The folder, inside the version folder, that ``input_data_file`` names a file in.
WARMUP_FOLDER: Final = "warmup"

_SHOWN_NAME_CHARS = 100  # a file name from the network is echoed at most this long
#: A generation model's warm-up: this prompt, greedy, this many new tokens, within this time.
GENERATION_WARMUP_PROMPT: Final = "Hello"
GENERATION_WARMUP_TOKENS: Final = 2
GENERATION_WARMUP_TIMEOUT_S: Final = 300.0

log = structlog.get_logger("ortserve.warmup")


@dataclass(frozen=True, slots=True)
class _Input:
    name: str
    datatype: str
    shape: list[int]
    kind: str  # "zero_data", "random_data" or "input_data_file"
    data_file: str = ""


@dataclass(frozen=True, slots=True)
class _Sample:
    where: str  # for messages: the config source and the entry (or the implicit warm-up)
    inputs: list[_Input]
    rows: int
    count: int


def run_warmup(
    config: mc.ModelConfig, sessions: ModelSessions, version_dir: Path, source: str
) -> None:
    # Every sample is checked before the first is built: a bad last entry costs no runs.
    samples = [_plan(config, warm, index, source) for index, warm in enumerate(config.model_warmup)]
    if not samples:
        samples = [_implicit(config, version_dir)]
    _check_runs(samples, source)
    outputs = [out.name for out in config.output]
    for sample in samples:
        feeds = _feeds(sample, version_dir)  # one sample's tensors held at a time
        for _ in range(sample.count):
            try:
                results = sessions.run_everywhere(feeds, outputs)
            except OrtserveError as exc:
                raise ModelLoadError(f"{version_dir}: warmup failed: {exc}") from None
            except Exception as exc:  # ORT's own errors: the version is unusable
                raise ModelLoadError(f"{version_dir}: warmup failed: {exc}") from None
            for arrays in results:
                _check(
                    config, arrays, sample.rows if config.max_batch_size > 0 else None, version_dir
                )
        del feeds


def warm_up_generation(make_engine: Callable[[], GenerationEngine], where: str) -> None:
    """One short greedy generation through a throwaway engine over the version's model (its
    session's first runs happen here, not in a client's request); ModelLoadError if it fails.

    Runs its own event loop in a thread of its own, so that it works from a worker thread and
    from a thread that runs a loop alike."""
    params = SamplingParams(max_tokens=GENERATION_WARMUP_TOKENS, temperature=0.0, ignore_eos=True)

    async def generate() -> None:
        engine = make_engine()
        engine.start()
        try:
            async for _ in engine.generate(GENERATION_WARMUP_PROMPT, params):
                pass
        finally:
            await engine.aclose()

    async def bounded() -> None:
        await asyncio.wait_for(generate(), GENERATION_WARMUP_TIMEOUT_S)

    with ThreadPoolExecutor(1, thread_name_prefix="ortserve-warmup") as pool:
        try:
            pool.submit(asyncio.run, bounded()).result()
        except InvalidInput as exc:
            log.info("generation warm-up skipped", version=where, reason=str(exc))
        except TimeoutError:
            raise ModelLoadError(
                f"{where}: the warm-up generation took more than {GENERATION_WARMUP_TIMEOUT_S} s"
            ) from None
        except (OrtserveError, Exception) as exc:  # ORT's own errors too: the version is unusable
            raise ModelLoadError(f"{where}: warm-up generation failed: {exc}") from None


def _implicit(config: mc.ModelConfig, version_dir: Path) -> _Sample:
    """One row of zeros in every required input, in the shape the session takes."""
    batch = [1] if config.max_batch_size > 0 else []
    inputs: list[_Input] = []
    for entry in config.input:
        if entry.optional:
            continue
        # The session takes the reshaped form (the request path reshapes before it runs).
        dims = entry.reshape.shape if entry.HasField("reshape") else entry.dims
        shape = batch + [1 if dim < 0 else int(dim) for dim in dims]
        inputs.append(_Input(entry.name, CONFIG_TO_WIRE[entry.data_type], shape, "zero_data"))
    sample = _Sample(f"{version_dir}: the warm-up (one row of zeros)", inputs, 1, 1)
    _check_size(sample, "; no request to this model can be smaller, so it is not served")
    return sample


def _plan(config: mc.ModelConfig, warm: mc.ModelWarmup, index: int, source: str) -> _Sample:
    where = f"{source}: model_warmup[{index}] '{warm.name}'"
    rows = max(int(warm.batch_size), 1)
    batch = [rows] if config.max_batch_size > 0 else []
    inputs: list[_Input] = []
    for name, spec in warm.inputs.items():
        datatype = CONFIG_TO_WIRE.get(spec.data_type)
        if datatype is None:
            raise ModelLoadError(f"{where} input '{name}': no data_type")
        if any(dim < 0 for dim in spec.dims):
            raise ModelLoadError(
                f"{where} input '{name}': dims {list(spec.dims)} must all be >= 0 "
                "(a warm-up sample has a concrete shape)"
            )
        kind = spec.WhichOneof("input_data_type") or "zero_data"
        if kind == "input_data_file" and datatype == "BYTES":
            raise ModelLoadError(
                f"{where} input '{name}': input_data_file is not read for BYTES inputs; use "
                "zero_data (empty strings) or random_data"
            )
        shape = batch + [int(dim) for dim in spec.dims]
        inputs.append(_Input(name, datatype, shape, kind, spec.input_data_file))
    sample = _Sample(where, inputs, rows, max(int(warm.count), 1))
    _check_size(sample, "")
    return sample


def _nbytes(item: _Input) -> int:
    # Python ints: a shape of huge dims must not overflow into a small, allowed size.
    return math.prod(item.shape) * DATATYPE_TO_DTYPE[item.datatype].itemsize


def _check_size(sample: _Sample, consequence: str) -> None:
    total = 0
    for item in sample.inputs:
        size = _nbytes(item)
        total += size
        if total > WARMUP_SAMPLE_LIMIT_BYTES:
            held = f" (with the inputs before it, {total} bytes)" if total != size else ""
            raise ModelLoadError(
                f"{sample.where} input '{item.name}' of shape {item.shape} {item.datatype} needs "
                f"{size} bytes{held}, more than the warm-up limit of {WARMUP_SAMPLE_LIMIT_BYTES} "
                f"bytes ({WARMUP_SAMPLE_LIMIT_BYTES // 2**20} MiB) per sample{consequence}"
            )


def _check_runs(samples: list[_Sample], source: str) -> None:
    runs = sum(sample.count for sample in samples)
    if runs > WARMUP_RUN_LIMIT:
        raise ModelLoadError(
            f"{source}: model_warmup asks for {runs} runs (count summed over the entries), more "
            f"than the warm-up limit of {WARMUP_RUN_LIMIT}"
        )


def _feeds(sample: _Sample, version_dir: Path) -> dict[str, Array]:
    feeds: dict[str, Array] = {}
    for item in sample.inputs:
        if item.kind == "input_data_file":
            feeds[item.name] = _from_file(version_dir, item, sample.where)
        else:
            feeds[item.name] = _fill(item.datatype, item.shape, random=item.kind == "random_data")
    return feeds


def _fill(datatype: str, shape: list[int], random: bool) -> Array:
    dtype = DATATYPE_TO_DTYPE[datatype]
    if datatype == "BYTES":
        out = np.empty(shape, dtype=np.object_)
        out.fill(b"")
        return out
    if not random:
        return np.zeros(shape, dtype=dtype)
    # Drawn in (at most) 4-byte elements, not numpy's default 8: a temporary at most 4x the
    # sample, whatever its datatype.
    rng = np.random.default_rng(0)
    if dtype.kind == "f" or datatype == "BF16":
        drawn = np.float64 if dtype == np.float64 else np.float32
        return rng.random(shape, dtype=drawn).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, size=shape, dtype=np.uint8).astype(dtype)
    return rng.integers(0, 2, size=shape, dtype=dtype)


def _from_file(version_dir: Path, item: _Input, where: str) -> Array:
    dtype = DATATYPE_TO_DTYPE[item.datatype]
    need = math.prod(item.shape) * dtype.itemsize
    raw = _read_warmup_file(version_dir, item.data_file, need, f"{where} input '{item.name}'")
    return np.frombuffer(raw, dtype=dtype).reshape(item.shape)


def _read_warmup_file(version_dir: Path, name: str, need: int, where: str) -> bytes:
    """The ``need`` bytes of ``<version_dir>/warmup/<name>``, refused unless it is a regular file
    inside that folder (after links) holding exactly ``need`` bytes.

    Nothing outside the folder is opened or even stat'ed, so a refusal tells nothing about it;
    a FIFO or device is refused from its stat, before an open that could block or never end.
    """
    shown = repr(name if len(name) <= _SHOWN_NAME_CHARS else name[:_SHOWN_NAME_CHARS] + "...")
    what = f"{where}: input_data_file {shown}"
    rel = PurePosixPath(name)
    if not name or "\0" in name or rel.is_absolute() or ".." in rel.parts:
        raise ModelLoadError(
            f"{what} must be a file name relative to the version's {WARMUP_FOLDER}/ folder, "
            "without '..' (warm-up files are read from there only)"
        )
    try:
        folder = version_dir.resolve(strict=True) / WARMUP_FOLDER
        real = folder.joinpath(*rel.parts).resolve()  # reads links, opens nothing
    except (OSError, RuntimeError) as exc:  # RuntimeError: a link loop (Python 3.11)
        raise ModelLoadError(f"{what}: cannot resolve it: {exc}") from None
    if real == folder or not real.is_relative_to(folder):
        raise ModelLoadError(
            f"{what} leads outside the version's {WARMUP_FOLDER}/ folder (through a link); "
            "warm-up files are read from there only"
        )
    try:
        info = os.stat(real)
    except OSError as exc:
        raise ModelLoadError(
            f"{what}: not readable in the version's {WARMUP_FOLDER}/ folder: {exc.strerror}"
        ) from None
    _check_regular(info, what)
    if info.st_size != need:
        raise ModelLoadError(f"{what} holds {info.st_size} bytes, not the {need} its shape needs")
    return _read_exactly(real, need, what)


def _check_regular(info: os.stat_result, what: str) -> None:
    if stat.S_ISREG(info.st_mode):
        return
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    kind = next((label for test, label in kinds if test(info.st_mode)), "not a file")
    raise ModelLoadError(f"{what} is {kind}; only a regular file is read")


def _read_exactly(path: Path, need: int, what: str) -> bytes:
    """Read at most ``need + 1`` bytes: a file that grew since its stat is refused, not slurped.

    O_NONBLOCK and O_NOFOLLOW: if the path was swapped for a FIFO or a link after the stat, the
    open neither waits for a writer nor follows it, and the fstat below refuses it.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelLoadError(f"{what}: cannot open it: {exc.strerror}") from None
    try:
        _check_regular(os.fstat(fd), what)
        chunks: list[bytes] = []
        held = 0
        while held <= need:
            chunk = os.read(fd, need + 1 - held)
            if not chunk:
                break
            chunks.append(chunk)
            held += len(chunk)
    except OSError as exc:
        raise ModelLoadError(f"{what}: cannot read it: {exc.strerror}") from None
    finally:
        os.close(fd)
    if held != need:
        raise ModelLoadError(f"{what} changed while read: not the {need} bytes its shape needs")
    return b"".join(chunks)


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
