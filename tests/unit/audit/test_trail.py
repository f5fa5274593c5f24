"""The scorer's side of the audit trail without Ray: rows to segments, and which
segments a checkpoint commits (an abandoned checkpoint's carry over to the next)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from pipelines.audit.trail import AuditRows, AuditStore, SegmentWriter
from pipelines.protocol import Event


def rows_of(rows: AuditRows, start: int, n: int) -> None:
    for i in range(start, start + n):
        e = Event(f"r{i}", f"k{i % 7}", float(i), {"x": float(i)}, 0, i, 0.0, "t")
        rows.trail.append((e, b'{"score":1.0}', "v0", "live", "live", float(i), i))
        rows.training.append((e, True, "v0", "live", i, float(i)))


def test_segments_are_written_once_enough_rows_are_held(tmp_path: Path) -> None:
    store = AuditStore(str(tmp_path))
    writer = SegmentWriter(store, scorer="s", generation=0, rows_per_segment=4000)
    rows = AuditRows()
    rows_of(rows, 0, 400)  # 800 rows: fewer than a chunk, nothing converted yet
    writer.absorb(rows, None)
    assert len(rows) == 800
    rows_of(rows, 400, 1600)  # 4,000 rows held: converted, and a segment of each kind
    writer.absorb(rows, None)
    assert len(rows) == 0
    segments = writer.barrier(rows, None, 1)
    assert sorted(s.kind for s in segments) == ["trail", "training"]
    assert sum(s.rows for s in segments) == 4000
    read = pq.read_table(store.path(next(s.path for s in segments if s.kind == "trail")))
    assert read.column("record_id").to_pylist() == [f"r{i}" for i in range(2000)]
    writer.close()


def test_an_abandoned_checkpoint_s_segments_are_listed_again_until_one_commits(
        tmp_path: Path) -> None:
    writer = SegmentWriter(AuditStore(str(tmp_path)), scorer="s", generation=0,
                           rows_per_segment=25_000)
    rows = AuditRows()
    rows_of(rows, 0, 10)
    first = writer.barrier(rows, None, 1)  # checkpoint 1: abandoned (never committed)
    rows_of(rows, 10, 10)
    second = writer.barrier(rows, None, 2)  # checkpoint 2 lists both barriers' segments
    assert {s.path for s in first} < {s.path for s in second} and len(second) == 4
    writer.committed(2)
    rows_of(rows, 20, 10)
    third = writer.barrier(rows, "ckpt-000002", 3)
    assert len(third) == 2 and not {s.path for s in third} & {s.path for s in second}
    writer.close()
