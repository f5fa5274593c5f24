"""Forgetting a data subject (GDPR Art. 17): ``riffle forget``, on a stopped pipeline or
on a running one that its Supervisor holds at a fresh checkpoint (:mod:`actors.erasure`).

**Models: exact unlearning.** The subject's earliest row in the committed audit data (a
trail row or a training-log row) was committed by checkpoint F. Every checkpoint from F
on holds the subject somewhere: a model that learned from it, a pending label with its
features, or a manifest listing a segment with its rows. The rebuild starts from B, the
newest retained checkpoint before F (none: the config's fresh model, the run's start).
Each scorer's part of B is restored, and the training log committed after B is replayed
on it in ``seq`` order (the order the scorer learned in), each row into the model of the
version it names, on the features the trail kept for the record, *without the subject's
rows*. River models are deterministic, so the result is exactly the model a run would
hold had the subject never been seen. The rebuilt models replace the models in the newest
checkpoint's parts (its arms, deployment, pending labels minus the subject's, metrics and
counts kept as they were: they describe the predictions that were made, the subject's
included, and ``counts["examples"]`` keeps numbering the training log), and are committed
as a **new checkpoint** with the newest positions: ``riffle run --resume`` continues from
it. Checkpoints F and later are then deleted, and their registered versions retired
(lifecycle ``retired``, reason ``erasure``; ``tainted`` when the subject's labels were
learned into them). The new checkpoint is registered as a version whose parent is B's.

**Data.** The subject's rows leave every store riffle owns: the audit trail's and training
log's segments (rewritten in place, written whole and moved in; the commit index gets the
new hashes; the manifests listing them are those of the deleted checkpoints), the output
files (``predictions.jsonl``, ``dead_letters.jsonl``, ``shadow.jsonl``: rewritten the same
way), the pending labels and the ingest actors' dedupe memory in every retained
checkpoint. The registry never holds a key in clear (the access log only hashes). Stores
riffle does not own are listed with what would remove the data there, never claimed.

**Certificate.** One entry in the tamper-evident access log (action ``forget``): the
subject's hash, the counts removed per store, the checkpoints deleted, versions retired
and rebuilt, every rewritten file's SHA-256 before and after, who, when, why. A copy
(with the log index) is kept in ``erasure/certificates/`` of the store.

Limits: the replay needs the training log and the trail's features of every example
since B (they outlive pruned checkpoints) and every version a scorer learned into since B
in B itself (a version deployed after B is refused, by name); an early label (one that
came before its event) still pending for a record never scored holds no key and stays.
"""

from __future__ import annotations

import getpass
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.audit.forget_batch import find_batch_versions, forget_batch_versions
from pipelines.audit.query import AuditQuery
from pipelines.audit.subjects import subject_hash
from pipelines.audit.suppression import add_suppressed
from pipelines.audit.trail import _DICTIONARY, AuditStore, Segment
from pipelines.checkpoint import CheckpointStore, Manifest, checkpoint_id, dumps_state, loads_state
from pipelines.config import FileSourceConfig, KafkaSourceConfig, PipelineConfig
from pipelines.errors import AuditError
from pipelines.storage import resolve

__all__ = ["OUTPUT_FILES", "Forgetter", "running_since"]

