"""The embedded feedback channel: labels appended to ``<out_dir>/feedback.jsonl`` (what the
scoring service's ``POST /v1/feedback`` writes when the source is not Kafka) read into the
stream beside an embedded source's own messages.

The channel is a log of its own, ``feedback-channel[0]``: a label's offset is the byte
position of its line, and the position after the last whole line read is recorded with
the source's positions (once there is one: a run nobody sent labels to records none), so
a checkpoint covers it and a restore reads on from there (the same exactness as the
source's). One ingest actor reads it (the first); a label reaches its record's scorer by
its key, as every label does. Only whole lines are read (a writer's line in progress
waits for its newline), at most every
:data:`POLL_S` seconds, and a line that is not a JSON object is a dead letter.

The channel does not keep a finite source running: labels appended after the source is
exhausted are read by the next ``--resume``. On several nodes the output folder must be
shared for the channel to reach the ingest actor; Kafka's feedback topic is the
production path.

>>> import tempfile, pathlib
>>> from pipelines.config import SyntheticSourceConfig
>>> from pipelines.sources import open_reader
>>> path = pathlib.Path(tempfile.mkdtemp()) / "feedback.jsonl"
>>> _ = path.write_bytes(b'{"record_id": "r1", "key": "k", "label": true}\\n{"rec')
>>> inner = open_reader(SyntheticSourceConfig(kind="synthetic", n_events=1), [1])
>>> reader = ChannelReader(inner, path, start=0, poll_s=0)
>>> [(m.offset, m.kind, m.payload["record_id"]) for m in reader.read(10)]
[(0, 'feedback', 'r1')]
>>> reader.positions()[CHANNEL]   # the partial line waits
47
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipelines.protocol import SourceMessage
from pipelines.sources.base import SourceReader, decode_json_object

__all__ = ["CHANNEL", "FILE", "POLL_S", "ChannelReader"]

FILE = "feedback.jsonl"
TOPIC = "feedback-channel"
CHANNEL = f"{TOPIC}[0]"
POLL_S = 0.1
"""How often the file is looked at (a stat), at most."""
MAX_READ = 1 << 20
"""Bytes read from the channel per look at most (the rest at the next)."""

_new = tuple.__new__


class ChannelReader:
    """``inner``'s messages, then the labels appended to ``path`` since the last read."""

    def __init__(self, inner: SourceReader, path: Path, *, start: int = 0,
                 poll_s: float = POLL_S) -> None:
        self.inner = inner
        self.name = inner.name
        self.path = path
        self._pos = start
        self._poll_s = poll_s
        self._next_look = 0.0

    def read(self, max_n: int) -> list[SourceMessage]:
        messages = self.inner.read(max_n)
        room = max_n - len(messages)
        if room > 0:
            now = time.monotonic()
            if now >= self._next_look:
                self._next_look = now + self._poll_s
                messages.extend(self._labels(room))
        return messages

    def _labels(self, max_n: int) -> list[SourceMessage]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size <= self._pos:
            return []
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read(min(size - self._pos, MAX_READ))
        out: list[SourceMessage] = []
        at, now = 0, time.time()
        while len(out) < max_n:
            end = data.find(b"\n", at)
            if end < 0:  # a line still being written, or beyond this read
                break
            line = data[at:end]
            offset = self._pos + at
            at = end + 1
            if not line.strip():
                continue
            payload, error = decode_json_object(line)
            out.append(_new(SourceMessage, (TOPIC, 0, offset, "feedback", payload, line,
                                            error, now, None, "")))
        self._pos += at
        if len(out) == max_n:  # more may be waiting: look again at the next read
            self._next_look = 0.0
        return out

    @property
    def exhausted(self) -> bool:
        return self.inner.exhausted

    def positions(self) -> dict[str, int]:
        """The source's, and the channel's once it gave a line (absent: nothing read, so a
        restore reads it from the start; a run without labels on it records nothing)."""
        inner = self.inner.positions()
        return {**inner, CHANNEL: self._pos} if self._pos else inner

    def commit(self, positions: dict[str, int]) -> None:
        self.inner.commit({k: v for k, v in positions.items() if k != CHANNEL})

    def close(self) -> None:
        self.inner.close()
