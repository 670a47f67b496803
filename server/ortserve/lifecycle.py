"""The daemon's one state, and the count of the requests it takes in. No I/O, no transport.

The ``Daemon`` (daemon.py) moves the state; the protocol layer reads it through ``StateView``
(ServerReady, ServerLive, the health service), so that protocol/ does not depend on the wiring.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class DaemonState(enum.Enum):
    STARTING = "starting"  # listening, loading the repository: not ready
    READY = "ready"  # serving
    DRAINING = "draining"  # a stop signal came: finishing what was admitted, refusing the rest
    STOPPED = "stopped"  # the server has stopped and the sessions are closed


#: The only moves. A stop signal during start-up goes straight to STOPPED: never ready, so
#: there is no traffic to drain.
TRANSITIONS: dict[DaemonState, frozenset[DaemonState]] = {
    DaemonState.STARTING: frozenset({DaemonState.READY, DaemonState.STOPPED}),
    DaemonState.READY: frozenset({DaemonState.DRAINING}),
    DaemonState.DRAINING: frozenset({DaemonState.STOPPED}),
    DaemonState.STOPPED: frozenset(),
}


class StateView(Protocol):
    """What the protocol layer may read of the daemon's state."""

    @property
    def state(self) -> DaemonState: ...

    @property
    def ready(self) -> bool: ...

    @property
    def live(self) -> bool: ...


class Lifecycle:
    """The daemon's state; only the moves in ``TRANSITIONS`` are allowed (any other is a bug)."""

    def __init__(self) -> None:
        self._state = DaemonState.STARTING
        self._reached = {state: asyncio.Event() for state in DaemonState}
        self._reached[self._state].set()

    @property
    def state(self) -> DaemonState:
        return self._state

    @property
    def ready(self) -> bool:
        """ServerReady and the overall health status: serving, and not yet stopping."""
        return self._state is DaemonState.READY

    @property
    def live(self) -> bool:
        """ServerLive: the process answers (while loading and draining too)."""
        return self._state is not DaemonState.STOPPED

    def advance(self, to: DaemonState) -> None:
        if to not in TRANSITIONS[self._state]:
            raise RuntimeError(f"the daemon cannot go from {self._state.value} to {to.value}")
        self._state = to
        self._reached[to].set()

    async def reached(self, state: DaemonState) -> None:
        """Until the daemon has been in ``state`` (at once if it has already)."""
        await self._reached[state].wait()


class Admission:
    """Every request the data plane takes in, counted in and out: the one place the shutdown
    reads (``admitted=N answered=N``) and waits on. Each admitted request is answered (a result
    or an error) exactly once."""

    def __init__(self) -> None:
        self._open = True
        self.admitted = 0
        self.answered = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def open(self) -> bool:
        return self._open

    @property
    def in_flight(self) -> int:
        return self.admitted - self.answered

    def close(self) -> None:
        """From now on, the data plane refuses new requests (UNAVAILABLE: retried elsewhere)."""
        self._open = False

    @contextmanager
    def counted(self) -> Iterator[None]:
        """One admitted request, from its admission until its answer (or its cancellation)."""
        self.admitted += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.answered += 1
            if self.admitted == self.answered:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Until every admitted request has been answered."""
        await self._idle.wait()
