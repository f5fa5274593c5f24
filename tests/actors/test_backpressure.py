"""A slow scorer slows reading: in-flight batches stay bounded, memory does not grow."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ray

from actors.ingest import IngestActor
from actors.sink import SinkActor
from pipelines.protocol import SinkBatch, decode_batch
from pipelines.scoring import ScorerCore


@ray.remote(num_cpus=0)
class SlowScorer:
    """The real scorer core, made slow: 30 ms per batch (a test of the ingest's logic)."""

    def __init__(self, config: Any) -> None:
        self._core = ScorerCore(config, name="slow")

    def ready(self) -> str:
        return "slow"

    def process(self, data: bytes, generation: int = 0) -> SinkBatch:
        time.sleep(0.03)
        return self._core.process(decode_batch(data))


def test_ingest_slow_scorer_in_flight_bounded_and_reading_held_back(
    make_config: Any, tmp_path: Path
) -> None:
    config = make_config(source={"n_events": 20_000, "partitions": 2},
                         ingest={"batch_size": 50, "max_in_flight": 3, "linger_s": 0.001})
    sink = SinkActor.options(num_cpus=0).remote(config, tmp_path / "out")
    scorer = SlowScorer.remote(config.scoring)
    ingest = IngestActor.options(num_cpus=0).remote(
        config, name="ingest-bp", partitions=[0, 1], task="binary", scorers=[scorer], sink=sink)
    ray.get([sink.ready.remote(), scorer.ready.remote(), ingest.ready.remote()])
    run = ingest.run.remote()
    samples = []
    deadline = time.monotonic() + 4.0
    while time.monotonic() < deadline:
        samples.append(ray.get(ingest.stats.remote()))
    ray.get(ingest.stop.remote())
    final = ray.get(run)

    # Never more than max_in_flight batches unwritten...
    assert final["in_flight_peak"] <= 3
    # ...so the events read but not yet written stay under a constant: the batches in
    # flight, plus one being sent, the buffer and one read (a read of 50 events brings
    # their feedback too), whatever the length of the stream.
    bound = (3 + 1) * 50 + 50 + 2 * 50
    unwritten = [s["events"] - s["acked"]["predictions"] for s in samples]
    assert max(unwritten) <= bound, unwritten
    # With 30 ms per 50-record batch the source (20k events) could not have been drained:
    # the slow scorer held reading back.
    assert final["events"] < 20_000
    # And the clean stop still drained everything that was read.
    assert final["acked"]["predictions"] == final["events"]
    ray.kill(ingest)
    ray.kill(scorer)
    ray.kill(sink)
