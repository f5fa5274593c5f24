"""Replay of a JSONL or CSV file of flat rows, partitioned by ``key`` like a topic.

Every ingest actor reads the file and keeps the lines of the partitions it owns; a
line whose key cannot be read goes to partition ``line_number % partitions`` so that it
still has exactly one position (and becomes one dead letter).
"""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import IO, Any

import orjson

from pipelines.config import FileSourceConfig
from pipelines.errors import SourceError
from pipelines.protocol import SourceMessage
from pipelines.sources.base import (
    PartitionLog,
    RateLimiter,
    decode_json_object,
    partition_of,
)

__all__ = ["FileReader", "split_row"]

_ABSENT: Any = object()


def split_row(
    row: dict[str, Any], cfg: FileSourceConfig
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A flat row as ``(event payload, feedback payload or None)``; takes ``row`` over.

    Columns other than id, key, time and label are features (or, with a feature
    list, unknown fields that validation rejects).

    >>> cfg = FileSourceConfig(kind="file", path="x.jsonl", label_column="y")
    >>> event, feedback = split_row({"record_id": "r1", "key": "k", "a b": 1.5, "y": True}, cfg)
    >>> event
    {'record_id': 'r1', 'key': 'k', 'features': {'a b': 1.5}}
    >>> feedback
    {'record_id': 'r1', 'key': 'k', 'label': True}
    """
    # The row is taken over: its reserved columns are popped off and, without a feature
    # list, what remains is the features dict itself (no copy: this runs for every line).
    event: dict[str, Any] = {}
    record_id = row.pop(cfg.id_column, _ABSENT)
    if record_id is not _ABSENT:
        event["record_id"] = record_id
    key = row.pop(cfg.key_column, _ABSENT)
    if key is not _ABSENT:
        event["key"] = key
    time_col = cfg.time_column
    event_time = row.pop(time_col, _ABSENT) if time_col is not None else _ABSENT
    if event_time is not _ABSENT:
        event["event_time"] = event_time
    feedback: dict[str, Any] | None = None
    if cfg.label_column is not None:
        label = row.pop(cfg.label_column, None)
        # Only a row that names its record can produce feedback; an unlabeled row has none.
        if label is not None and isinstance(record_id, str | int):
            feedback = {"record_id": record_id}
            if key is not _ABSENT:
                feedback["key"] = key
            if event_time is not _ABSENT:
                feedback["event_time"] = event_time
            feedback["label"] = label
    if cfg.features is None:
        event["features"] = row
    else:
        event["features"] = {f: row.pop(f) for f in cfg.features if f in row}
        event.update(row)  # unknown columns: validation names them
    return event, feedback


def _csv_value(text: str) -> Any:
    if text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


class FileReader:
    """Reads the owned partitions of a JSONL or CSV file, in line order.

    The file is read in blocks and split into lines at once (a line-by-line read with
    ``tell()`` cost more than scoring the line); in follow mode a partial last line
    waits in memory for its end.
    """

    _BLOCK = 1 << 20

    def __init__(self, cfg: FileSourceConfig, partitions: list[int],
                 positions: dict[str, int] | None = None) -> None:
        positions = positions or {}
        self.name = f"file:{cfg.path.name}"
        self._cfg = cfg
        self._csv = cfg.file_format == "csv"
        self._logs = {p: PartitionLog(p, topic=self.name, delay_events=cfg.label_delay_events,
                                      delay_s=cfg.label_delay_s,
                                      start=positions.get(f"{self.name}[{p}]", 0))
                      for p in partitions}
        try:
            self._file: IO[bytes] = open(cfg.path, "rb")
        except OSError as e:
            raise SourceError(f"{cfg.path}: cannot open: {e.strerror}") from None
        self._line_no = 0
        self._header: list[str] | None = None
        self._eof = False
        self._lines: list[bytes] = []
        self._next = 0
        self._partial = b""
        self._limiter = RateLimiter(
            cfg.rate_per_s * len(partitions) / cfg.partitions if cfg.rate_per_s else None)
        if not cfg.follow:
            self._catch_up()

    def _parse(self, line: bytes) -> tuple[dict[str, Any] | None, str | None]:
        if not line.strip():
            return None, "empty line"
        if self._csv:
            try:
                fields = next(csv.reader([line.decode("utf-8")]))
            except UnicodeDecodeError:
                return None, "not UTF-8"
            assert self._header is not None
            if len(fields) != len(self._header):
                return None, f"row has {len(fields)} fields, the header has {len(self._header)}"
            return {h: _csv_value(v) for h, v in zip(self._header, fields, strict=True)}, None
        return decode_json_object(line)

    def _take_lines(self, max_n: int) -> list[bytes]:
        """Up to ``max_n`` complete lines (without their end of line); [] when none is."""
        if self._next >= len(self._lines):
            block = self._file.read(self._BLOCK)
            if not block:
                if self._partial and not self._cfg.follow:  # a last line with no newline
                    self._lines, self._next, self._partial = [self._partial], 0, b""
                else:
                    return []
            else:
                lines = (self._partial + block).split(b"\n")
                self._partial = lines.pop()
                self._lines, self._next = lines, 0
        start = self._next
        self._next = end = min(start + max_n, len(self._lines))
        return self._lines[start:end]

    def read(self, max_n: int) -> list[SourceMessage]:
        now = time.time()
        budget = self._limiter.allowance(max_n)
        while budget > 0 and not self._eof:
            lines = self._take_lines(budget)
            if not lines:
                if not self._cfg.follow:
                    self._finish()
                break
            self._consume(lines, now)
            budget -= len(lines)
        out: list[SourceMessage] = []
        for log in self._logs.values():
            if log.delay_s:
                log.release(now)
            out.extend(log.take(log.buffered))
        return out

    def _finish(self) -> None:
        self._eof = True
        for log in self._logs.values():
            log.finish()

    def _consume(self, lines: list[bytes], now: float) -> None:
        """Append each line, as an event and its later feedback, to its partition's log."""
        cfg = self._cfg
        if self._csv or cfg.features is not None:
            for line in lines:
                self._consume_slow(line, now)
            return
        logs, n_parts, line_no = self._logs, cfg.partitions, self._line_no
        one = next(iter(logs.values())) if n_parts == 1 and len(logs) == 1 else None
        key_col = cfg.key_column
        loads, decode_error = orjson.loads, orjson.JSONDecodeError
        for line in lines:
            if line[-1:] == b"\r":
                line = line[:-1]
            line_no += 1
            try:
                row = loads(line)
            except decode_error:
                row = None
            if type(row) is not dict:
                self._line_no = line_no - 1
                self._consume_slow(line, now)
                continue
            if one is not None:
                log = one
            else:
                key = row.get(key_col)
                part = (partition_of(key if type(key) is str else str(key), n_parts)
                        if isinstance(key, str | int) else (line_no - 1) % n_parts)
                log = logs.get(part)  # type: ignore[assignment]
                if log is None:
                    continue
            event, feedback = split_row(row, cfg)
            log.append_event(event, feedback=feedback, now=now, raw=line)
        self._line_no = line_no

    def _consume_slow(self, line: bytes, now: float) -> None:
        """One line of a CSV file, of a file with a feature list, or that is not a JSON
        object (it becomes a dead letter at its position)."""
        if self._csv and self._header is None:
            self._header = next(csv.reader([line.decode("utf-8", "replace")]))
            return
        line_no = self._line_no
        self._line_no += 1
        row, error = self._parse(line)
        key = row.get(self._cfg.key_column) if row is not None else None
        n_parts = self._cfg.partitions
        part = (partition_of(str(key), n_parts) if isinstance(key, str | int)
                else line_no % n_parts)
        target = self._logs.get(part)
        if target is None:
            return
        if row is None:
            target.append_event(None, feedback=None, now=now, raw=line, error=error)
        else:
            event, feedback = split_row(row, self._cfg)
            target.append_event(event, feedback=feedback, now=now, raw=line)

    def _catch_up(self) -> None:
        """Resuming: go through what comes before the resume positions at full speed (the
        logs drop it), so that the rate limit and the first read apply to new messages."""
        now = time.time()
        while not self._eof and any(log.next_offset < log.start for log in self._logs.values()):
            lines = self._take_lines(1000)
            if not lines:
                self._finish()
                break
            self._consume(lines, now)

    @property
    def exhausted(self) -> bool:
        return self._eof and not any(log.buffered for log in self._logs.values())

    def positions(self) -> dict[str, int]:
        return {log.name: log.position for log in self._logs.values()}

    def commit(self, positions: dict[str, int]) -> None:
        """Nothing to do: embedded positions live in checkpoints."""

    def close(self) -> None:
        self._file.close()


def check_readable(path: Path) -> None:
    """Fail early, with one line, when a source file cannot be read."""
    if not path.is_file():
        raise SourceError(f"{path}: no such file")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise SourceError(f"{path}: cannot open: {e.strerror}") from None
