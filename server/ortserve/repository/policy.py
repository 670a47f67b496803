"""Triton's version policy: which of a model's version folders are served."""

from __future__ import annotations

from collections.abc import Iterable

from ortserve_client.proto import model_config_pb2 as mc


def served_versions(policy: mc.ModelVersionPolicy, available: Iterable[int]) -> list[int]:
    """The versions to serve, newest first. Default policy: ``latest { num_versions: 1 }``."""
    newest_first = sorted(set(available), reverse=True)
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return newest_first
    if choice == "specific":
        wanted = set(policy.specific.versions)
        return [v for v in newest_first if v in wanted]
    count = policy.latest.num_versions if choice == "latest" else 1
    return newest_first[: max(count, 1)]
