"""Shared fixtures: factories for configs and data files, and the session's Ray."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipelines.config import PipelineConfig
from tests.postgres_db import postgres_url  # noqa: F401


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., PipelineConfig]:
    """Factory: a validated PipelineConfig from nested overrides of a small default."""

    def make(**over: Any) -> PipelineConfig:
        base = {
            "name": "test",
            "source": {"kind": "synthetic", "partitions": 1, "n_events": 1000, "seed": 7},
            "ingest": {"n_actors": 1, "batch_size": 100, "num_cpus": 0},
            "scoring": {"n_actors": 1, "num_cpus": 0},
            "output": {"out_dir": str(tmp_path / "out")},
        }
        if over.get("source", {}).get("kind", "synthetic") != "synthetic":
            base.pop("source")  # another kind of source: its own fields only
        return PipelineConfig.model_validate(_merge(base, over))

    return make


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[str, list[Any]], Path]:
    """Factory: write rows (dicts, or raw str/bytes lines as they are) to a JSONL file."""

    def write(name: str, rows: list[Any]) -> Path:
        path = tmp_path / name
        with open(path, "wb") as f:
            for row in rows:
                if isinstance(row, bytes):
                    f.write(row + b"\n")
                elif isinstance(row, str):
                    f.write(row.encode() + b"\n")
                else:
                    f.write(orjson.dumps(row) + b"\n")
        return path

    return write


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One local Ray for the whole test session (2 CPUs, no dashboard)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """A real Kafka broker for the session: RIFFLE_KAFKA_BOOTSTRAP if one answers there,
    else the project's own (scripts/kafka.sh), stopped at the end. Never skipped: if no
    broker can start, the tests that need one fail with the tail of its log."""
    from tests.kafka_broker import ensure_broker

    address, stop = ensure_broker()
    try:
        yield address
    finally:
        stop()


@pytest.fixture
def make_kafka_config(make_config: Callable[..., PipelineConfig], kafka_bootstrap: str
                      ) -> Callable[..., PipelineConfig]:
    """Factory: a Kafka-in, Kafka-out pipeline on topics and a group of its own."""
    import uuid

    def make(**over: Any) -> PipelineConfig:
        tag = uuid.uuid4().hex[:10]
        kafka = {
            "bootstrap_servers": kafka_bootstrap,
            "group_id": f"riffle-test-{tag}",
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "topics": {name: f"t-{tag}-{name}" for name in
                       ("events", "feedback", "predictions", "dead_letters", "models",
                        "shadow")},
        }
        base: dict[str, Any] = {
            "source": {"kind": "kafka", "partitions": 4, "idle_stop_s": 8.0},
            "output": {"kind": "kafka"},
            "kafka": kafka,
        }
        return make_config(**_merge(base, over))

    return make
