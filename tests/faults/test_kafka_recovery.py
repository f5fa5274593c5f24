"""Recovery from checkpoints with Kafka: a scorer's worker killed with SIGKILL mid-stream.

The group's commits run ahead of the last checkpoint (they follow the sink's acks), so a
restart must set the group back to the checkpoint's offsets for the restored models to
see every record after it once. The final models must be exactly those River learns
from the same feedback in the same order.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
from river import linear_model, preprocessing

from pipelines.config import SyntheticSourceConfig
from pipelines.ingest import scorer_of
from pipelines.sources import open_reader
from tests.faults.test_supervision import Run, final_models, supervision_log
from tests.kafka_helpers import produce_loans, read_topic

pytestmark = [pytest.mark.kafka, pytest.mark.usefixtures("ray_session")]

N_EVENTS = 30_000


def river_models(n_events: int, n_scorers: int) -> dict[str, dict[str, Any]]:
    """What each scorer must end with: River learning its keys' feedback in log order."""
    src = SyntheticSourceConfig(kind="synthetic", partitions=1, n_events=n_events, seed=7,
                                label_delay_events=5)
    reader = open_reader(src, [0])
    models = [preprocessing.StandardScaler() | linear_model.LogisticRegression()
              for _ in range(n_scorers)]
    features: dict[str, dict[str, float]] = {}
    while not reader.exhausted:
        for m in reader.read(10_000):
            assert m.payload is not None
            if m.kind == "event":
                features[m.payload["record_id"]] = m.payload["features"]
            else:
                s = scorer_of(m.payload["key"], n_scorers)
                models[s].learn_one(features.pop(m.payload["record_id"]), m.payload["label"])
    out = {}
    for s, model in enumerate(models):
        lr, scaler = model["LogisticRegression"], model["StandardScaler"]
        out[f"scorer-{s}"] = {"weights": dict(lr.weights), "intercept": lr.intercept,
                              "means": dict(scaler.means), "vars": dict(scaler.vars)}
    return out


def test_kafka_scorer_killed_restores_checkpoint_and_rewinds_the_group(
        make_kafka_config: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    config = make_kafka_config(
        source={"partitions": 1, "idle_stop_s": 6.0},
        ingest={"n_actors": 1, "batch_size": 200},
        scoring={"n_actors": 2},
        output={"kind": "kafka", "out_dir": str(out)},
        checkpoint={"interval_s": 1.0},
        supervision={"ping_interval_s": 0.5, "ping_timeout_s": 4.0,
                     "scorer": {"backoff_initial_s": 0.1, "backoff_jitter": 0.0}})
    produce_loans(config, N_EVENTS, label_delay_events=5)
    run = Run(config)
    run.until(lambda: run.checkpoints() >= 2 and run.status.get("events", 0) > 3_000,
              "two checkpoints and 3k events", timeout_s=120)
    os.kill(run.pid("scorer-0"), signal.SIGKILL)
    summary = run.result(timeout_s=240)
    assert summary["supervision"]["restarts"] == 1

    predictions = [orjson.loads(m.value)
                   for m in read_topic(config.kafka.bootstrap_servers,
                                       config.kafka.topics.predictions)]
    ids = Counter(p["record_id"] for p in predictions)
    assert set(ids) == {f"loans-7-0-{i}" for i in range(N_EVENTS)}
    restart = next(e for e in supervision_log(out) if e["kind"] == "restart")
    restored = next(e for e in supervision_log(out)
                    if e["kind"] == "checkpoint" and e["checkpoint"] == restart["checkpoint"])
    floor = restored["positions"][f"{config.kafka.topics.events}[0]"]
    offsets = {p["record_id"]: p["offset"] for p in predictions}
    early = [rid for rid, n in ids.items() if n > 1 and offsets[rid] < floor]
    assert not early, f"{len(early)} records predicted twice from before the checkpoint"
    assert sum(n - 1 for n in ids.values()) > 0, "the kill landed after the stream was done"
    assert final_models(out) == river_models(N_EVENTS, 2)
