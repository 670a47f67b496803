"""The batcher's settings, with Triton's names and units, and the rule for a request's deadline.

Plain values, checked once when built: the batcher never reads config.pbtxt itself.
``policy_from_config`` is the one place that turns a ``ModelConfig`` into a ``BatchPolicy``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ortserve.errors import ConfigError, InvalidInput
from ortserve.repository.parameters import Parameters
from ortserve_client.proto import model_config_pb2 as mc

_US = 1_000_000  # microseconds a second: config values are in µs, loop time in seconds
_GROUPINGS = {"length": "nearest length first", "arrival": "arrival order"}


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    """Triton's ``ModelQueuePolicy`` (timeout action REJECT, the only one ortserve offers)."""

    # Longest a request may wait in the queue; 0 = no limit of its own.
    default_timeout_microseconds: int = 0
    # Whether a request's own timeout applies; it can then only shorten the default.
    allow_timeout_override: bool = False
    # Most requests waiting at this priority level; 0 = unbounded. Beyond it: Overloaded.
    max_queue_size: int = 0

    def __post_init__(self) -> None:
        if self.default_timeout_microseconds < 0:
            raise ValueError("default_timeout_microseconds must be >= 0")
        if self.max_queue_size < 0:
            raise ValueError("max_queue_size must be >= 0")

    def deadline(
        self, arrival: float, timeout_microseconds: int = 0, deadline: float | None = None
    ) -> float | None:
        """The absolute loop time at which a request arriving at ``arrival`` expires, or None.

        The earliest of: the default timeout, the request's own timeout (only where overrides are
        allowed, so that it can never lengthen the default) and the caller's deadline (gRPC).
        """
        if timeout_microseconds < 0:
            raise InvalidInput(f"timeout must be >= 0 microseconds, got {timeout_microseconds}")
        limits: list[float] = []
        if self.default_timeout_microseconds > 0:
            limits.append(arrival + self.default_timeout_microseconds / _US)
        if timeout_microseconds > 0 and self.allow_timeout_override:
            limits.append(arrival + timeout_microseconds / _US)
        if deadline is not None:
            limits.append(deadline)
        return min(limits, default=None)


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How one model version's requests are queued and combined. Sizes count rows."""

    # Most rows in one batch; a request is never split, so a bigger one is refused at submit.
    max_batch_size: int
    # Row counts worth sending at once, without waiting out the window.
    preferred_batch_sizes: tuple[int, ...] = ()
    # How long the oldest waiting request may be held for the batch to fill; 0 = send as soon
    # as a runner is free (the batch is then whatever queued while the runners were busy).
    max_queue_delay_microseconds: int = 0
    # Most requests in one batch; 0 = no limit. 1 gives Triton's default scheduler (no batching).
    max_batch_requests: int = 0
    # For paddable (text) requests: most padded tokens in one batch (longest length x rows);
    # 0 = no limit.
    max_batch_tokens: int = 0
    # For paddable requests: fill a batch with the requests nearest the oldest one in length,
    # rather than in arrival order, so that one long text does not pad many short ones.
    group_by_length: bool = True
    # Priority levels 1..priority_levels, 1 first; 0 = priorities off (one level).
    priority_levels: int = 0
    # The level of a request that gives none (priority 0); within 1..priority_levels.
    default_priority_level: int = 0
    queue: QueuePolicy = field(default_factory=QueuePolicy)
    # Per-level queue policies that replace ``queue`` at those levels.
    priority_queues: Mapping[int, QueuePolicy] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        for size in self.preferred_batch_sizes:
            if not 1 <= size <= self.max_batch_size:
                raise ValueError(
                    f"preferred_batch_size {size} is outside 1..{self.max_batch_size} "
                    "(max_batch_size)"
                )
        if self.max_queue_delay_microseconds < 0:
            raise ValueError("max_queue_delay_microseconds must be >= 0")
        if self.max_batch_requests < 0:
            raise ValueError("max_batch_requests must be >= 0")
        if self.max_batch_tokens < 0:
            raise ValueError("max_batch_tokens must be >= 0")
        if self.priority_levels < 0:
            raise ValueError("priority_levels must be >= 0")
        if self.priority_levels and not 1 <= self.default_priority_level <= self.priority_levels:
            raise ValueError(
                f"default_priority_level {self.default_priority_level} is outside "
                f"1..{self.priority_levels} (priority_levels)"
            )
        for level in self.priority_queues:
            if not 1 <= level <= self.priority_levels:
                raise ValueError(
                    f"priority_queue_policy for level {level}, outside 1..{self.priority_levels}"
                )
        # Frozen means frozen: a caller's dict must not change the policy afterwards.
        object.__setattr__(self, "preferred_batch_sizes", tuple(self.preferred_batch_sizes))
        object.__setattr__(self, "priority_queues", MappingProxyType(dict(self.priority_queues)))

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_microseconds / _US

    def level_for(self, priority: int) -> int:
        """The queue level of a request that asks for ``priority`` (0 = the default level)."""
        if not self.priority_levels:
            return 0  # priorities off: Triton ignores the request's priority
        level = priority or self.default_priority_level
        if not 1 <= level <= self.priority_levels:
            raise InvalidInput(
                f"priority {priority} is outside 1..{self.priority_levels} (0 = the default)"
            )
        return level

    def queue_for(self, level: int) -> QueuePolicy:
        return self.priority_queues.get(level, self.queue)


