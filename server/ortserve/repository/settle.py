"""Whether a changed version folder is complete enough to load: the settle period.

A version folder is taken as complete when it holds a ``READY`` file, or when nothing in it has
changed for the settle period (``--settle-seconds``, default 1 s) and its files looked the same
at two looks ``recheck`` apart. A folder published by one atomic rename has no writes of its
own, so it passes after the short recheck alone; a slow ``cp -r`` keeps resetting the settle
period until it is done; a folder renamed into place whole (``arrived``) is complete at once.

The watcher tells the tracker what happened (``touch``, ``arrived``, ``forget``); the scan asks
it (``check``) and tells it what is spent: a version that loaded (``loaded``), a folder that is
gone (``keep_only``, ``forget_model``). So it holds entries only for folders still in question.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class _Seen:
    fingerprint: str
    since: float


class SettleTracker:
    """Decides when a changed version folder is complete enough to load."""

    def __init__(
        self,
        settle_s: float,
        recheck_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settle_s = settle_s
        self._recheck_s = min(recheck_s, settle_s) if settle_s > 0 else 0.0
        self._clock = clock
        self._activity: dict[tuple[str, int], float] = {}
        self._seen: dict[tuple[str, int], _Seen] = {}
        self._arrived: set[tuple[str, int]] = set()

    def touch(self, model: str, version: int) -> None:
        """A file inside the version folder was written, created or removed."""
        self._activity[(model, version)] = self._clock()
        self._arrived.discard((model, version))

    def arrived(self, model: str, version: int) -> None:
        """The version folder was renamed into place whole: complete until written to again."""
        self._arrived.add((model, version))

    def check(self, model: str, version: int, fingerprint: str, ready: bool = False) -> float:
        """0 when the folder may be loaded now, else the seconds to wait before asking again.
        ``ready``: the folder holds a READY marker."""
        key = (model, version)
        if ready or key in self._arrived or self.settle_s <= 0:
            return 0.0
        now = self._clock()
        last = self._activity.get(key)
        if last is not None:
            if now - last < self.settle_s:
                return self.settle_s - (now - last)
            del self._activity[key]  # older than the settle period: it no longer holds a load
        seen = self._seen.get(key)
        if seen is None or seen.fingerprint != fingerprint:
            self._seen[key] = _Seen(fingerprint, now)
            return self._recheck_s
        waited = now - seen.since
        return 0.0 if waited >= self._recheck_s else self._recheck_s - waited

    def loaded(self, model: str, version: int) -> None:
        """The version loaded from its folder: what was seen of it is spent. A write within the
        settle period is kept: it may be the start of the next change, still being copied."""
        key = (model, version)
        self._seen.pop(key, None)
        self._arrived.discard(key)
        last = self._activity.get(key)
        if last is not None and self._clock() - last >= self.settle_s:
            del self._activity[key]

    def forget(self, model: str, version: int) -> None:
        """The version folder went: what was known of it no longer applies to a new one."""
        self._activity.pop((model, version), None)
        self._seen.pop((model, version), None)
        self._arrived.discard((model, version))

    def keep_only(self, model: str, versions: Iterable[int]) -> None:
        """Forget the folders of ``model`` other than ``versions`` (those still on disk)."""
        on_disk = set(versions)
        for key in self.tracking():
            if key[0] == model and key[1] not in on_disk:
                self.forget(*key)

    def forget_model(self, model: str) -> None:
        """The model folder went, and with it every version folder."""
        self.keep_only(model, ())

    def tracking(self) -> set[tuple[str, int]]:
        """The (model, version) folders the tracker holds anything about."""
        return set(self._activity) | set(self._seen) | self._arrived
