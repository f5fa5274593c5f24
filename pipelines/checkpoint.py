"""The checkpoint store: parts first, the manifest last; no manifest, no checkpoint.

A checkpoint is a folder ``ckpt-<seq>`` holding one part per actor (a scorer's model
and pending labels, an ingest actor's dedupe memory) and ``MANIFEST.json``: its id,
time, source positions, each part's path, size and SHA-256, and the config hash. The
manifest is written last, so a crash while parts are written leaves a folder that
:meth:`CheckpointStore.latest` never returns. Parts are checked against their hashes
when read back.

The store is a local folder or any pyarrow filesystem URL (``s3://``, ``gs://``,
``hdfs://``), so a cluster's actors can share it.

Beside the store: :class:`CheckpointSchedule`, when the Supervisor starts the next
checkpoint (every ``interval_s`` seconds or ``every_events`` events), and
:func:`resume_point`, which checkpoint a resumed run starts from (the newest whose
every part still matches its hash).

>>> import tempfile
>>> store = CheckpointStore(tempfile.mkdtemp())
>>> part = store.write_part("ckpt-000001", "scorer-0", b"model bytes")
>>> store.latest() is None                      # parts alone are not a checkpoint
True
>>> m = store.commit(Manifest(id="ckpt-000001", seq=1, created_at=0.0, pipeline="p",
...                           config_hash="c", positions={"loans[0]": 7},
...                           parts={"scorer-0": part}))
>>> store.latest().positions, store.read_part(store.latest(), "scorer-0")
({'loans[0]': 7}, b'model bytes')
"""

from __future__ import annotations

import hashlib
import math
import pickle
import time
from typing import Any, NamedTuple

import orjson
from pyarrow import fs
from pydantic import BaseModel, ConfigDict

from pipelines.audit.trail import Segment
from pipelines.config import CheckpointConfig, RetainConfig
from pipelines.errors import CheckpointError, DamagedCheckpoint
from pipelines.storage import resolve

__all__ = ["CheckpointError", "CheckpointSchedule", "CheckpointStore", "Damage",
           "DamagedCheckpoint", "Manifest", "Part", "ResumePoint", "checkpoint_id",
           "dumps_state", "loads_state", "resume_point", "retained"]

MANIFEST = "MANIFEST.json"


