"""Builders for the metadata, config and index responses."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from ortserve.datatypes import CONFIG_TO_WIRE
from ortserve.observability.statistics import RESPONSE_OUTCOMES, Duration, VersionStatistics
from ortserve.registry.models import IndexEntry
from ortserve.registry.versions import ServedVersion
from ortserve.repository.config import PLATFORM
from ortserve_client.proto import grpc_service_pb2 as pb
from ortserve_client.proto import model_config_pb2 as mc

SERVER_NAME = "ortserve"


def server_metadata(version: str, extensions: Sequence[str]) -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(name=SERVER_NAME, version=version, extensions=list(extensions))


def model_metadata(served: ServedVersion, versions: Iterable[int]) -> pb.ModelMetadataResponse:
    config = served.config
    batch = [-1] if config.max_batch_size > 0 else []
    response = pb.ModelMetadataResponse(
        name=served.model_name,
        versions=[str(v) for v in sorted(versions)],
        platform=PLATFORM,
    )
    for entry in config.input:
        response.inputs.add(
            name=entry.name,
            datatype=CONFIG_TO_WIRE[entry.data_type],
            shape=batch + list(entry.dims),
        )
    for out in config.output:
        response.outputs.add(
            name=out.name, datatype=CONFIG_TO_WIRE[out.data_type], shape=batch + list(out.dims)
        )
    return response


def model_config(config: mc.ModelConfig) -> pb.ModelConfigResponse:
    return pb.ModelConfigResponse(config=config)


def repository_index(rows: Iterable[IndexEntry], ready_only: bool) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for row in rows:
        if ready_only and row.state.value != "READY":
            continue
        response.models.add(
            name=row.name, version=row.version, state=row.state.value, reason=row.reason
        )
    return response


def _duration(target: pb.StatisticDuration, source: Duration) -> None:
    target.count = source.count
    target.ns = source.ns


def model_statistics(served: Sequence[ServedVersion]) -> pb.ModelStatisticsResponse:
    response = pb.ModelStatisticsResponse()
    for version in served:
        stats: VersionStatistics = version.recorder.statistics
        entry = response.model_stats.add(
            name=version.model_name,
            version=str(version.version),
            last_inference=stats.last_inference_ms,
            inference_count=stats.inference_count,
            execution_count=stats.execution_count,
        )
        infer = entry.inference_stats
        for name in (
            "success",
            "fail",
            "queue",
            "compute_input",
            "compute_infer",
            "compute_output",
        ):
            _duration(getattr(infer, name), getattr(stats, name))
        for index, answered in sorted(stats.responses.items()):
            target = entry.response_stats[str(index)]
            _duration(target.compute_infer, answered.compute_infer)
            for outcome in RESPONSE_OUTCOMES:
                _duration(getattr(target, outcome), getattr(answered, outcome))
        for rows, batch in sorted(stats.batches.items()):
            row = entry.batch_stats.add(batch_size=rows)
            _duration(row.compute_input, batch.compute_input)
            _duration(row.compute_infer, batch.compute_infer)
            _duration(row.compute_output, batch.compute_output)
    return response
