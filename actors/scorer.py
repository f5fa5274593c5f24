"""ScorerActor: holds River models for a range of keys; scores, waits for labels, learns."""

from __future__ import annotations

from typing import Any

import ray

from pipelines.config import ScoringConfig
from pipelines.protocol import SinkBatch, decode_batch
from pipelines.scoring import ScorerCore


@ray.remote(max_restarts=0)  # the Supervisor owns restarts
class ScorerActor:
    def __init__(self, config: ScoringConfig, *, name: str, metrics_window: int) -> None:
        self._core = ScorerCore(config, name=name, metrics_window=metrics_window)

    def ready(self) -> str:
        return self._core.name

    def process(self, data: bytes) -> SinkBatch:
        """An encoded Batch: events scored, feedback learned, in arrival order."""
        return self._core.process(decode_batch(data))

    def stats(self) -> dict[str, Any]:
        return self._core.stats()
