"""The data half of :class:`~pipelines.audit.forget.Forgetter`: the subject's rows found
in, and removed from, every store riffle owns (the audit trail's and training log's
segments, the output files, the pending labels and dedupe memory of the retained
checkpoints), and the stores riffle does not own listed."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs

from pipelines.audit.trail import _DICTIONARY, AuditStore, Segment
from pipelines.checkpoint import CheckpointStore, Manifest, dumps_state, loads_state
from pipelines.config import FileSourceConfig, KafkaSourceConfig, PipelineConfig

__all__ = ["OUTPUT_FILES", "Scrubbing"]

OUTPUT_FILES = ("predictions.jsonl", "dead_letters.jsonl", "shadow.jsonl")


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()



class Scrubbing:
    """The data half of a :class:`~pipelines.audit.forget.Forgetter` (a mixin)."""

    config: PipelineConfig
    out: Path
    store: CheckpointStore
    audit: AuditStore
    _fs: fs.FileSystem
    _root: str

    def _ids_in_outputs(self, key: str) -> set[str]:
        out: set[str] = set()
        for name in OUTPUT_FILES:
            path = self.out / name
            if path.exists():
                with open(path, "rb") as f:
                    for line in f:
                        row = _json(line)
                        if row is not None and row.get("key") == key and row.get("record_id"):
                            out.add(row["record_id"])
        return out

    # -- data --------------------------------------------------------------------------
    def _scrub_segments(self, key: str, first: int | None, cert: dict[str, Any]) -> None:
        """Rewrite every committed segment holding the subject's rows, and the index."""
        if first is None:
            return
        for commit in self.audit.commits():
            if commit.seq < first:
                continue
            changed = False
            segments: list[Segment] = []
            for s in commit.segments:
                path = self.audit.path(s.path)
                table = pq.read_table(path, filesystem=self._fs)
                keep = pc.invert(pc.equal(table["key"], pa.scalar(key, pa.string())))
                kept = table.filter(keep)
                if kept.num_rows == table.num_rows:
                    segments.append(s)
                    continue
                blob = _parquet(kept)
                tmp = f"{path}.tmp"
                with self._fs.open_output_stream(tmp) as out:
                    out.write(blob)
                self._fs.move(tmp, path)
                new = s.model_copy(update={"rows": kept.num_rows, "bytes": len(blob),
                                           "sha256": _sha(blob)})
                segments.append(new)
                changed = True
                removed = table.num_rows - kept.num_rows
                cert["removed"]["audit_trail" if s.kind == "trail" else "training_log"] += \
                    removed
                cert["segments"].append({"path": s.path, "kind": s.kind,
                                         "committed_in": commit.checkpoint,
                                         "rows_removed": removed, "sha256_before": s.sha256,
                                         "sha256_after": new.sha256})
            if changed:
                self.audit.commit_index(commit.checkpoint, commit.seq, segments,
                                        commit.committed_at)

    def _scrub_retained(self, record_ids: set[str], key: str, new: Manifest | None,
                        first: int | None, cert: dict[str, Any]) -> None:
        """The checkpoints kept (older than the subject, or all when nothing was rebuilt):
        segment hashes in their manifests, pending labels and dedupe memory in their
        parts. A manifest rewritten here no longer matches a registered hash: its version
        is retired too (:meth:`_certify`)."""
        rewritten = {s["path"]: s for s in cert["segments"]}
        for m in self.store.manifests():
            if new is not None and (m.id == new.id or (first is not None and m.seq >= first)):
                continue
            parts = dict(m.parts)
            dirty = False
            for name in m.parts:
                state = loads_state(self.store.read_part(m, name))
                removed = 0
                if isinstance(state, dict) and "seen" in state:
                    kept = [r for r in state["seen"] if r not in record_ids]
                    removed = len(state["seen"]) - len(kept)
                    state = {**state, "seen": kept}
                    cert["removed"]["dedupe_memory"] += removed
                elif isinstance(state, dict) and "labels" in state:
                    removed = state["labels"].forget(record_ids,
                                                     where=lambda e: e.event.key == key)
                    cert["removed"]["pending_labels"] += removed
                if removed:
                    parts[name] = self.store.write_part(m.id, name, dumps_state(state))
                    dirty = True
            segments = [s.model_copy(update={"sha256": rewritten[s.path]["sha256_after"]})
                        if s.path in rewritten else s for s in m.segments]
            if dirty or segments != m.segments:
                self.store.commit(m.model_copy(update={"parts": parts,
                                                       "segments": self._indexed(segments)}))
                cert["checkpoints_scrubbed"].append(m.id)

    def _indexed(self, segments: list[Segment]) -> list[Segment]:
        index = {s.path: s for c in self.audit.commits() for s in c.segments}
        return [index.get(s.path, s) for s in segments]

    def _delete_checkpoints(self, manifests: list[Manifest], first: int | None,
                            cert: dict[str, Any]) -> None:
        gone = [m.id for m in manifests if first is not None and m.seq >= first]
        for ckpt in gone:  # the rebuilt checkpoint is committed: these are superseded
            self._fs.delete_dir(f"{self._root}/{ckpt}")
        cert["models"]["deleted_checkpoints"] = gone

    def _scrub_file(self, name: str, key: str, record_ids: set[str],
                    cert: dict[str, Any]) -> None:
        path = self.out / name
        if not path.exists():
            return
        raw = path.read_bytes()
        needle = orjson.dumps(key)
        kept, removed = [], 0
        for line in raw.splitlines(keepends=True):
            row = _json(line)
            if row is not None and (row.get("key") == key or row.get("record_id") in record_ids
                                    or (isinstance(row.get("raw"), str)
                                        and needle in row["raw"].encode())):
                removed += 1
                continue
            if row is None and needle in line:  # a line cut short: still the subject's
                removed += 1
                continue
            kept.append(line)
        if not removed:
            return
        blob = b"".join(kept)
        tmp = path.with_name(f".{name}.forget.tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
        cert["removed"][name] += removed
        cert["files"][name] = {"rows_removed": removed, "sha256_before": _sha(raw),
                               "sha256_after": _sha(blob)}

    def _not_owned(self) -> list[dict[str, str]]:
        """Where the subject's data may also be, outside riffle: never claimed deleted."""
        src = self.config.source
        out = []
        if isinstance(src, FileSourceConfig):
            out.append({"store": f"input file {src.path}",
                        "action": "rewrite the file without the subject's lines (riffle "
                                  "reads it, never writes it)"})
        elif isinstance(src, KafkaSourceConfig):
            topics = self.config.kafka.topics
            out.append({"store": f"Kafka topics {topics.events}, {topics.feedback}",
                        "action": "records expire with the topics' retention.ms; on "
                                  "compacted topics produce a tombstone (null value) for "
                                  "the subject's message key"})
        else:
            out.append({"store": "synthetic source", "action": "none: nothing is stored"})
        if self.config.output.kind == "kafka":
            topics = self.config.kafka.topics
            out.append({"store": f"Kafka topics {topics.predictions}, {topics.dead_letters}, "
                                 f"{topics.shadow}",
                        "action": "retention.ms, or tombstones on compacted topics"})
        out.append({"store": "copies made by readers of the outputs and of the audit "
                             "Parquet (Spark, Trino, backups)",
                    "action": "their owners' erasure"})
        return out

    def _write_json(self, rel: str, doc: Any) -> None:
        path = f"{self._root}/{rel}"
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self._fs.open_output_stream(f"{path}.tmp") as out:
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._fs.move(f"{path}.tmp", path)


def _parquet(table: pa.Table) -> bytes:
    """A segment written as :meth:`AuditStore.write_segment` writes one."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=1,
                   row_group_size=65_536,
                   use_dictionary=[c for c in _DICTIONARY if c in table.schema.names])
    return bytes(sink.getvalue())


def _json(line: bytes) -> dict[str, Any] | None:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None
