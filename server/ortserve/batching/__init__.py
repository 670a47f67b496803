"""The dynamic batcher (no grpc, no onnxruntime) and its numpy helpers.

``DynamicBatcher`` queues requests and hands batches to a ``run_batch`` callable; ``decide`` is
its batching rule on its own; ``stack_feeds``/``split_outputs`` turn a batch's feeds into one
run and its outputs back into one answer per request.
"""

from ortserve.batching.batch import Batch, BatchItem
from ortserve.batching.batcher import DynamicBatcher
from ortserve.batching.decision import Decision, decide
from ortserve.batching.policy import BatchPolicy, QueuePolicy, policy_from_config
from ortserve.batching.tensors import feed_rows, shape_key, split_outputs, stack_feeds

__all__ = [
    "Batch",
    "BatchItem",
    "BatchPolicy",
    "Decision",
    "DynamicBatcher",
    "QueuePolicy",
    "decide",
    "feed_rows",
    "policy_from_config",
    "shape_key",
    "split_outputs",
    "stack_feeds",
]