OUTPUT_FILES = ("predictions.jsonl", "dead_letters.jsonl", "shadow.jsonl")
_GAPS = "erasure/gaps.json"
"""Per scorer, the training log's ``seq`` numbers erased so far (numbers only): a later
replay checks that the log it reads is whole but for them."""
_RUNNING_S = 10.0


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class Forgetter:
    """Erasure of subjects from the stopped pipeline ``config`` (its output folder
    ``out_dir`` when not the config's; ``registry``: an open Registry, or None)."""

    def __init__(self, config: PipelineConfig, *, out_dir: Path | None = None,
                 registry: Any = None, actor: str | None = None) -> None:
        self.config = config
        self.out = Path(out_dir or config.out_dir).resolve()
        self.store_url = config.checkpoint_store_url(out_dir)
        self.store = CheckpointStore(self.store_url)
        self.audit = AuditStore(self.store_url)
        self.registry = registry
        self.actor = actor or _actor()
        self._fs, root = resolve(self.store_url)
        self._root = root.rstrip("/")

    # -- the one verb ------------------------------------------------------------------
    def forget(self, key: str, *, reason: str | None = None, suppress: bool = False,
               clock: Callable[[], float] = time.time, held: bool = False) -> dict[str, Any]:
        """Erase ``key``'s data and unlearn it (see the module); returns the certificate.
        ``held``: the pipeline runs, held by its Supervisor at its newest checkpoint
        (:mod:`actors.erasure`), which rewinds it to the rebuilt one afterwards."""
        started = time.perf_counter()
        if not held:
            self._check_stopped(clock())
        hashed = subject_hash(key)
        self.audit.reconcile(self.store.manifests())
        discarded = self.audit.discard_uncommitted()  # rows no checkpoint committed
        rows = self._subject_rows(key)
        record_ids = {r["record_id"] for r in rows}
        record_ids |= self._ids_in_outputs(key)
        learned = [r for r in rows if r["kind"] == "training"]
        first = min((r["commit_seq"] for r in rows), default=None)
        batch = (find_batch_versions(self.config, self.registry, key)
                 if self.registry is not None else [])
        if first is None and not record_ids and not suppress and not batch:
            raise AuditError("unknown key: nothing of that subject in the committed audit "
                             f"data or the output files of pipeline {self.config.name}")
        cert: dict[str, Any] = {
            "subject": hashed, "n_records": len(record_ids),
            "removed": dict.fromkeys(("audit_trail", "training_log", "pending_labels",
                                      "dedupe_memory", *OUTPUT_FILES), 0),
            "uncommitted_segments_discarded": len(discarded),
            "models": None, "segments": [], "files": {}, "checkpoints_scrubbed": [],
            "suppressed": suppress, "not_owned": self._not_owned()}
        cert["removed"]["registry"] = 0  # keys are never held in clear there
        manifests = self.store.manifests()
        new: Manifest | None = None
        if first is not None and manifests:
            new = self._rebuild(key, record_ids, manifests, first,
                                min((r["commit_seq"] for r in learned), default=None),
                                cert, clock())
        self._scrub_segments(key, first, cert)
        self._scrub_retained(record_ids, key, new, first, cert)
        if new is not None:
            self._delete_checkpoints(manifests, first, cert)
        for name in OUTPUT_FILES:
            self._scrub_file(name, key, record_ids, cert)
        cert["batch_versions"] = forget_batch_versions(
            self.config, self.registry, batch, hashed, actor=self.actor,
            deployed=_arms((new or manifests[-1]).deployment if manifests else None))
        if any(b["history"] for b in cert["batch_versions"]):
            cert["not_owned"].append({
                "store": "history files of riffle train: " + ", ".join(sorted(
                    {b["history"] for b in cert["batch_versions"] if b["history"]})),
                "action": "rewrite them without the subject's rows (riffle reads them, "
                          "never writes them; the retrained versions leave those rows out)"})
        if suppress:
            cert["suppressed_new"] = add_suppressed(self.store_url, hashed)
        cert["duration_s"] = round(time.perf_counter() - started, 3)
        self._certify(cert, reason, new)
        return cert

    # -- where the subject is -----------------------------------------------------------
    def _check_stopped(self, now: float) -> None:
        age = running_since(self.out, now)
        if age is not None:
            raise AuditError(f"pipeline {self.config.name} is running (its status was "
                             f"written {age:.1f} s ago): forget through its control stream")

    def _subject_rows(self, key: str) -> list[dict[str, Any]]:
        with AuditQuery(self.store_url) as q:
            return (q.rows("SELECT 'trail' AS kind, record_id, scorer, commit_seq, NULL AS seq "
                           "FROM trail WHERE key = ?", [key])
                    + q.rows("SELECT 'training' AS kind, record_id, scorer, commit_seq, seq "
                             "FROM training WHERE key = ?", [key]))

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

    # -- models ------------------------------------------------------------------------
    def _rebuild(self, key: str, record_ids: set[str], manifests: list[Manifest], first: int,
                 first_learned: int | None, cert: dict[str, Any], now: float) -> Manifest:
        latest = manifests[-1]
        base = next((m for m in reversed(manifests) if m.seq < first), None)
        scorers = sorted(n for n in latest.parts if n.startswith("scorer-"))
        if base is not None and sorted(n for n in base.parts if n.startswith("scorer-")) \
                != scorers:
            raise AuditError(f"cannot rebuild: checkpoint {base.id} has other scorers than "
                             f"{latest.id} (the pipeline was rescaled in between)")
        gaps = self._gaps()
        seq = self.store.next_seq()
        ckpt = checkpoint_id(seq)
        parts = {}
        report: dict[str, Any] = {}
        replayed = skipped = 0
        with AuditQuery(self.store_url) as q:
            for name in scorers:
                state, n, erased = self._replay(q, name, base, latest, key, gaps)
                replayed += n
                skipped += len(erased)
                gaps.setdefault(name, []).extend(erased)
                dropped = state["labels"].forget(record_ids,
                                                 where=lambda e: e.event.key == key)
                cert["removed"]["pending_labels"] += dropped
                blob = dumps_state(state)
                parts[name] = self.store.write_part(ckpt, name, blob)
                report[name] = {"before": latest.parts[name].sha256,
                                "after": parts[name].sha256, "replayed": n,
                                "skipped": len(erased)}
        for name in latest.parts:
            if name in parts:
                continue
            state = loads_state(self.store.read_part(latest, name))
            if isinstance(state, dict) and "seen" in state:  # an ingest actor's part
                kept = [r for r in state["seen"] if r not in record_ids]
                cert["removed"]["dedupe_memory"] += len(state["seen"]) - len(kept)
                state = {**state, "seen": kept}
            parts[name] = self.store.write_part(ckpt, name, dumps_state(state))
        head = self.registry.access_head() if self.registry is not None else None
        manifest = self.store.commit(latest.model_copy(update={
            "id": ckpt, "seq": seq, "created_at": now, "parts": parts, "segments": [],
            "access_log": {"size": head[0], "root": head[1]} if head else latest.access_log}))
        self._write_json(_GAPS, gaps)
        tainted = [m.id for m in manifests
                   if first_learned is not None and m.seq >= first_learned]
        cert["models"] = {
            "rebuilt_checkpoint": ckpt, "from": base.id if base else "the run's start (config)",
            "replaced": latest.id, "replayed": replayed, "skipped": skipped, "parts": report,
            "tainted": tainted, "metrics_and_counts": "kept as they were"}
        return manifest

    def _replay(self, q: AuditQuery, name: str, base: Manifest | None, latest: Manifest,
                key: str, gaps: dict[str, list[int]]) -> tuple[dict[str, Any], int, list[int]]:
        """``name``'s state at ``latest`` with models replayed from ``base`` without the
        subject: (state, examples replayed, the subject's seq numbers skipped)."""
        if base is not None:
            start = loads_state(self.store.read_part(base, name))
        else:
            from pipelines.scoring import ScorerCore  # River: only when a fresh model is needed

            start = ScorerCore(self.config.scoring, name=name).snapshot()
        models = {a.version: a.model for a in start["arms"]}
        if start["previous"] is not None:
            models.setdefault(start["previous"].version, start["previous"].model)
        state = loads_state(self.store.read_part(latest, name))
        lo, hi = start["counts"].get("examples", 0), state["counts"].get("examples", 0)
        rows = q.rows(
            "SELECT t.seq, t.model_version, t.label, t.key, f.features FROM training t "
            "LEFT JOIN (SELECT record_id, any_value(features) AS features FROM trail "
            "GROUP BY record_id) f USING (record_id) "
            "WHERE t.scorer = ? AND t.seq >= ? AND t.seq < ? ORDER BY t.seq", [name, lo, hi])
        earlier = sum(lo <= s < hi for s in gaps.get(name, []))
        if len(rows) + earlier != hi - lo:
            raise AuditError(f"cannot rebuild {name}: its training log holds {len(rows)} of "
                             f"the {hi - lo - earlier} examples learned between "
                             f"{base.id if base else 'the start'} and {latest.id}")
        erased = []
        loads = orjson.loads
        for r in rows:
            if r["key"] == key:
                erased.append(r["seq"])
                continue
            model = models.get(r["model_version"])
            if model is None:
                raise AuditError(f"cannot rebuild {name}: version {r['model_version']} was "
                                 f"deployed after {base.id if base else 'the start'}, which "
                                 "does not hold it")
            if r["features"] is None:
                raise AuditError(f"cannot rebuild {name}: example seq {r['seq']} has no "
                                 "features in the audit trail")
            model.learn_one(loads(r["features"]), loads(r["label"]))
        for arm in (*state["arms"], state["previous"]):
            if arm is None:
                continue
            if arm.version not in models:
                raise AuditError(f"cannot rebuild {name}: version {arm.version} was deployed "
                                 f"after {base.id if base else 'the start'}")
            arm.model = models[arm.version]
        return state, len(rows) - len(erased), erased

    def _gaps(self) -> dict[str, list[int]]:
        try:
            with self._fs.open_input_stream(f"{self._root}/{_GAPS}") as f:
                raw: dict[str, list[int]] = orjson.loads(f.read())
                return raw
        except FileNotFoundError:
            return {}

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

    # -- the certificate ---------------------------------------------------------------
    def _certify(self, cert: dict[str, Any], reason: str | None, new: Manifest | None) -> None:
        pipeline = self.config.name
        retired: list[str] = []
        rebuilt_version = None
        if self.registry is not None:
            from pipelines.registry import river_model_fields, river_version_id

            models = cert["models"] or {}
            gone = set(models.get("deleted_checkpoints", [])) | set(cert["checkpoints_scrubbed"])
            tainted = set(models.get("tainted", []))
            for v in self.registry.versions(pipeline):
                ckpt = v.id.split("/", 1)[1]
                if v.kind != "river" or ckpt not in gone or v.status == "retired":
                    continue
                why = ("its model learned from the erased subject" if ckpt in tainted
                       else "its checkpoint held the erased subject's data")
                self.registry.record(v.id, "retired", actor=self.actor, reason="erasure",
                                     tainted=ckpt in tainted, why=why, subject=cert["subject"])
                retired.append(v.id)
            if new is not None:
                base = models.get("from", "")
                parent = river_version_id(pipeline, base) if base.startswith("ckpt-") else None
                if parent is not None and not any(v.id == parent for v in
                                                  self.registry.versions(pipeline)):
                    parent = None
                rebuilt_version = self.registry.register_checkpoint(
                    self.store_url, new, **river_model_fields(self.config.scoring.model),
                    n_learned=0, parent_id=parent, actor=self.actor).id
        if cert["models"] is not None:
            cert["models"]["retired_versions"] = retired
            cert["models"]["rebuilt_version"] = rebuilt_version
        cert["actor"] = self.actor
        cert["reason"] = reason
        cert["at"] = time.time()
        if self.registry is not None:
            replaced = (cert["models"] or {}).get("replaced")
            cert["log_index"] = self.registry.log_access(
                "forget", pipeline=pipeline, target=cert["subject"],
                before=f"{pipeline}/{replaced}" if replaced else None,
                after=rebuilt_version, reason=reason, actor=self.actor,
                **{k: v for k, v in cert.items() if k not in ("actor", "reason", "at")})
        self._write_json(f"erasure/certificates/{int(cert['at'] * 1000)}.json", cert)

    def _write_json(self, rel: str, doc: Any) -> None:
        path = f"{self._root}/{rel}"
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with self._fs.open_output_stream(f"{path}.tmp") as out:
            out.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        self._fs.move(f"{path}.tmp", path)


