"""A model graph's inputs and outputs as its session declares them.

Read by ``runtime`` from an ONNX Runtime session, used by ``repository`` to complete and check a
config, and by the exporter: a neutral home, so neither layer imports the other for it. (The
client's ``TensorSpec`` describes the wire form, with Triton datatype names; this one the config's
enum values.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output as the model graph declares it (-1 for a dynamic dimension)."""

    name: str
    data_type: int  # model_config DataType enum value
    dims: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
