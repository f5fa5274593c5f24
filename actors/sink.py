"""SinkActor: writes predictions and dead letters; its acks say what is safely written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray

from pipelines.allocator import tune_gc
from pipelines.config import PipelineConfig
from pipelines.monitoring.sink import SinkTelemetry
from pipelines.protocol import Ack, SinkBatch
from pipelines.sinks import FileSink, KafkaSink


# Writes run one at a time, in order; pings are answered beside them: a write may wait
# for the broker (a Kafka outage) for as long as the producer's delivery timeout without
# the sink counting as hung (a write that never ends raises when the flush times out).
@ray.remote(max_restarts=0, concurrency_groups={"health": 1})
class SinkActor:
    def __init__(self, config: PipelineConfig, out_dir: Path, *, append: bool = False) -> None:
        """``append``: continue the output files of an earlier run (after a restart or
        ``--resume``) instead of starting them anew."""
        self._sink: FileSink | KafkaSink = (
            KafkaSink(config.kafka, client_id=f"{config.name}-sink")
            if config.output.kind == "kafka" else FileSink(out_dir, append=append))
        kafka = config.output.kind == "kafka"
        self._telemetry = SinkTelemetry(
            config.telemetry, pipeline=config.name, system="kafka" if kafka else "file",
            destination=config.kafka.topics.predictions if kafka else "predictions.jsonl",
            counts=lambda: self._sink.counts) if config.telemetry.active else None
        tune_gc()  # the imports out of the collector's sight (pipelines.allocator)

    @ray.method(concurrency_group="health")
    def ready(self) -> str:
        return "sink"

    @ray.method(concurrency_group="health")
    def pid(self) -> int:
        return os.getpid()

    @ray.method(concurrency_group="health")
    def telemetry(self, flush: bool = False) -> list[Any]:
        """This actor's metrics now (``flush``: the run ends, exporters send what they hold)."""
        return self._telemetry.snapshot(flush=flush) if self._telemetry is not None else []

    def write(self, batch: SinkBatch) -> Ack:
        if self._telemetry is None:
            return self._sink.write(batch)
        return self._telemetry.write(batch, self._sink.write)

    def stats(self) -> dict[str, Any]:
        return self._sink.stats()

    def recent_latency(self) -> dict[str, Any]:
        """End-to-end latency quantiles since the last call (the report's time series)."""
        return self._sink.latency.take_recent()

    def reopen(self) -> None:
        """The output files were rewritten beside this sink (``riffle forget``)."""
        self._sink.reopen()

    def close(self) -> dict[str, Any]:
        self._sink.close()
        return self._sink.stats()