def running_since(out: Path, now: float) -> float | None:
    """How long ago the pipeline writing to ``out`` wrote its status, if it seems to run
    (a status newer than its summary, written less than 10 s ago); else None."""
    status, summary = out / "status.json", out / "summary.json"
    if not status.exists():
        return None
    if summary.exists() and summary.stat().st_mtime >= status.stat().st_mtime:
        return None
    try:
        written = float(orjson.loads(status.read_bytes()).get("written_at", 0.0))
    except (OSError, ValueError):
        return None
    return now - written if now - written < _RUNNING_S else None


def _parquet(table: pa.Table) -> bytes:
    """A segment written as :meth:`AuditStore.write_segment` writes one."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", compression_level=1,
                   row_group_size=65_536,
                   use_dictionary=[c for c in _DICTIONARY if c in table.schema.names])
    return bytes(sink.getvalue())


def _arms(deployment: dict[str, Any] | None) -> dict[str, list[str]]:
    """The arms (names) of each version of a manifest's deployment."""
    out: dict[str, list[str]] = {}
    for arm in (deployment or {}).get("arms", []):
        out.setdefault(arm["version"], []).append(arm.get("name", arm.get("role", "?")))
    return out


def _json(line: bytes) -> dict[str, Any] | None:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return row if isinstance(row, dict) else None