class Part(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    """Relative to the store's root."""
    bytes: int
    sha256: str


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    seq: int
    created_at: float
    pipeline: str
    config_hash: str
    positions: dict[str, int]
    """Per source partition, the offset of the first message the checkpoint does not reflect."""
    parts: dict[str, Part]
    events_read: int = 0
    final: bool = False
    """Taken when the source was exhausted and everything was drained."""
    deployment: dict[str, Any] | None = None
    """The model deployment in force (arms, previous version) when it was taken."""
    control_position: int | None = None
    """The control stream's position after the last command applied before it."""
    segments: list[Segment] = []
    """The audit trail's and training log's segments it commits (pipelines.audit.trail)."""
    access_log: dict[str, Any] | None = None
    """The access log's tree head when it was taken: ``{"size": n, "root": hex}``."""


def checkpoint_id(seq: int) -> str:
    return f"ckpt-{seq:06d}"


def dumps_state(state: Any) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def loads_state(blob: bytes) -> Any:
    # Only our own checkpoint parts are unpickled, after their hash matched the manifest.
    return pickle.loads(blob)


class CheckpointStore:
    """Checkpoints under ``url`` (a local folder or a pyarrow filesystem URL)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self._fs, self._root = resolve(url)
        except Exception as e:
            raise CheckpointError(f"checkpoint store {url}: {e}") from None
        self._root = self._root.rstrip("/")
        self._fs.create_dir(self._root, recursive=True)

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def write_part(self, ckpt: str, name: str, blob: bytes) -> Part:
        rel = f"{ckpt}/{name}.pkl"
        self._fs.create_dir(self._path(ckpt), recursive=True)
        self._write(self._path(rel), blob)
        return Part(path=rel, bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest())

    def commit(self, manifest: Manifest) -> Manifest:
        """Write the manifest: from now on the checkpoint exists."""
        for name, part in manifest.parts.items():
            info = self._fs.get_file_info(self._path(part.path))
            if info.type != fs.FileType.File or info.size != part.bytes:
                raise CheckpointError(f"checkpoint {manifest.id}: part {name} is missing "
                                      f"or incomplete at {part.path}")
        blob = orjson.dumps(manifest.model_dump(mode="json"), option=orjson.OPT_INDENT_2)
        # Written under a temporary name and moved: readers never see half a manifest.
        tmp = self._path(manifest.id, f".{MANIFEST}.tmp")
        self._write(tmp, blob)
        self._fs.move(tmp, self._path(manifest.id, MANIFEST))
        return manifest

    def _write(self, path: str, blob: bytes) -> None:
        with self._fs.open_output_stream(path) as out:
            out.write(blob)

    def manifests(self) -> list[Manifest]:
        """The committed checkpoints, oldest first (folders without a manifest are skipped)."""
        out = []
        for info in self._fs.get_file_info(fs.FileSelector(self._root, allow_not_found=True)):
            if info.type != fs.FileType.Directory or not info.base_name.startswith("ckpt-"):
                continue
            path = self._path(info.base_name, MANIFEST)
            if self._fs.get_file_info(path).type != fs.FileType.File:
                continue
            with self._fs.open_input_stream(path) as f:
                try:
                    out.append(Manifest.model_validate(orjson.loads(f.read())))
                except ValueError as e:
                    raise CheckpointError(f"checkpoint manifest {path} is damaged: {e}") from None
        return sorted(out, key=lambda m: m.seq)

    def latest(self) -> Manifest | None:
        manifests = self.manifests()
        return manifests[-1] if manifests else None

    def next_seq(self) -> int:
        """One past the highest checkpoint number ever started here (committed or not)."""
        seqs = [int(i.base_name.removeprefix("ckpt-"))
                for i in self._fs.get_file_info(fs.FileSelector(self._root,
                                                                allow_not_found=True))
                if i.base_name.startswith("ckpt-") and i.base_name[5:].isdigit()]
        return max(seqs, default=0) + 1

    def read_part(self, manifest: Manifest, name: str) -> bytes:
        part = manifest.parts[name]
        with self._fs.open_input_stream(self._path(part.path)) as f:
            blob = f.read()
        if hashlib.sha256(blob).hexdigest() != part.sha256:
            raise CheckpointError(f"checkpoint {manifest.id}: part {name} does not match "
                                  "its hash in the manifest")
        return bytes(blob)

    def damage(self, manifest: Manifest) -> list[Damage]:
        """Every part of ``manifest`` read back and hashed: the ones that do not match
        (changed, cut short or missing); empty if the checkpoint is intact."""
        out = []
        for name, part in sorted(manifest.parts.items()):
            try:
                with self._fs.open_input_stream(self._path(part.path)) as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            except (FileNotFoundError, OSError):
                out.append(Damage(manifest.id, name, part.path, "is missing"))
                continue
            if digest != part.sha256:
                out.append(Damage(manifest.id, name, part.path,
                                  "does not match its SHA-256 in the manifest"))
        return out

    def prune(self, keep: int, retain: RetainConfig | None = None, *,
              now: float | None = None) -> list[str]:
        """Delete all but the newest ``keep`` committed checkpoints and those ``retain``
        keeps (:func:`retained`), and any uncommitted folder older than the newest
        committed one. Returns what was deleted."""
        manifests = self.manifests()
        if not manifests:
            return []
        kept = {m.id for m in manifests[-keep:]} | retained(manifests, retain, now=now)
        newest = manifests[-1].seq
        gone = []
        for info in self._fs.get_file_info(fs.FileSelector(self._root, allow_not_found=True)):
            name = info.base_name
            if info.type != fs.FileType.Directory or not name.startswith("ckpt-"):
                continue
            seq = int(name[5:]) if name[5:].isdigit() else newest + 1
            if name not in kept and seq < newest:
                self._fs.delete_dir(self._path(name))
                gone.append(name)
        return sorted(gone)


def retained(manifests: list[Manifest], retain: RetainConfig | None, *,
             now: float | None = None) -> set[str]:
    """The ids of the committed checkpoints (``manifests``, oldest first) that ``retain``
    keeps beyond the newest few: the oldest (within ``max_age_s``), then each one at
    least ``every`` checkpoint numbers after the last one kept.

    The choice is stable as pruning goes on: the checkpoints between two kept ones are
    never kept, so deleting them does not move the next one kept.

    >>> ms = [Manifest(id=checkpoint_id(s), seq=s, created_at=float(s), pipeline="p",
    ...                config_hash="c", positions={}, parts={}) for s in (1, 2, 3, 5, 6, 8)]
    >>> sorted(retained(ms, RetainConfig(every=3)))
    ['ckpt-000001', 'ckpt-000005', 'ckpt-000008']
    >>> sorted(retained([m for m in ms if m.seq in (1, 5, 6, 8)], RetainConfig(every=3)))
    ['ckpt-000001', 'ckpt-000005', 'ckpt-000008']
    >>> sorted(retained(ms, RetainConfig(every=3, max_age_s=4.5), now=9.0))
    ['ckpt-000005', 'ckpt-000008']
    >>> retained(ms, None)
    set()
    """
    if retain is None or retain.every is None:
        return set()
    if retain.max_age_s is not None:
        oldest = (time.time() if now is None else now) - retain.max_age_s
        manifests = [m for m in manifests if m.created_at >= oldest]
    out: set[str] = set()
    last: int | None = None
    for m in manifests:
        if last is None or m.seq >= last + retain.every:
            out.add(m.id)
            last = m.seq
    return out


class Damage(NamedTuple):
    """One part of a committed checkpoint that no longer matches its manifest."""

    checkpoint: str
    part: str
    """The part's name (the actor that wrote it: ``ingest-0``, ``scorer-1``)."""
    path: str
    reason: str

    def __str__(self) -> str:
        return f"checkpoint {self.checkpoint}: part {self.part} ({self.path}) {self.reason}"


class ResumePoint(NamedTuple):
    """Where a resumed run starts: ``manifest``, after skipping the newer ``damaged``."""

    manifest: Manifest
    damaged: list[Damage]
    """What made each newer checkpoint unusable (first damaged part of each), newest first."""

    @property
    def fallback(self) -> str | None:
        """One line for the operator when damaged checkpoints were passed over, else None.

        >>> m = Manifest(id="ckpt-000006", seq=6, created_at=0.0, pipeline="p",
        ...              config_hash="c", positions={}, parts={})
        >>> ResumePoint(m, []).fallback is None
        True
        >>> print(ResumePoint(m, [Damage("ckpt-000007", "ingest-0", "ckpt-000007/ingest-0.pkl",
        ...                              "does not match its SHA-256 in the manifest")]).fallback)
        checkpoint ckpt-000007 is damaged (part ingest-0 does not match its SHA-256 in the \
manifest): resuming from ckpt-000006, the newest intact checkpoint; records after it are \
read again
        """
        if not self.damaged:
            return None
        newest = self.damaged[0]
        more = len(self.damaged) - 1
        also = f" (and {more} more damaged)" if more else ""
        return (f"checkpoint {newest.checkpoint} is damaged (part {newest.part} {newest.reason})"
                f"{also}: resuming from {self.manifest.id}, the newest intact checkpoint; "
                "records after it are read again")


def resume_point(store: CheckpointStore) -> ResumePoint | None:
    """The newest committed checkpoint whose every part matches its hash; None if the
    store holds no committed checkpoint.

    A damaged part is found here, before any actor starts, not by the actor restoring
    it (which would fail, be restarted from the same part and fail again until its
    restart policy escalates). Older intact checkpoints are the fallback: records after
    them are read again, as after any failure. If every one is damaged, the run cannot
    start as asked: :class:`DamagedCheckpoint`, naming the newest damaged part.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> store = CheckpointStore(str(root))
    >>> for seq in (1, 2):
    ...     ckpt = checkpoint_id(seq)
    ...     part = store.write_part(ckpt, "ingest-0", b"dedupe memory")
    ...     _ = store.commit(Manifest(id=ckpt, seq=seq, created_at=0.0, pipeline="p",
    ...                               config_hash="c", positions={}, parts={"ingest-0": part}))
    >>> resume_point(store).manifest.id
    'ckpt-000002'
    >>> _ = (root / "ckpt-000002" / "ingest-0.pkl").write_bytes(b"dedupe memorY")
    >>> point = resume_point(store)
    >>> point.manifest.id, str(point.damaged[0])
    ('ckpt-000001', 'checkpoint ckpt-000002: part ingest-0 (ckpt-000002/ingest-0.pkl) \
does not match its SHA-256 in the manifest')
    >>> _ = (root / "ckpt-000001" / "ingest-0.pkl").write_bytes(b"")
    >>> resume_point(store)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    pipelines.errors.DamagedCheckpoint: --resume: no intact checkpoint in ... \
part ingest-0 (ckpt-000002/ingest-0.pkl) does not match its SHA-256 in the manifest \
(and 1 older checkpoint damaged too)
    """
    damaged: list[Damage] = []
    for manifest in reversed(store.manifests()):
        found = store.damage(manifest)
        if not found:
            return ResumePoint(manifest, damaged)
        damaged.append(found[0])
    if not damaged:
        return None
    older = len(damaged) - 1
    also = (f" (and {older} older checkpoint{'s' if older > 1 else ''} damaged too)"
            if older else "")
    raise DamagedCheckpoint(f"--resume: no intact checkpoint in {store.url}: "
                            f"{damaged[0]}{also}")


class CheckpointSchedule:
    """When the Supervisor starts the next checkpoint: once ``interval_s`` seconds have
    passed since the last one ended, or ``every_events`` events were read since the last
    committed one, whichever comes first; and not on time alone if the source positions
    have not moved (an idle pipeline takes no checkpoints).

    Counting events needs a round trip to the ingest actors, so :meth:`wants_progress`
    says when to ask (at most every ``poll_s``, and only if a count can decide);
    :meth:`due` decides from the answer. Times are ``time.monotonic()`` seconds.

    >>> from pipelines.config import CheckpointConfig
    >>> s = CheckpointSchedule(CheckpointConfig(interval_s=5.0, every_events=1000), now=0.0)
    >>> s.wants_progress(0.0), s.wants_progress(0.2)     # asked, then too soon to ask again
    (True, False)
    >>> s.due(0.0, events=400, moved=True)                # neither 5 s nor 1,000 events yet
    False
    >>> s.wants_progress(0.5) and s.due(0.5, events=1200, moved=True)
    True
    >>> s.taken(0.7, events_read=1200)                    # committed: count anew from there
    >>> s.wants_progress(5.7) and s.due(5.7, events=1300, moved=False)   # idle: wait on
    False
    >>> s.wants_progress(10.7) and s.due(10.7, events=1300, moved=True)
    True
    """

    def __init__(self, config: CheckpointConfig, *, now: float, events_read: int = 0,
                 poll_s: float = 0.5) -> None:
        self._interval_s = config.interval_s or math.inf
        self._every_events = config.every_events
        self._poll_s = poll_s
        self._next_at = now + self._interval_s
        self._next_poll = now
        self._events_at = events_read
        """Events read when the last committed checkpoint was taken."""

    def wants_progress(self, now: float) -> bool:
        """Whether to ask the ingest actors for their events and positions now."""
        if (now >= self._next_at or self._every_events) and now >= self._next_poll:
            self._next_poll = now + self._poll_s
            return True
        return False

    def due(self, now: float, *, events: int, moved: bool) -> bool:
        """Whether to start a checkpoint, given the events read so far and whether the
        positions moved since the last checkpoint."""
        if self._every_events and events - self._events_at >= self._every_events:
            return True
        if now < self._next_at:
            return False
        if not moved:  # nothing read since the last: look again an interval later
            self._next_at = now + self._interval_s
            return False
        return True

    def taken(self, now: float, *, events_read: int | None) -> None:
        """A checkpoint ended: committed at ``events_read``, or abandoned (None)."""
        if events_read is not None:
            self._events_at = events_read
        self._next_at = now + self._interval_s
