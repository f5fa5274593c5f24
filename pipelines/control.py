"""The control stream: where model lifecycle commands travel to a running pipeline.

A channel is an ordered log of raw command messages with positions, like a one-partition
topic: the CLI (or any producer) ``send``\\ s, the Supervisor ``read``\\ s what is new
since its position and records that position in each checkpoint, so a resumed run
continues after the last command it applied.

- :class:`FileControl`: the embedded channel, ``<out_dir>/control.jsonl``, one JSON
  command per line; a position is a byte offset. Writers append whole lines under an
  exclusive lock, so concurrent senders never interleave.
- ``KafkaControl`` (``pipelines.control_kafka``): the ``kafka.topics.models`` topic.

>>> import tempfile, pathlib
>>> ch = FileControl(pathlib.Path(tempfile.mkdtemp()) / "control.jsonl")
>>> ch.seek(None)                      # a new run starts after what is already there
>>> ch.send(b'{"op": "rollback"}')
>>> ch.read()
[(0, b'{"op": "rollback"}')]
>>> ch.read(), ch.position
([], 19)
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Protocol

from pipelines.config import PipelineConfig

__all__ = ["ControlChannel", "FileControl", "channel_name", "open_control"]


class ControlChannel(Protocol):
    position: int
    """The position of the next message :meth:`read` returns."""

    def send(self, message: bytes) -> None: ...

    def read(self) -> list[tuple[int, bytes]]:
        """The messages after :attr:`position` (each with its position); advances it."""
        ...

    def seek(self, position: int | None) -> None:
        """Continue reading at ``position``; ``None``: at the end (what is there is old)."""
        ...

    def close(self) -> None: ...


class FileControl:
    """The embedded control channel: an append-only JSON-lines file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.position = 0

    def send(self, message: bytes) -> None:
        if b"\n" in message:
            raise ValueError("a control message is one line")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.write(message + b"\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def read(self) -> list[tuple[int, bytes]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.position)
                data = f.read()
        except FileNotFoundError:
            return []
        out = []
        start = 0
        while (end := data.find(b"\n", start)) >= 0:  # a line still being written waits
            line = data[start:end].strip()
            if line:
                out.append((self.position + start, line))
            start = end + 1
        self.position += start
        return out

    def seek(self, position: int | None) -> None:
        if position is None:
            try:
                position = self.path.stat().st_size
            except FileNotFoundError:
                position = 0
        self.position = position

    def close(self) -> None:
        pass


def open_control(config: PipelineConfig, *, out_dir: Path | None = None,
                 client_id: str = "riffle-control") -> ControlChannel:
    """The control channel of ``config``'s pipeline (see ``ControlConfig.kind``); the
    embedded one lives in the run's output folder (``out_dir``, default the config's)."""
    if config.control_kind == "kafka":
        from pipelines.control_kafka import KafkaControl

        return KafkaControl(config.kafka, client_id=client_id)
    return FileControl((out_dir or config.out_dir) / "control.jsonl")


def channel_name(config: PipelineConfig, position: int, *, out_dir: Path | None = None) -> str:
    """Where a command was read, as the registry's command log records it."""
    if config.control_kind == "kafka":
        return f"kafka:{config.kafka.topics.models}[0]@{position}"
    return f"file:{(out_dir or config.out_dir) / 'control.jsonl'}@{position}"