def policy_from_config(config: mc.ModelConfig, source: str) -> BatchPolicy:
    """The batch policy of a (completed) model config; ``source`` names the file for errors.

    Without ``dynamic_batching`` each request runs alone (Triton's default scheduler); a model
    without a batch dimension (``max_batch_size: 0``) takes one request of one "row" at a time.
    """
    dynamic = config.dynamic_batching if config.HasField("dynamic_batching") else None
    batched = config.max_batch_size > 0
    params = Parameters(config, source)
    tokens = params.integer("max_batch_tokens", 0, minimum=0)
    grouping = params.choice("batch_grouping", "length", _GROUPINGS)
    # Settings only a batching model uses are refused where they would be ignored.
    unused = [key for key in ("max_batch_tokens", "batch_grouping") if params.given(key)]
    if unused and (dynamic is None or not batched):
        needs = "dynamic_batching" if dynamic is None else "max_batch_size > 0"
        raise ConfigError(
            f"{params.where(unused[0])} needs {needs}; without it each request runs alone"
        )
    if dynamic is not None and not batched and dynamic.preferred_batch_size:
        raise ConfigError(
            f"{source}: dynamic_batching.preferred_batch_size needs max_batch_size > 0; a model "
            "without a batch dimension takes one request at a time"
        )
    try:
        if dynamic is None:
            return BatchPolicy(max_batch_size=max(config.max_batch_size, 1), max_batch_requests=1)
        levels = int(dynamic.priority_levels)
        return BatchPolicy(
            max_batch_tokens=tokens,
            group_by_length=grouping == "length",
            max_batch_size=config.max_batch_size if batched else 1,
            preferred_batch_sizes=tuple(dynamic.preferred_batch_size) if batched else (),
            max_queue_delay_microseconds=int(dynamic.max_queue_delay_microseconds),
            max_batch_requests=0 if batched else 1,
            priority_levels=levels,
            default_priority_level=int(dynamic.default_priority_level),
            queue=_queue_policy(dynamic.default_queue_policy, source, "default_queue_policy"),
            priority_queues={
                int(level): _queue_policy(policy, source, f"priority_queue_policy[{level}]")
                for level, policy in dynamic.priority_queue_policy.items()
            },
        )
    except ValueError as exc:
        raise ConfigError(f"{source}: dynamic_batching: {exc}") from None


def _queue_policy(policy: mc.ModelQueuePolicy, source: str, where: str) -> QueuePolicy:
    if policy.timeout_action != mc.ModelQueuePolicy.REJECT:
        raise ConfigError(
            f"{source}: dynamic_batching.{where}.timeout_action DELAY is not supported "
            "by ortserve; use REJECT (the default)"
        )
    return QueuePolicy(
        default_timeout_microseconds=int(policy.default_timeout_microseconds),
        allow_timeout_override=policy.allow_timeout_override,
        max_queue_size=int(policy.max_queue_size),
    )
