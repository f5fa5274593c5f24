"""Lineage both ways: which model scored a record, and exactly which records trained a model.

Answers come from the committed audit trail and training log (DuckDB over their Parquet
segments, :class:`~pipelines.audit.query.AuditQuery`) and the registry (versions, their
lifecycle, the control log). Nothing here prints; ``riffle audit`` (``pipelines.cli``)
shows the answers, which are plain JSON documents.

**Which records trained a version.** A River version ``<pipeline>/ckpt-N`` is checkpoint
N of a store; its model is the live arm's model in that checkpoint, whose version ``L``
(the label its training-log rows carry) is in the deployment the checkpoint holds. A
scorer keeps one model object per version it holds (an arm, or the warm previous version
that learns as arm ``previous``); the object keeps learning whichever arm it sits in, and
every example it learns is a training-log row labelled ``L``. So:

- V's examples are the rows of V's store with ``model_version == L`` and
  ``commit_seq <= N`` (learned before checkpoint N's barrier: a segment is committed by
  the first checkpoint after its rows), whichever arm learned them (live, candidate,
  previous: a rollback makes the previous version live again with all it learned while
  warm);
- plus, when ``L`` is itself a River version (a checkpoint deployed through the control
  stream: each scorer then continues from its own part's live model), the examples of
  ``L``, by the same rule, in ``L``'s own store (the one its artifact is in);
- a version that left the deployment (neither an arm nor the previous version) and came
  back was loaded again from its artifact: only the rows of its last stay count. A stay
  ends at an example the scorer learned without that version (every River arm held
  learns every example), so when the control log shows a version leaving and coming
  back, its rows before the last such example of each scorer are not counted;
- the pipeline's starting model (the config's ``version``, ``v0``) is not a registered
  version and never comes back once dropped; asked about, it is answered from its rows
  committed so far. A batch-trained (scikit-learn) version learns nothing online: its
  training data is the registry's manifest of it.

Limits: an example that one held arm failed to learn (a model error) looks like a stay's
end for that version when it has left and come back; rows of uncommitted segments are
not counted (they are rewritten by the replay after a failure).

>>> import tempfile
>>> from pipelines.registry import Registry
>>> root = tempfile.mkdtemp()
>>> with Registry(f"sqlite:///{root}/registry.db") as reg:
...     with Lineage(reg, pipeline="p", store_url=f"{root}/checkpoints") as lineage:
...         lineage.model("p/ckpt-000009")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
pipelines.errors.AuditError: unknown model version p/ckpt-000009 (neither registered nor ...
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import orjson

from pipelines.audit.lineage_terms import Term, TrainingData, _decoded, _store_of
from pipelines.audit.query import AuditQuery
from pipelines.errors import AuditError, RiffleError

__all__ = ["Lineage", "Term"]

_PUTS = {"live": ("deployed", "promoted"), "canary": ("canaried",), "ab": ("canaried",),
         "shadow": ("shadowed",)}


class Lineage(TrainingData):
    """Lineage queries of ``pipeline``, whose own audit data is in ``store_url`` (a
    version's may be in another store: the one its artifact is in)."""

    def __init__(self, registry: Any, *, pipeline: str, store_url: str) -> None:
        self.registry = registry
        self.pipeline = pipeline
        self.store = store_url.rstrip("/")
        self._queries: dict[str, AuditQuery] = {}
        self._terms: dict[str, list[Term]] = {}
        self._cuts: dict[tuple[str, str, int], dict[str, int]] = {}
        self._returned: set[str] | None = None
        self._created: dict[str, dict[str, Any]] = {}

    def close(self) -> None:
        for q in self._queries.values():
            q.close()
        self._queries.clear()

    def __enter__(self) -> Lineage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the three questions -----------------------------------------------------------
    def record(self, record_id: str) -> dict[str, Any]:
        """Every trail row of ``record_id`` (served and shadow), who put each row's version
        in its place, and whether, by which arms and into which versions its label was
        learned."""
        trail, training = [], []
        for store in self._stores():
            q = self._query(store)
            trail += _decoded(q.rows("SELECT * FROM trail WHERE record_id = ? "
                                     "ORDER BY role <> 'live', scored_at", [record_id]))
            training += [{**r, "store": store} for r in _decoded(q.rows(
                "SELECT * FROM training WHERE record_id = ? ORDER BY seq", [record_id]))]
        if not trail and not training:
            raise AuditError(f"unknown record {record_id}: not in the committed audit trail "
                             f"of pipeline {self.pipeline}")
        for row in trail:
            row["placed_by"] = self._placed_by(row)
        versions = self._versions_including(training)
        for row in training:
            row["committed_into"] = f"{self.pipeline}/{row['committed_in']}"
            row.pop("store")
        return {"record_id": record_id,
                "served": [r for r in trail if r["role"] != "shadow"],
                "shadow": [r for r in trail if r["role"] == "shadow"],
                "learned": training,
                "learned_by": sorted({f"{r['arm']} ({r['model_version']})" for r in training}),
                "in_versions": sorted(versions),
                "first_version": min(versions, key=self._created_at) if versions else None}

    def model(self, version: str, *, records: bool = False) -> dict[str, Any]:
        """What ``version`` is, its parents, its exact training data (``records``: every
        record id too), its lifecycle, metrics, and every access to it."""
        v = self._version(version)
        if v is None:
            return self._unregistered(version, records=records)
        terms = self.terms(version)
        events = self.registry.events(version)
        created = self._created_details(version)
        out: dict[str, Any] = {
            "version": v.id, "registered": True, "kind": v.kind, "class": v.model_class,
            "params": v.params, "code": v.code.model_dump() if v.code else None,
            "config_hash": v.config_hash, "status": v.status,
            "created_at": _iso(v.created_at), "created_by": v.created_by,
            "artifact": {"uri": v.artifact_uri, "sha256": v.artifact_sha256},
            "parents": self._parents(v), "deployment": created.get("deployment"),
            "metrics": v.metrics,
            "registry_data": v.data.model_dump(mode="json"),
            "lineage": [t.to_json() for t in terms],
            "training": self._training(terms, records=records) if v.kind == "river" else None,
            "lifecycle": [_event(e) for e in events],
            "accesses": self._accesses(version)}
        return out

    def key(self, key: str) -> dict[str, Any]:
        """Every record of the subject ``key``: each one's prediction, its version and its
        label; and every version whose training includes the subject."""
        records: dict[str, dict[str, Any]] = {}
        training = []
        for store in self._stores():
            q = self._query(store)
            for row in _decoded(q.rows(
                    "SELECT record_id, scored_at, topic, partition, \"offset\", model_version, "
                    "arm, role, scorer, checkpoint, prediction, score, committed_in "
                    "FROM trail WHERE key = ? ORDER BY scored_at", [key])):
                rec = records.setdefault(row["record_id"], {
                    "record_id": row["record_id"], "position": _position(row),
                    "_at": (row["topic"], row["partition"], row["offset"]),
                    "served": None, "shadow": [], "label": None, "learned_by": []})
                slot = {k: row[k] for k in ("model_version", "arm", "role", "prediction",
                                            "score", "scored_at", "scorer", "committed_in")}
                if row["role"] == "shadow":
                    rec["shadow"].append(slot)
                else:
                    rec["served"] = slot
            for row in _decoded(q.rows("SELECT * FROM training WHERE key = ? ORDER BY seq",
                                       [key])):
                training.append({**row, "store": store})
                rec = records.setdefault(row["record_id"], {
                    "record_id": row["record_id"], "position": _position(row),
                    "_at": (row["topic"], row["partition"], row["offset"]),
                    "served": None, "shadow": [], "label": None, "learned_by": []})
                rec["label"] = row["label"]
                rec["learned_by"].append(f"{row['arm']} ({row['model_version']})")
        forgotten = self._forgotten(key)
        if not records and not forgotten:
            raise AuditError(f"unknown key: no record of that subject in the committed audit "
                             f"trail of pipeline {self.pipeline}")
        versions = self._versions_including(training)
        ordered = sorted(records.values(), key=lambda r: r["_at"])  # by source position
        for r in ordered:
            del r["_at"]
        return {"n_records": len(records), "n_learned": len({r["record_id"] for r in training}),
                "records": ordered,
                "versions": sorted(versions, key=self._created_at), "forgotten": forgotten}

    def _forgotten(self, key: str) -> list[dict[str, Any]]:
        """The erasure certificates of the subject (``riffle forget``: access-log entries
        whose target is the subject's hash)."""
        from pipelines.audit.subjects import subject_hash

        return [{"log_index": e.index, "at": _iso(e.at), "actor": e.actor, "reason": e.reason,
                 "rebuilt_version": e.after, "removed": e.details.get("removed")}
                for e in self.registry.access_entries(action="forget", target=subject_hash(key),
                                                      pipeline=self.pipeline)]

    # -- who put a version in its place ------------------------------------------------
    def _placed_by(self, row: dict[str, Any]) -> dict[str, Any]:
        """The command (control log) and lifecycle events that put ``row``'s version in
        the arm that scored it: the last such command before it was scored (else the
        first after: a record scored in the instant between a swap and its log entry)."""
        version, role = row["model_version"], row["role"]
        placing = []
        for c in self._commands():
            arms = (c.details.get("deployment") or {}).get("arms", [])
            if any(a["version"] == version and a["role"] == role for a in arms):
                placing.append(c)
        before = [c for c in placing if c.received_at.timestamp() <= row["scored_at"]]
        chosen = before[-1] if before else (placing[0] if placing else None)
        v = self._version(version)
        events = [_event(e) for e in self.registry.events(version)
                  if e.kind in _PUTS.get(role, ())] if v else []
        if chosen is None:
            how = ("the pipeline's starting model (its config)" if v is None
                   else "the run's launch or a restart (no control command)")
            return {"how": how, "command": None, "events": events}
        return {"how": f"{chosen.op} by {chosen.actor}", "command": _command(chosen),
                "events": [e for e in events if e["command"] == chosen.command_id]}

    def _commands(self) -> list[Any]:
        return [c for c in self.registry.commands(self.pipeline) if c.status == "applied"]

    def _returning(self) -> set[str]:
        """Versions the control log shows leaving the deployment and coming back."""
        if self._returned is None:
            seen: set[str] = set()
            left: set[str] = set()
            back: set[str] = set()
            for c in self._commands():
                dep = c.details.get("deployment") or {}
                held: set[str] = {a["version"] for a in dep.get("arms", [])}
                if dep.get("previous"):
                    held.add(dep["previous"])
                back |= held & left
                left |= seen - held
                seen |= held
            self._returned = back
        return self._returned

    # -- the registry and the stores ---------------------------------------------------
    def _version(self, version: str) -> Any:
        try:
            return self.registry.get(version)
        except RiffleError:
            return None

    def _created_details(self, version: str) -> dict[str, Any]:
        if version not in self._created:
            events = self.registry.events(version)
            self._created[version] = next((e.details for e in events if e.kind == "created"),
                                          {})
        return self._created[version]

    def _created_at(self, version: str) -> str:
        v = self._version(version)
        return _iso(v.created_at) if v else ""

    def _parents(self, v: Any) -> list[str]:
        chain, seen = [], {v.id}
        while v.parent_id and v.parent_id not in seen:
            chain.append(v.parent_id)
            seen.add(v.parent_id)
            v = self._version(v.parent_id)
            if v is None:
                break
        return chain

    def _unregistered(self, version: str, *, records: bool) -> dict[str, Any]:
        """A version the trail names but the registry does not (the starting model)."""
        q = self._query(self.store) if self._has_audit(self.store) else None
        if q is None or not q.rows("SELECT 1 FROM trail WHERE model_version = ? LIMIT 1",
                                   [version]):
            raise AuditError(f"unknown model version {version} (neither registered nor in "
                             "the audit trail)")
        terms = self.terms(version)
        return {"version": version, "registered": False,
                "kind": "the pipeline's starting model (config), not a registered version",
                "lineage": [t.to_json() for t in terms],
                "training": self._training(terms, records=records),
                "lifecycle": [], "accesses": self._accesses(version)}

    def _accesses(self, target: str) -> list[dict[str, Any]]:
        """The access log's entries about ``target``."""
        return [_plain(e) for e in self.registry.access_entries(target=target)]

    def _stores(self) -> list[str]:
        """This pipeline's store and those of its registered River versions."""
        stores = {self.store: None}
        for v in self.registry.versions(self.pipeline):
            ckpt = self._created_details(v.id).get("checkpoint") if v.kind == "river" else None
            if ckpt:
                stores.setdefault(_store_of(v.artifact_uri, ckpt), None)
        return [s for s in stores if self._has_audit(s)]

    def _has_audit(self, store: str) -> bool:
        try:
            return bool(self._query(store).commits)
        except AuditError:
            return False

    def _query(self, store: str) -> AuditQuery:
        if store not in self._queries:
            try:
                self._queries[store] = AuditQuery(store)
            except (NotImplementedError, OSError) as e:
                raise AuditError(f"audit data of {store}: {e}") from None
        return self._queries[store]


def _position(row: dict[str, Any]) -> str:
    return f"{row['topic']}[{row['partition']}]@{row['offset']}"


def _iso(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat()


def _event(e: Any) -> dict[str, Any]:
    return {"at": _iso(e.at), "event": e.kind, "actor": e.actor,
            "reason": e.details.get("reason"), "command": e.details.get("command"),
            "details": e.details}


def _command(c: Any) -> dict[str, Any]:
    return {"id": c.id, "command_id": c.command_id, "op": c.op, "version": c.version_id,
            "actor": c.actor, "received_at": _iso(c.received_at), "channel": c.channel,
            "status": c.status, "reason": orjson.loads(c.raw).get("reason")
            if c.raw.startswith("{") else None}


def _plain(entry: Any) -> dict[str, Any]:
    """An access-log entry (a dataclass) as plain JSON."""
    fields = {f.name: getattr(entry, f.name) for f in dataclasses.fields(entry)}
    return {k: _iso(v) if isinstance(v, dt.datetime) else v for k, v in fields.items()}
