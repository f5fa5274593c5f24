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

**Batch-trained versions** (:mod:`pipelines.audit.forget_batch`): a scikit-learn version
whose training rows hold the subject is retrained without them through ``riffle train``'s
own path, and retired; one whose history is gone is retired; their pickles are deleted.

The halves: :mod:`pipelines.audit.forget_replay` (the models), :mod:`pipelines.audit.forget_scrub`
(the data); this module holds the verb and the certificate.

Limits: the replay needs the training log and the trail's features of every example
since B (they outlive pruned checkpoints), and every River version a scorer learned into
since B must be in B itself and stay in the deployment: a River version hot-swapped in
after B (deployed, or promoted from an arm launched after B) is refused by name, and so
is one that left the deployment after B and came back (a scorer reloads it from its
artifact); a batch-trained arm deployed after B learns nothing and is kept. An early
label (one that came before its event) still pending for a record never scored holds no
key and stays.
"""

from __future__ import annotations

import getpass
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from pipelines.audit.forget_batch import find_batch_versions, forget_batch_versions
from pipelines.audit.forget_replay import Replaying
from pipelines.audit.forget_scrub import OUTPUT_FILES, Scrubbing
from pipelines.audit.query import AuditQuery
from pipelines.audit.subjects import subject_hash
from pipelines.audit.suppression import add_suppressed
from pipelines.audit.trail import AuditStore
from pipelines.checkpoint import CheckpointStore, Manifest
from pipelines.config import PipelineConfig
from pipelines.errors import AuditError
from pipelines.storage import resolve

__all__ = ["OUTPUT_FILES", "Forgetter", "running_since"]

_RUNNING_S = 10.0


def _actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "unknown"


class Forgetter(Replaying, Scrubbing):
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
        found_in_batch = any(p.action == "retrain" for p in batch)
        if first is None and not record_ids and not suppress and not found_in_batch:
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


def _arms(deployment: dict[str, Any] | None) -> dict[str, list[str]]:
    """The arms (names) of each version of a manifest's deployment."""
    out: dict[str, list[str]] = {}
    for arm in (deployment or {}).get("arms", []):
        out.setdefault(arm["version"], []).append(arm.get("name", arm.get("role", "?")))
    return out


