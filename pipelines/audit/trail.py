"""The audit trail (every decision) and the training log (every label learned), in
Parquet segments committed with the checkpoint that covers them.

A scorer keeps one row per scored record (live and shadow arms) and one row per label
an arm learned, as plain tuples on the hot path (:class:`AuditRows`). Its shell turns
them into Parquet segments under ``<checkpoint store>/audit/`` (:class:`SegmentWriter`,
off the scoring thread) and lists the segments written since the last committed
checkpoint in its checkpoint part. The Supervisor writes them into the manifest, so a
segment is committed exactly when the checkpoint is, and then indexes them under
``audit/commits/`` (an index that outlives pruned checkpoints). After a failure the
pipeline replays from the last committed checkpoint and the replay writes its rows
anew; the segments written after that checkpoint were never committed and are
discarded. So the committed segments hold each record exactly once, though the output
stream is at-least-once. Readers (:mod:`pipelines.audit.query`) only ever read
committed segments.

Columns that hold values of any JSON type are JSON text: the features, the label, and
``output``, the prediction record exactly as it was emitted (its score, prediction,
version, arm and times; the views of :mod:`~pipelines.audit.query` take ``score`` and
``prediction`` out of it). Keeping the emitted bytes costs the hot path nothing and
answers "what did it say" to the byte.

>>> import tempfile
>>> store = AuditStore(tempfile.mkdtemp())
>>> rows = AuditRows()
>>> from pipelines.protocol import Event
>>> e = Event("r1", "k1", 10.0, {"age": 30.0}, 0, 7, 0.0, "loans")
>>> rows.trail.append((e, b'{"score":{"true":0.8}}', "p/v1", "live", "live", 11.0, 0))
>>> seg = store.write_segment("trail", trail_table(rows.take_trail(), "scorer-0", None),
...                           scorer="scorer-0", generation=0)
>>> seg.rows, seg.path.startswith("audit/trail/scorer-0/")
(1, True)
>>> store.committed_segments("trail")
[]
>>> store.commit_index("ckpt-000001", 1, [seg])
>>> [s.path for s in store.committed_segments("trail")] == [seg.path]
True
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from operator import itemgetter
from typing import Any, Literal, NamedTuple

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pyarrow import fs
from pydantic import BaseModel, ConfigDict

from pipelines.storage import resolve

__all__ = ["TRAIL", "TRAINING", "AuditRows", "AuditStore", "Segment", "SegmentWriter",
           "trail_table", "training_table"]

Kind = Literal["trail", "training"]

TRAIL = pa.schema([
    ("record_id", pa.string()), ("key", pa.string()), ("topic", pa.string()),
    ("partition", pa.int32()), ("offset", pa.int64()), ("event_time", pa.float64()),
    ("scored_at", pa.float64()), ("model_version", pa.string()), ("arm", pa.string()),
    ("role", pa.string()), ("checkpoint", pa.string()), ("scorer", pa.string()),
    ("features", pa.string()), ("output", pa.string()), ("trace_id", pa.string()),
    ("examples", pa.int64()),
])
"""One row per scored record and arm: what the model saw, what it said, which version.
``checkpoint``: the committed checkpoint the scoring model continued from; ``examples``:
how many examples the scorer's arms had learned before (the training log's rows of this
scorer with ``seq`` below it), so the model that scored the record is that checkpoint's
plus the examples learned since, up to there."""

_DICTIONARY = ["topic", "model_version", "arm", "role", "checkpoint", "scorer", "key",
               "label"]
"""Columns of few distinct values, dictionary-encoded in Parquet (the others are not
tried: record ids, features and outputs are all different)."""
_UNINDEXED = {"features", "output", "trace_id", "label"}
"""Columns without min/max statistics (long JSON texts: no query narrows by them)."""

TRAINING = pa.schema([
    ("record_id", pa.string()), ("key", pa.string()), ("topic", pa.string()),
    ("partition", pa.int32()), ("offset", pa.int64()), ("label", pa.string()),
    ("model_version", pa.string()), ("arm", pa.string()), ("scorer", pa.string()),
    ("seq", pa.int64()), ("learned_at", pa.float64()),
])
"""One row per labeled example an arm learned: the record (its event's position), the
label, the version the arm serves, and ``seq``, the scorer's count of examples learned
before it (the order to replay them in)."""

_DUMPS = orjson.dumps
_OPT = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


class Segment(BaseModel):
    """A Parquet file of audit rows, as a checkpoint manifest lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Kind
    scorer: str
    path: str
    """Relative to the checkpoint store's root."""
    rows: int
    bytes: int
    sha256: str


class AuditRows:
    """A scorer's rows since it last handed them over: plain tuples, cheap to append.

    - ``trail``: ``(event, output, version, arm, role, scored_at, examples)``, ``output``
      the prediction record as emitted (JSON bytes), ``examples`` the scorer's count of
      examples learned before it;
    - ``training``: ``(event, label, version, arm, seq, learned_at)``.
    """

    __slots__ = ("trail", "training")

    def __init__(self) -> None:
        self.trail: list[tuple[Any, ...]] = []
        self.training: list[tuple[Any, ...]] = []

    def take_trail(self) -> list[tuple[Any, ...]]:
        rows, self.trail = self.trail, []
        return rows

    def take_training(self) -> list[tuple[Any, ...]]:
        rows, self.training = self.training, []
        return rows

    def __len__(self) -> int:
        return len(self.trail) + len(self.training)


def _labels(values: Iterable[Any]) -> list[bytes]:
    """Labels as JSON, each distinct label encoded once (classes are few)."""
    memo: dict[Any, bytes] = {}
    out = []
    for v in values:
        text = memo.get(v)
        if text is None:
            text = memo[v] = _DUMPS(v, option=_OPT)
        out.append(text)
    return out


def _text(values: Iterable[bytes]) -> pa.Array:
    """JSON bytes as a string column: orjson writes UTF-8, so the bytes are taken as they
    are (a view, not a cast: no decoding, no second check)."""
    return pa.array(values, pa.binary()).view(pa.string())


def _columns(rows: list[tuple[Any, ...]], n: int) -> list[list[Any]]:
    """The first ``n`` fields of equal-shaped tuples as columns: one C-level pass each
    (``zip(*rows)`` builds an iterator per row and costs several times more)."""
    return [list(map(itemgetter(i), rows)) for i in range(n)]


_RECORD = (0, 1, 7, 4, 5)
"""``Event``'s fields that say where a record is: record_id, key, topic, partition, offset."""


def _record_columns(events: list[Any]) -> list[pa.Array]:
    """Where each row's record is: record_id, key, topic, partition, offset."""
    record_id, key, topic, partition, offset = (list(map(itemgetter(i), events))
                                                for i in _RECORD)
    return [pa.array(record_id, pa.string()), pa.array(key, pa.string()),
            pa.array(topic, pa.string()), pa.array(partition, pa.int32()),
            pa.array(offset, pa.int64())]


def _features(events: list[Any]) -> pa.Array:
    """The features as the model saw them, as JSON text (options only where a row needs
    them: numpy values or keys that are not strings)."""
    features = list(map(itemgetter(3), events))
    try:
        return _text(list(map(_DUMPS, features)))  # one C-level pass (the common case)
    except TypeError:
        pass
    out = []
    for x in features:
        try:
            out.append(_DUMPS(x))
        except TypeError:
            out.append(_DUMPS(x, option=_OPT))
    return _text(out)


def _same(value: str | None, n: int) -> pa.Array:
    """One value ``n`` times (a checkpoint's or a scorer's name on each of its rows)."""
    return pa.repeat(pa.scalar(value, pa.string()), n)


def trail_table(rows: list[tuple[Any, ...]], scorer: str, checkpoint: str | None
                ) -> pa.Table:
    """The audit trail's rows as a table of :data:`TRAIL`."""
    n = len(rows)
    events, outputs, versions, arms, roles, scored_at, examples = _columns(rows, 7)
    return pa.Table.from_arrays([
        *_record_columns(events),
        pa.array(list(map(itemgetter(2), events)), pa.float64()),
        pa.array(scored_at, pa.float64()),
        pa.array(versions, pa.string()),
        pa.array(arms, pa.string()),
        pa.array(roles, pa.string()),
        _same(checkpoint, n),
        _same(scorer, n),
        _features(events),
        _text(outputs),
        pa.nulls(n, pa.string()),
        pa.array(examples, pa.int64()),
    ], schema=TRAIL)


def training_table(rows: list[tuple[Any, ...]], scorer: str) -> pa.Table:
    """The training log's rows as a table of :data:`TRAINING`."""
    n = len(rows)
    events, labels, versions, arms, seqs, learned_at = _columns(rows, 6)
    return pa.Table.from_arrays([
        *_record_columns(events),
        _text(_labels(labels)),
        pa.array(versions, pa.string()),
        pa.array(arms, pa.string()),
        _same(scorer, n),
        pa.array(seqs, pa.int64()),
        pa.array(learned_at, pa.float64()),
    ], schema=TRAINING)


class Commit(NamedTuple):
    """A committed checkpoint's audit segments (one file of the index)."""

    checkpoint: str
    seq: int
    committed_at: float
    segments: list[Segment]


class AuditStore:
    """The ``audit/`` folder of a checkpoint store: segments, and the commit index."""

    def __init__(self, store_url: str) -> None:
        self.url = store_url
        self._fs, root = resolve(store_url)
        self._root = root.rstrip("/")

    def path(self, rel: str) -> str:
        """The full path (in this store's filesystem) of a path relative to its root."""
        return f"{self._root}/{rel}"

    @property
    def filesystem(self) -> fs.FileSystem:
        return self._fs

    def write_segment(self, kind: Kind, table: pa.Table, *, scorer: str, generation: int
                      ) -> Segment:
        """Write ``table`` as a new segment (named to sort in the order written)."""
        rel = (f"audit/{kind}/{scorer}/"
               f"{time.time_ns():020d}-g{generation}-{uuid.uuid4().hex[:8]}.parquet")
        sink = pa.BufferOutputStream()
        names = table.schema.names
        pq.write_table(table, sink, compression="zstd", compression_level=1,
                       row_group_size=65_536,
                       use_dictionary=[c for c in _DICTIONARY if c in names],
                       write_statistics=[c for c in names if c not in _UNINDEXED])
        blob = sink.getvalue()
        self._fs.create_dir(self.path(f"audit/{kind}/{scorer}"), recursive=True)
        with self._fs.open_output_stream(self.path(rel)) as out:
            out.write(blob)
        return Segment(kind=kind, scorer=scorer, path=rel, rows=table.num_rows,
                       bytes=blob.size, sha256=hashlib.sha256(blob).hexdigest())

    # -- the commit index --------------------------------------------------------------
    def commit_index(self, checkpoint: str, seq: int, segments: list[Segment],
                     committed_at: float | None = None) -> None:
        """Index a committed checkpoint's segments (after its manifest is written)."""
        self._fs.create_dir(self.path("audit/commits"), recursive=True)
        blob = orjson.dumps({
            "checkpoint": checkpoint, "seq": seq,
            "committed_at": time.time() if committed_at is None else committed_at,
            "segments": [s.model_dump() for s in segments]})
        tmp = self.path(f"audit/commits/.{checkpoint}.json.tmp")
        with self._fs.open_output_stream(tmp) as out:
            out.write(blob)
        self._fs.move(tmp, self.path(f"audit/commits/{checkpoint}.json"))

    def commits(self) -> list[Commit]:
        """Every indexed commit, oldest first."""
        out = []
        selector = fs.FileSelector(self.path("audit/commits"), allow_not_found=True)
        for info in self._fs.get_file_info(selector):
            if not info.base_name.endswith(".json") or info.base_name.startswith("."):
                continue
            with self._fs.open_input_stream(info.path) as f:
                raw = orjson.loads(f.read())
            out.append(Commit(raw["checkpoint"], raw["seq"], raw["committed_at"],
                              [Segment.model_validate(s) for s in raw["segments"]]))
        return sorted(out, key=lambda c: c.seq)

    def committed_segments(self, kind: Kind) -> list[Segment]:
        return [s for c in self.commits() for s in c.segments if s.kind == kind]

    def reconcile(self, manifests: Iterable[Any]) -> int:
        """Index the committed checkpoints whose index file is missing (a crash between
        the manifest and its index). Returns how many were indexed."""
        indexed = {c.checkpoint for c in self.commits()}
        n = 0
        for m in manifests:
            if m.id not in indexed and m.segments:
                self.commit_index(m.id, m.seq, list(m.segments), m.created_at)
                n += 1
        return n

    def discard_uncommitted(self) -> list[str]:
        """Delete the segments no commit lists (written after the last committed
        checkpoint by a run that then failed). Call it only while no scorer writes."""
        if self._fs.get_file_info(self.path("audit")).type == fs.FileType.NotFound:
            return []
        listed = {s.path for c in self.commits() for s in c.segments}
        gone = []
        for kind in ("trail", "training"):
            selector = fs.FileSelector(self.path(f"audit/{kind}"), recursive=True,
                                       allow_not_found=True)
            for info in self._fs.get_file_info(selector):
                if info.type != fs.FileType.File or not info.base_name.endswith(".parquet"):
                    continue
                rel = info.path[len(self._root) + 1:]
                if rel not in listed:
                    self._fs.delete_file(info.path)
                    gone.append(rel)
        return gone


class SegmentWriter:
    """A scorer's side of the trail: its rows to Arrow as they come, to Parquet segments
    off the scoring thread, and the segments a checkpoint commits.

    :meth:`absorb` (after each batch) turns the rows into Arrow tables a thousand or so at
    a time, on the scoring thread: that work holds Python's lock, and done in small steps
    it lengthens each batch a little instead of stalling a batch for a whole segment's
    worth (a thread converting 25,000 rows at once doubled the pipeline's p99). Once
    ``rows_per_segment`` rows are held, one writer thread concatenates and encodes them
    (Parquet and zstd release the lock). :meth:`barrier` writes the rest, waits for
    every write and returns the segments not yet committed (those of an abandoned
    checkpoint too); :meth:`committed` forgets the ones a committed checkpoint listed.
    """

    CHUNK = 1000
    """Rows converted to Arrow at a time."""

    def __init__(self, store: AuditStore, *, scorer: str, generation: int,
                 rows_per_segment: int) -> None:
        self._store = store
        self._scorer = scorer
        self._generation = generation
        self.rows_per_segment = rows_per_segment
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"audit-{scorer}")
        self._tables: dict[Kind, list[pa.Table]] = {"trail": [], "training": []}
        self._held = 0
        self._pending: list[list[Any]] = []
        """[future of a Segment, seq of the barrier that first listed it or None]."""

    def absorb(self, rows: AuditRows, checkpoint: str | None) -> None:
        """After a batch: convert the rows once there are enough; write a segment once
        enough are held. ``checkpoint``: the last committed one (every row held was
        scored after the last barrier, so after it)."""
        if len(rows) >= self.CHUNK:
            self._convert(rows, checkpoint)
            if self._held >= self.rows_per_segment:
                self._submit()

    def _convert(self, rows: AuditRows, checkpoint: str | None) -> None:
        trail, training = rows.take_trail(), rows.take_training()
        if trail:
            self._tables["trail"].append(trail_table(trail, self._scorer, checkpoint))
        if training:
            self._tables["training"].append(training_table(training, self._scorer))
        self._held += len(trail) + len(training)

    def _submit(self) -> None:
        for kind, tables in self._tables.items():
            if tables:
                self._pending.append([self._pool.submit(self._write, kind, tables), None])
        self._tables = {"trail": [], "training": []}
        self._held = 0

    def _write(self, kind: Kind, tables: list[pa.Table]) -> Segment:
        return self._store.write_segment(kind, pa.concat_tables(tables), scorer=self._scorer,
                                         generation=self._generation)

    def barrier(self, rows: AuditRows, checkpoint: str | None, seq: int) -> list[Segment]:
        """Everything written, and the segments a checkpoint numbered ``seq`` commits."""
        self._convert(rows, checkpoint)
        self._submit()
        out = []
        for entry in self._pending:
            future: Future[Segment] = entry[0]
            out.append(future.result())  # a failed write fails the checkpoint
            if entry[1] is None:
                entry[1] = seq
        return out

    def committed(self, seq: int) -> None:
        """The checkpoint numbered ``seq`` is committed: its segments are no longer ours."""
        self._pending = [e for e in self._pending if e[1] is None or e[1] > seq]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=False)
