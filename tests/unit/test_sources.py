"""Sources: partitioned by key, positioned, resumable, deterministic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import FileSourceConfig, SyntheticSourceConfig
from pipelines.ingest import PositionTracker
from pipelines.protocol import SourceMessage
from pipelines.sources import open_reader, partition_of


def drain(reader: Any, max_n: int = 97) -> list[SourceMessage]:
    out: list[SourceMessage] = []
    while not reader.exhausted:
        out.extend(reader.read(max_n))
    return out


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
    full = drain(open_reader(cfg, [0, 1]))
    first = open_reader(cfg, [0, 1])
    head = first.read(50)
    resumed = drain(open_reader(cfg, [0, 1], positions=first.positions()))
    key = lambda m: (m.partition, m.offset, m.kind, m.payload["record_id"])  # noqa: E731
    assert sorted(map(key, head + resumed)) == sorted(map(key, full))


def test_synthetic_rate_limit_bounds_events_per_read() -> None:
    cfg = SyntheticSourceConfig(kind="synthetic", partitions=1, n_events=None, rate_per_s=100)
    reader = open_reader(cfg, [0])
    assert sum(m.kind == "event" for m in reader.read(10_000)) <= 5  # 50 ms bucket at 100/s


def _file_cfg(path: Path, **kw: Any) -> FileSourceConfig:
    return FileSourceConfig(kind="file", path=path, **kw)


def test_file_reader_partitions_by_key_like_kafka_and_keeps_bad_lines(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    rows = [b'{"record_id": "r%d", "key": "k%d", "v": %d}' % (i, i % 13, i) for i in range(300)]
    rows[10] = b"{not json"
    path.write_bytes(b"\n".join(rows) + b"\n")
    cfg = _file_cfg(path, partitions=3)
    seen = []
    for p in range(3):
        msgs = drain(open_reader(cfg, [p]))
        for m in msgs:
            if m.payload is not None:
                assert partition_of(m.payload["key"], 3) == p
            else:
                assert m.error.startswith("invalid JSON") and m.raw == b"{not json"
        seen.extend(msgs)
    assert len(seen) == 300


def test_file_reader_csv_converts_numbers_and_splits_label(tmp_path: Path) -> None:
    path = tmp_path / "e.csv"
    path.write_text("record_id,key,event_time,age,city,label\nr1,k1,5.5,42,Paris,1\n"
                    "r2,k2,6.0,,Lyon,0\nr3,k3,7.0,1,2\n")
    msgs = drain(open_reader(_file_cfg(path, partitions=1, label_column="label"), [0]))
    events = [m for m in msgs if m.kind == "event"]
    feedback = [m for m in msgs if m.kind == "feedback"]
    assert events[0].payload == {"record_id": "r1", "key": "k1", "event_time": 5.5,
                                 "features": {"age": 42, "city": "Paris"}}
    assert events[1].payload["features"] == {"age": None, "city": "Lyon"}
    assert events[2].error == "row has 5 fields, the header has 6"
    assert [f.payload["label"] for f in feedback] == [1, 0]


def test_file_reader_follow_waits_for_appended_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "tail.jsonl"
    path.write_bytes(b'{"record_id": "a", "key": "k"}\n{"record_id": "b"')
    reader = open_reader(_file_cfg(path, partitions=1, follow=True), [0])
    assert [m.payload["record_id"] for m in reader.read(10)] == ["a"]
    assert reader.read(10) == [] and not reader.exhausted
    with open(path, "ab") as f:
        f.write(b', "key": "k"}\n')
    assert [m.payload["record_id"] for m in reader.read(10)] == ["b"]


def test_position_tracker_commits_only_after_every_older_unit_is_acked() -> None:
    t = PositionTracker()
    t.chunk_read(0, {0: 5})
    t.chunk_read(1, {0: 9})
    t.unit_sent("u0", 0)
    assert t.committable(oldest_unsent=1) is None  # u0 not written yet
    t.unit_acked("u0")
    assert t.committable(oldest_unsent=1) == {0: 5}  # chunk 1 still in a buffer
    assert t.committable(oldest_unsent=None) == {0: 9}
    assert t.committed == {0: 9}


def test_position_tracker_forgets_revoked_partitions_never_commits_them_again() -> None:
    t = PositionTracker()
    t.chunk_read(0, {"ev[0]": 100, "ev[1]": 50})
    t.unit_sent("u", 0)
    t.unit_acked("u")
    assert t.committable(None) == {"ev[0]": 100, "ev[1]": 50}
    t.forget({"ev[1]"})  # ev[1] went to another member, which moves it on to 80...
    t.chunk_read(1, {"ev[0]": 120})
    t.committable(None)
    # ...so if it comes back, 50 must not be committed over 80.
    assert t.committed == {"ev[0]": 120}
