"""The file source: partitioned by key like a topic, positioned, resumable; bad lines kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import FileSourceConfig
from pipelines.protocol import SourceMessage
from pipelines.sources import FileReader, open_reader, partition_of


def drain(reader: Any, max_n: int = 97) -> list[SourceMessage]:
    out: list[SourceMessage] = []
    while not reader.exhausted:
        out.extend(reader.read(max_n))
    return out


def assert_resume_continues(cfg: Any, partitions: list[int], n_first: int) -> None:
    """Read ``n_first`` messages, resume a new reader from the first's positions: together
    they give exactly the messages of one uninterrupted read (same offsets, same records)."""
    full = drain(open_reader(cfg, partitions))
    first = open_reader(cfg, partitions)
    head = first.read(n_first)
    rest = drain(open_reader(cfg, partitions, positions=first.positions()))
    key = lambda m: (m.partition, m.offset, m.kind, m.payload["record_id"])  # noqa: E731
    assert sorted(map(key, head + rest)) == sorted(map(key, full))


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


def test_file_reader_block_reads_equal_line_reads(tmp_path: Path) -> None:
    # Lines straddle the reader's blocks; CRLF ends, a blank line, and a last line with no
    # newline: every line is one message, in order, with its raw bytes.
    rows = [f'{{"record_id": "r{i}", "key": "k{i % 7}", "x": {i}}}' for i in range(5000)]
    rows[10] = ""
    data = "\r\n".join(rows[:100]) + "\r\n" + "\n".join(rows[100:])
    path = tmp_path / "big.jsonl"
    path.write_text(data)
    reader = FileReader(_file_cfg(path, partitions=1), [0])
    reader._BLOCK = 4096  # many blocks, so lines cross their ends
    msgs = drain(reader, max_n=333)
    assert [m.offset for m in msgs] == list(range(5000))
    assert msgs[10].error == "empty line" and msgs[10].payload is None
    assert msgs[99].raw == rows[99].encode() and msgs[4999].payload["features"] == {"x": 4999}


def test_file_reader_resume_skips_what_came_before_the_positions(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text("".join(f'{{"record_id": "r{i}", "key": "k{i}", "label": 1}}\n'
                            for i in range(300)))
    cfg = _file_cfg(path, partitions=2, label_column="label", label_delay_events=3)
    assert_resume_continues(cfg, [0, 1], n_first=40)
