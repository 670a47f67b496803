"""ONNX Runtime sessions for one model version, run off the event loop.

One session per instance (``instance_group.count``); each runs in its own worker thread, and a
caller waits for a free instance without blocking the loop.
"""

from __future__ import annotations

import asyncio
import ctypes
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto

from ortserve.datatypes import ORT_TO_CONFIG
from ortserve.errors import InvalidInput, ModelLoadError, ModelNotReady
from ortserve.runtime.options import ort_available_providers, provider_plan, session_options
from ortserve.signature import Signature, TensorSpec
from ortserve_client.proto import model_config_pb2 as mc
from ortserve_client.tensors import BF16_DTYPE, Array


class ModelSessions:
    """The sessions of one loaded model version."""

    def __init__(self, model_path: Path, config: mc.ModelConfig, source: str) -> None:
        if not model_path.is_file():
            raise ModelLoadError(f"{model_path}: model file not found")
        options = session_options(config, source)
        plan = provider_plan(config, ort_available_providers(), source)
        count = sum(group.count for group in config.instance_group) or 1
        self.notes = list(plan.notes)
        self._sessions: list[Any] = []
        try:
            for _ in range(count):
                self._sessions.append(
                    ort.InferenceSession(
                        str(model_path),
                        sess_options=options,
                        providers=[name for name, _ in plan.providers],
                        provider_options=[opts for _, opts in plan.providers],
                    )
                )
        except Exception as exc:  # ORT raises its own types for every load failure
            raise ModelLoadError(f"{model_path}: onnxruntime could not load it: {exc}") from None
        first = self._sessions[0]
        self.provider: str = first.get_providers()[0]
        self.signature = session_signature(first, model_path)
        self._string_inputs = {
            s.name for s in self.signature.inputs if s.data_type == mc.TYPE_STRING
        }
        # numpy has no bfloat16 that ORT's run() returns: a BF16 output needs run_with_ort_values,
        # which in turn cannot take string inputs (ORT makes no string OrtValue from numpy).
        self._bf16_out = any(s.data_type == mc.TYPE_BF16 for s in self.signature.outputs)
        if self._bf16_out and self._string_inputs:
            raise ModelLoadError(
                f"{model_path}: a model with both string inputs and BF16 outputs cannot be run "
                "through onnxruntime's Python API; cast the BF16 outputs to FP32 in the graph"
            )
        self._idle: asyncio.Queue[Any] | None = None
        self._closed = False
        self._executor = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ort")

    @property
    def instance_count(self) -> int:
        return len(self._sessions)

    async def run(self, feeds: Mapping[str, Array], outputs: Sequence[str]) -> list[Array]:
        """Run on the next free instance, in its worker thread."""
        if self._closed:  # the lazily built queue would come back empty and wait forever
            raise ModelNotReady("this model version has been unloaded")
        if self._idle is None:  # created on first use so that it binds to the running loop
            self._idle = asyncio.Queue()
            for session in self._sessions:
                self._idle.put_nowait(session)
        session = await self._idle.get()
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._run, session, feeds, outputs)
        finally:
            self._idle.put_nowait(session)

    def run_everywhere(
        self, feeds: Mapping[str, Array], outputs: Sequence[str]
    ) -> list[list[Array]]:
        """Run on every instance, in the calling thread (warmup, before the version serves)."""
        return [self._run(session, feeds, outputs) for session in self._sessions]

    def _run(self, session: Any, feeds: Mapping[str, Array], outputs: Sequence[str]) -> list[Array]:
        prepared = {name: self._prepare(name, array) for name, array in feeds.items()}
        try:
            if self._bf16_out:
                values = session.run_with_ort_values(list(outputs), prepared)
                results = [_from_ortvalue(value) for value in values]
            else:
                results = session.run(list(outputs), prepared)
        except (
            ort.capi.onnxruntime_pybind11_state.InvalidArgument,
            ort.capi.onnxruntime_pybind11_state.Fail,
        ) as exc:
            raise InvalidInput(f"onnxruntime refused the inputs: {exc}") from None
        return [_to_wire(array) for array in results]

    def _prepare(self, name: str, array: Array) -> Any:
        if name in self._string_inputs:
            return _utf8(name, array)
        if array.dtype == BF16_DTYPE and array.dtype != np.dtype(np.uint16):
            return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                np.ascontiguousarray(array).view(np.uint16), onnx_element_type=TensorProto.BFLOAT16
            )
        if self._bf16_out:
            return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array))
        return array

    def close(self) -> None:
        """Release the sessions now: nothing may keep a reference to them (the idle queue
        holds every one), or their memory waits for the garbage collector."""
        self._executor.shutdown(wait=True)
        self._closed = True
        self._sessions.clear()
        self._idle = None


def session_signature(session: Any, model_path: Path) -> Signature:
    """A session's inputs and outputs as ortserve serves them (ModelLoadError for a type it
    cannot serve)."""
    return Signature(
        inputs=tuple(_spec(arg, model_path) for arg in session.get_inputs()),
        outputs=tuple(_spec(arg, model_path) for arg in session.get_outputs()),
    )


def _spec(arg: Any, model_path: Path) -> TensorSpec:
    data_type = ORT_TO_CONFIG.get(arg.type)
    if data_type is None:
        raise ModelLoadError(
            f"{model_path}: tensor '{arg.name}' has type {arg.type}, which ortserve cannot serve"
        )
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    return TensorSpec(arg.name, data_type, dims)


def _utf8(name: str, array: Array) -> Array:
    """ORT string tensors hold str: decode BYTES elements as UTF-8."""
    flat = array.reshape(-1)
    out = np.empty(flat.shape, dtype=np.object_)
    for i, item in enumerate(flat):
        if isinstance(item, bytes):
            try:
                out[i] = item.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InvalidInput(
                    f"input '{name}': element {i} is not valid UTF-8 ({exc.reason} at byte "
                    f"{exc.start}); this model takes text"
                ) from None
        else:
            out[i] = item
    return out.reshape(array.shape)


def _from_ortvalue(value: Any) -> Array:
    if value.data_type() != "tensor(bfloat16)":
        return np.asarray(value.numpy())
    # numpy has no bfloat16 of its own: copy the raw bits out of ORT's buffer.
    size = value.tensor_size_in_bytes()
    raw = (ctypes.c_char * size).from_address(value.data_ptr())
    bits = np.frombuffer(bytes(raw), dtype=np.uint16).reshape(value.shape())
    return bits.view(BF16_DTYPE)


def _to_wire(array: Array) -> Array:
    """ORT returns str for string outputs; the wire carries bytes."""
    if array.dtype == np.object_:
        flat = [
            item.encode("utf-8") if isinstance(item, str) else item for item in array.reshape(-1)
        ]
        out = np.empty(len(flat), dtype=np.object_)
        out[:] = flat
        return out.reshape(array.shape)
    return array
