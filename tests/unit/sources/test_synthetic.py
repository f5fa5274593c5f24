"""The synthetic source: partitioned by key, positioned, resumable, deterministic."""

from __future__ import annotations

from pipelines.config import SyntheticSourceConfig
from pipelines.sources import open_reader, partition_of
from tests.unit.sources.test_file import assert_resume_continues, drain


def test_synthetic_partitions_hold_only_their_keys_and_split_all_events() -> None:
    cfg = SyntheticSourceConfig(kind="synthetic", partitions=4, n_events=1000, n_keys=300)
    total = 0
    for p in range(4):
        msgs = drain(open_reader(cfg, [p]))
        events = [m for m in msgs if m.kind == "event"]
        assert all(partition_of(m.payload["key"], 4) == p for m in events)
        assert [m.offset for m in msgs] == list(range(len(msgs)))
        total += len(events)
    assert total == 1000


def test_synthetic_every_event_gets_exactly_one_label_after_its_delay() -> None:
    cfg = SyntheticSourceConfig(kind="synthetic", partitions=1, n_events=200,
                                label_delay_events=7)
    msgs = drain(open_reader(cfg, [0]))
    seen_events: list[str] = []
    labels = []
    for m in msgs:
        if m.kind == "event":
            seen_events.append(m.payload["record_id"])
        else:
            rid = m.payload["record_id"]
            labels.append(rid)
            idx = seen_events.index(rid)
            # released after 7 further events, or at the end of the stream
            assert len(seen_events) - 1 - idx >= 7 or len(seen_events) == 200
    assert sorted(labels) == sorted(seen_events)


def test_synthetic_resume_from_positions_continues_identically() -> None:
    cfg = SyntheticSourceConfig(kind="synthetic", partitions=2, n_events=400,
                                label_delay_events=3)
    assert_resume_continues(cfg, [0, 1], n_first=50)


def test_synthetic_rate_limit_bounds_events_per_read() -> None:
    cfg = SyntheticSourceConfig(kind="synthetic", partitions=1, n_events=None, rate_per_s=100)
    reader = open_reader(cfg, [0])
    assert sum(m.kind == "event" for m in reader.read(10_000)) <= 5  # 50 ms bucket at 100/s
