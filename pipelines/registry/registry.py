"""The model registry: versions, their lineage, and the log of their lifecycle.

A :class:`Registry` is a SQL database (a SQLite file by default, PostgreSQL by URL)
holding one row per model version and one per lifecycle event. It never holds model
bytes: a version points to its artifact in the checkpoint store by URI and SHA-256,
and loading verifies the hash. Opening a registry upgrades its schema to the head
revision. Refused requests (an invalid transition) are recorded too, as ``rejected``
events, so the log shows what was attempted, by whom, and why it was refused.
Every message of a pipeline's control stream is logged as well, applied or rejected
(:meth:`Registry.log_command`), whether or not it could even be parsed. And each of these
writes appends an entry, in its own transaction, to the tamper-evident access and
decision log (a Merkle tree: :mod:`pipelines.registry.access`), where reads of models and
audit data are logged too (:meth:`Registry.log_access`).

>>> import tempfile
>>> reg = Registry(f"sqlite:///{tempfile.mkdtemp()}/registry.db")
>>> v = reg.register(pipeline="local", kind="sklearn", version_id="local/sk-1",
...                  model_class="sklearn.linear_model.LogisticRegression",
...                  params={"C": 1.0}, artifact_uri="/nowhere", artifact_sha256="0" * 64,
...                  actor="ci")
>>> reg.record("local/sk-1", "retired", actor="ci", reason="superseded").kind
'retired'
>>> reg.record("local/sk-1", "promoted", actor="ci")
Traceback (most recent call last):
...
pipelines.errors.RegistryError: local/sk-1 is retired: it cannot be promoted
>>> [e.kind for e in reg.events("local/sk-1")]
['created', 'retired', 'rejected']
>>> reg.log_command(status="rejected", raw=b"{oops", channel="file:/tmp/c.jsonl@0",
...                 error="not JSON").error
'not JSON'
>>> reg.log_access("models.show", pipeline="local", target="local/sk-1", actor="ci")
4
>>> [e.action for e in reg.access_entries()]
['register', 'retire', 'promote', 'command', 'models.show']
>>> reg.access_entries(action="promote")[0].details["event"]
'rejected'
>>> reg.verify_access().ok, reg.access_head()[0]
(True, 5)
>>> reg.close()
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, get_args

import orjson
from pydantic import ValidationError
from sqlalchemy import exists, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pipelines.audit.ledger import ConsistencyProof, InclusionProof, TreeHead, Verification
from pipelines.checkpoint import MANIFEST, CheckpointStore, Manifest
from pipelines.errors import RegistryError, first_line, format_validation_error
from pipelines.protocol import Op
from pipelines.registry import access
from pipelines.registry.access import AccessEntry
from pipelines.registry.migrate import make_engine, upgrade
from pipelines.registry.provenance import (
    CodeVersion,
    DataManifest,
    ModelKind,
    code_version,
    read_artifact,
    read_uri,
    river_version_id,
    sha256_hex,
    store_file_uri,
)
from pipelines.registry.schema import CommandRow, EventRow, VersionRow

__all__ = ["EVENT_KINDS", "MISSING", "RAW_MAX_CHARS", "Change", "CommandRecord", "CommandStatus",
           "EventKind", "LifecycleEvent", "ModelVersion", "Registry", "default_actor"]

EventKind = Literal["created", "checkpointed", "deployed", "shadowed", "canaried", "promoted",
                    "rolled_back", "retired", "rejected", "evaluated", "drift", "retrain"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
# Events that move a version to a new status; the others (created, checkpointed,
# rejected, evaluated: an automatic promotion evaluation that ended without a
# promotion; drift: a drift alarm on the version; retrain: a step of a retrain job it
# started) only log. Kept in step with migration 0002's backfill.
_STATUS_EVENTS = frozenset({"deployed", "shadowed", "canaried", "promoted", "rolled_back",
                            "retired"})
_LIVE_EVENTS = ("deployed", "promoted")
# What the access log calls each lifecycle event (a refusal: the action it refused).
_ACTION_OF_EVENT = {"created": "register", "checkpointed": "checkpoint", "deployed": "deploy",
                    "shadowed": "deploy", "canaried": "deploy", "promoted": "promote",
                    "rolled_back": "rollback", "retired": "retire", "evaluated": "evaluate",
                    "drift": "drift", "retrain": "retrain"}

CommandStatus = Literal["applied", "rejected"]
RAW_MAX_CHARS = 10_000
"""A control message is logged as received up to this many characters."""


class _Missing:
    def __repr__(self) -> str:
        return "(absent)"


MISSING: Any = _Missing()
"""What :meth:`Registry.diff` reports for a key one of the two versions does not have."""


@dataclass(frozen=True)
class ModelVersion:
    id: str
    pipeline: str
    parent_id: str | None
    kind: ModelKind
    model_class: str
    params: dict[str, Any]
    code: CodeVersion | None
    config_hash: str | None
    artifact_uri: str
    artifact_sha256: str
    data: DataManifest
    metrics: dict[str, Any]
    created_at: dt.datetime
    created_by: str
    status: str


@dataclass(frozen=True)
class LifecycleEvent:
    id: int
    version_id: str
    kind: str
    at: dt.datetime
    actor: str
    details: dict[str, Any]


@dataclass(frozen=True)
class CommandRecord:
    """One message of a control stream as the registry logged it (see
    :meth:`Registry.log_command`); the fields a message did not carry are None."""

    id: int
    status: str
    channel: str
    raw: str
    received_at: dt.datetime
    pipeline: str | None
    command_id: str | None
    op: str | None
    version_id: str | None
    actor: str | None
    error: str | None
    details: dict[str, Any]


@dataclass(frozen=True)
class Change:
    """One difference between two versions: ``section`` is version, code, params,
    metrics or data; ``key`` is dotted for nested values."""

    section: str
    key: str
    old: Any
    new: Any


def default_actor() -> str:
    """The OS user running riffle (who a CLI action is attributed to)."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry (some containers)
        return "unknown"


class Registry:
    """The registry at ``url`` (``sqlite:///path/registry.db`` or ``postgresql+psycopg://…``),
    upgraded to the current schema when opened. ``create=False`` refuses to create a
    missing SQLite file (for commands that only read)."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self._engine = make_engine(url, create=create)
        try:
            self.schema_revision = upgrade(self._engine)
        except RegistryError:
            self._engine.dispose()
            raise
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self, *, conflict: str | None = None) -> Iterator[Session]:
        """One transaction; database failures become one-line RegistryErrors (``conflict``
        is the message for a broken uniqueness constraint)."""
        try:
            with self._sessions.begin() as session:
                yield session
        except IntegrityError as e:
            if conflict is None:
                raise RegistryError(f"registry: {first_line(e)}") from None
            raise RegistryError(conflict) from None
        except SQLAlchemyError as e:
            raise RegistryError(f"registry: {first_line(e)}") from None

    # -- writing ---------------------------------------------------------------------

    def register(self, *, pipeline: str, kind: ModelKind, model_class: str,
                 params: dict[str, Any], artifact_uri: str, artifact_sha256: str,
                 version_id: str, parent_id: str | None = None,
                 config_hash: str | None = None,
                 data: DataManifest | dict[str, Any] | None = None,
                 metrics: dict[str, Any] | None = None,
                 code: CodeVersion | Literal["auto"] | None = "auto",
                 actor: str | None = None, logged_as: str = "register",
                 **details: Any) -> ModelVersion:
        """Record a new version and its ``created`` event (with ``details``), and its
        access-log entry (action ``logged_as``: ``train`` for a model just trained).

        ``code="auto"`` asks git for the commit riffle runs from (None without git).
        """
        if kind not in get_args(ModelKind):
            raise RegistryError(f"{version_id}: kind must be river or sklearn, not {kind!r}")
        if not version_id.startswith(f"{pipeline}/"):
            raise RegistryError(f"version id {version_id!r} must start with its pipeline "
                                f"'{pipeline}/'")
        try:
            manifest = data if isinstance(data, DataManifest) else DataManifest.model_validate(
                data or {})
        except ValidationError as e:
            raise RegistryError(f"{version_id}: bad data manifest: "
                                f"{format_validation_error(e)}") from None
        code_v = code_version() if code == "auto" else code
        who = actor or default_actor()
        now = dt.datetime.now(dt.UTC)
        _check_json(version_id, params=params, metrics=metrics or {}, details=details)
        row = VersionRow(
            id=version_id, pipeline=pipeline, parent_id=parent_id, kind=kind,
            model_class=model_class, params=params,
            code_commit=code_v.commit if code_v else None,
            code_dirty=code_v.dirty if code_v else None, config_hash=config_hash,
            artifact_uri=artifact_uri, artifact_sha256=artifact_sha256,
            data_manifest=manifest.model_dump(mode="json"), metrics=metrics or {},
            created_at=now, created_by=who, status="created")
        taken = f"version {version_id} is already registered"
        with self._tx(conflict=taken) as s:  # the conflict: registered concurrently
            if s.get(VersionRow, version_id) is not None:
                raise RegistryError(taken)
            if parent_id is not None and s.get(VersionRow, parent_id) is None:
                raise RegistryError(f"{version_id}: unknown parent version {parent_id}")
            s.add(row)
            s.flush()
            event = EventRow(version_id=version_id, kind="created", at=now, actor=who,
                             details=details)
            s.add(event)
            s.flush()
            access.append(s, logged_as, actor=who, pipeline=pipeline, target=version_id,
                          reason=_reason(details),
                          details={**_without_reason(details), "event": "created",
                                   "event_id": event.id, "kind": kind,
                                   "model_class": model_class, "parent_id": parent_id,
                                   "artifact_sha256": artifact_sha256,
                                   "config_hash": config_hash})
        return _version(row)

    def register_checkpoint(self, store_url: str, manifest: Manifest, *, model_class: str,
                            params: dict[str, Any], n_learned: int,
                            parent_id: str | None = None,
                            metrics: dict[str, Any] | None = None,
                            start_positions: dict[str, int] | None = None,
                            actor: str | None = None) -> ModelVersion:
        """Register a committed checkpoint of a River pipeline as a version.

        Its artifact is the checkpoint's manifest (whose hash the registry keeps; the
        manifest in turn holds each part's hash). Its data ranges run from where its
        lineage began learning (the parent's start, else ``start_positions`` or 0) to
        the checkpoint's positions; ``n_learned`` counts the labels learned over the
        lineage. The deployment the checkpoint holds (which versions served which arms)
        is kept in the ``created`` event's details.
        """
        uri = store_file_uri(store_url, f"{manifest.id}/{MANIFEST}")
        blob = read_uri(uri)
        start = dict(start_positions or {})
        if parent_id is not None:
            start.update({k: r[0] for k, r in self.get(parent_id).data.sources.items()})
        data = DataManifest(sources={src: (start.get(src, 0), end)
                                     for src, end in sorted(manifest.positions.items())},
                            n_learned=n_learned)
        return self.register(
            pipeline=manifest.pipeline, kind="river",
            version_id=river_version_id(manifest.pipeline, manifest.id),
            model_class=model_class, params=params, artifact_uri=uri,
            artifact_sha256=sha256_hex(blob), parent_id=parent_id,
            config_hash=manifest.config_hash, data=data, metrics=metrics, actor=actor,
            checkpoint=manifest.id, events_read=manifest.events_read,
            deployment=manifest.deployment)

    def record(self, version_id: str, kind: str, actor: str | None = None,
               **details: Any) -> LifecycleEvent:
        """Record that ``kind`` happened to a version (``details``: the reason, the numbers
        behind a decision). An invalid transition is recorded as ``rejected`` (with what
        was requested and why it was refused) and raises :class:`RegistryError`."""
        who = actor or default_actor()
        _check_json(version_id, details=details)
        now = dt.datetime.now(dt.UTC)
        with self._tx() as s:
            # Locked: a concurrent writer's transition waits for this one (SQLite's
            # BEGIN IMMEDIATE already serialises writers).
            row = s.get(VersionRow, version_id, with_for_update=True)
            if row is None:
                raise RegistryError(f"unknown model version {version_id}")
            refusal = self._refusal(s, row, kind)
            status_before = row.status
            if refusal is not None:
                details = {"requested": kind, "error": refusal, **details}
                kind = "rejected"
            elif kind in _STATUS_EVENTS:
                row.status = kind
            event = EventRow(version_id=version_id, kind=kind, at=now, actor=who,
                             details=details)
            s.add(event)
            s.flush()
            recorded = _event(event)
            access.append(s, _event_action(kind, details), actor=who, pipeline=row.pipeline,
                          target=version_id, reason=_reason(details),
                          details={**_without_reason(details), "event": kind,
                                   "event_id": event.id,
                                   "status": [status_before, row.status]})
        if refusal is not None:
            raise RegistryError(refusal)
        return recorded

    @staticmethod
    def _refusal(s: Session, row: VersionRow, kind: str) -> str | None:
        """Why ``kind`` cannot happen to ``row`` now; None if it can."""
        if kind not in EVENT_KINDS:
            return f"{row.id}: unknown lifecycle event {kind!r} (one of {', '.join(EVENT_KINDS)})"
        if kind == "created":
            return f"{row.id} already exists: 'created' is recorded by register()"
        if row.status == "retired" and kind != "rejected":
            return f"{row.id} is retired: it cannot be {kind.replace('_', ' ')}"
        if kind == "rolled_back":
            was_live = s.scalar(select(exists().where(EventRow.version_id == row.id,
                                                      EventRow.kind.in_(_LIVE_EVENTS))))
            if not was_live:
                return f"{row.id} was never deployed or promoted: it cannot be rolled back"
        return None

    def log_command(self, *, status: CommandStatus, raw: bytes | str, channel: str,
                    pipeline: str | None = None, command_id: str | None = None,
                    op: str | None = None, version_id: str | None = None,
                    actor: str | None = None, error: str | None = None,
                    received_at: dt.datetime | None = None, before: str | None = None,
                    after: str | None = None, reason: str | None = None,
                    **details: Any) -> CommandRecord:
        """Log a control message and its outcome: ``applied``, or ``rejected`` with the
        ``error``. ``channel`` is where it was read, with its position
        (``kafka:riffle.models[0]@45``); ``details`` are plain JSON (the pause each
        scorer took, the deployment after it). Its access-log entry also has the live
        version ``before`` and ``after`` it, and the command's ``reason``.

        The message is logged as received, whatever it holds: ``raw`` is kept to
        :data:`RAW_MAX_CHARS` characters (``details["raw_chars"]`` then has its full
        length), text fields are cut to their column's width (the channel keeps its
        end, the position), undecodable bytes and NULs are replaced.
        """
        if status not in get_args(CommandStatus):
            raise RegistryError(f"command status must be applied or rejected, not {status!r}")
        if status == "rejected" and not error:
            raise RegistryError("a rejected command is logged with its error")
        if status == "applied" and error is not None:
            raise RegistryError(f"an applied command has no error (got {error!r})")
        _check_json(f"command {command_id or '(unparsed)'}", details=details)
        text = _text(raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw)
        if len(text) > RAW_MAX_CHARS:
            details = {**details, "raw_chars": len(text)}
            text = text[:RAW_MAX_CHARS]
        row = CommandRow(
            command_id=_clip(command_id, 32), pipeline=_clip(pipeline, 100), op=_clip(op, 16),
            version_id=_clip(version_id, 200),
            received_at=received_at or dt.datetime.now(dt.UTC), actor=_clip(actor, 200),
            channel=_text(channel) if len(channel) <= 200 else "..." + _text(channel)[-197:],
            raw=text, status=status, error=_text(error) if error is not None else None,
            details=details)
        with self._tx() as s:
            s.add(row)
            s.flush()
            access.append(s, _command_action(op, details), actor=actor or "(unknown)",
                          pipeline=pipeline, target=version_id, before=before, after=after,
                          reason=reason,
                          details={**details, "status": status, "command_id": command_id,
                                   "command_row": row.id, "channel": row.channel,
                                   "raw_sha256": sha256_hex(text.encode()), "error": error})
            return _command(row)

    def log_access(self, action: str, *, pipeline: str | None = None,
                   target: str | None = None, before: str | None = None,
                   after: str | None = None, reason: str | None = None,
                   actor: str | None = None, **details: Any) -> int:
        """Append an entry to the access and decision log (``actor``: the OS user unless
        named); returns its index. ``details`` are plain JSON; a data subject's key only
        as :func:`pipelines.audit.subjects.subject_hash`."""
        with self._tx() as s:
            return access.append(s, action, actor=actor or default_actor(),
                                 pipeline=pipeline, target=target, before=before,
                                 after=after, reason=reason, details=details)

    # -- reading ---------------------------------------------------------------------

    def commands(self, pipeline: str | None = None, *, limit: int | None = None
                 ) -> list[CommandRecord]:
        """The control messages logged (for ``pipeline``), oldest first; with ``limit``,
        the latest ``limit`` of them."""
        query = select(CommandRow).order_by(CommandRow.id.desc())
        if pipeline is not None:
            query = query.where(CommandRow.pipeline == pipeline)
        if limit is not None:
            query = query.limit(max(limit, 0))
        with self._tx() as s:
            return [_command(row) for row in s.scalars(query)][::-1]

    def access_head(self) -> tuple[int, str]:
        """The access log's tree head: (number of entries, root as hex)."""
        with self._tx() as s:
            return access.head(s)

    def access_entries(self, *, pipeline: str | None = None, target: str | None = None,
                       action: str | None = None, limit: int | None = None
                       ) -> list[AccessEntry]:
        """The access log's entries (about ``pipeline``, ``target``, ``action``), oldest
        first; with ``limit``, the latest ``limit``."""
        with self._tx() as s:
            return access.entries(s, pipeline=pipeline, target=target, action=action,
                                  limit=limit)

    def verify_access(self, size: int | None = None, root: str | None = None, *,
                      heads: Iterable[TreeHead] = ()) -> Verification:
        """Recompute the access log from its entries and check it against the head
        (``size``, ``root``) recorded earlier, and any other recorded ``heads``: the
        result names the first entry edited, deleted, inserted or reordered, or a
        truncated tail (``.finding``; None when all is well)."""
        if (size is None) != (root is None):
            raise RegistryError("access log: a recorded head is a size and a root, both")
        given = [TreeHead(size, root, "the head given")] if size is not None and root else []
        with self._tx() as s:
            return access.verify(s, [*heads, *given])

    def inclusion_proof(self, index: int, size: int | None = None) -> InclusionProof:
        """An inclusion proof of entry ``index`` in the tree of the first ``size``
        entries (default: all), from the entries as they are now."""
        with self._tx() as s:
            return access.inclusion(s, index, size)

    def consistency_proof(self, m: int, n: int | None = None) -> ConsistencyProof:
        """A consistency proof from the tree of the first ``m`` entries to the first
        ``n`` (default: all), from the entries as they are now."""
        with self._tx() as s:
            return access.consistency(s, m, n)


    def get(self, version_id: str) -> ModelVersion:
        with self._tx() as s:
            row = s.get(VersionRow, version_id)
            if row is None:
                raise RegistryError(f"unknown model version {version_id}")
            return _version(row)

    def versions(self, pipeline: str | None = None) -> list[ModelVersion]:
        """Every version (of ``pipeline``), oldest first."""
        query = select(VersionRow).order_by(VersionRow.created_at, VersionRow.id)
        if pipeline is not None:
            query = query.where(VersionRow.pipeline == pipeline)
        with self._tx() as s:
            return [_version(row) for row in s.scalars(query)]

    def events(self, version_id: str) -> list[LifecycleEvent]:
        """A version's lifecycle, in the order it was recorded."""
        with self._tx() as s:
            if s.get(VersionRow, version_id) is None:
                raise RegistryError(f"unknown model version {version_id}")
            rows = s.scalars(select(EventRow).where(EventRow.version_id == version_id)
                             .order_by(EventRow.id))
            return [_event(row) for row in rows]

    def diff(self, a: str, b: str) -> list[Change]:
        """What changed from version ``a`` to ``b``: identity, code, params, metrics, data."""
        va, vb = self.get(a), self.get(b)
        changes = []
        for key in ("kind", "model_class", "parent_id", "config_hash", "artifact_sha256"):
            if getattr(va, key) != getattr(vb, key):
                changes.append(Change("version", key, getattr(va, key), getattr(vb, key)))
        code_a = va.code.model_dump() if va.code else {}
        code_b = vb.code.model_dump() if vb.code else {}
        changes += _dict_changes("code", code_a, code_b)
        changes += _dict_changes("params", va.params, vb.params)
        changes += _dict_changes("metrics", va.metrics, vb.metrics)
        changes += _dict_changes("data", va.data.model_dump(mode="json"),
                                 vb.data.model_dump(mode="json"))
        return changes

    # -- artifacts -------------------------------------------------------------------

    def load_artifact(self, version_id: str) -> bytes:
        """The version's artifact bytes, verified against the registered SHA-256."""
        v = self.get(version_id)
        return read_artifact(v.artifact_uri, v.artifact_sha256)

    def open_checkpoint(self, version_id: str) -> tuple[CheckpointStore, Manifest]:
        """A River version's checkpoint: its manifest verified against the registry, and
        the store to read its parts from (:meth:`CheckpointStore.read_part` verifies
        each part against the manifest)."""
        v = self.get(version_id)
        if v.kind != "river":
            raise RegistryError(f"{version_id} is a {v.kind} model, not a River checkpoint")
        blob = read_artifact(v.artifact_uri, v.artifact_sha256)
        try:
            manifest = Manifest.model_validate(orjson.loads(blob))
        except ValueError as e:
            raise RegistryError(f"{version_id}: checkpoint manifest is damaged: {e}") from None
        suffix = f"/{manifest.id}/{MANIFEST}"
        if not v.artifact_uri.endswith(suffix):
            raise RegistryError(f"{version_id}: artifact {v.artifact_uri} is not the manifest "
                                f"of checkpoint {manifest.id}")
        return CheckpointStore(v.artifact_uri.removesuffix(suffix)), manifest


def _reason(details: dict[str, Any]) -> str | None:
    reason = details.get("reason")
    return reason if isinstance(reason, str) else None


def _without_reason(details: dict[str, Any]) -> dict[str, Any]:
    """The details but a string reason (the access log has a column for it)."""
    return {k: v for k, v in details.items() if not (k == "reason" and isinstance(v, str))}


def _event_action(kind: str, details: dict[str, Any]) -> str:
    """The access log's action for a lifecycle event: a refusal is logged as the action
    refused; an automatic decision's action starts with ``auto-``."""
    if kind == "rejected":
        return _ACTION_OF_EVENT.get(str(details.get("requested")), "lifecycle")
    return ("auto-" if _automatic(details) else "") + _ACTION_OF_EVENT.get(kind, "lifecycle")


def _command_action(op: str | None, details: dict[str, Any]) -> str:
    action = ("auto-" if _automatic(details) else "") + (op or "").replace("_", "-")
    # A message that could not be parsed (or names no op riffle knows) is a "command".
    return action if op in get_args(Op) else "command"


def _automatic(details: dict[str, Any]) -> bool:
    decision = details.get("decision")
    return isinstance(decision, dict) and decision.get("auto") is True


def _check_json(version_id: str, **fields: dict[str, Any]) -> None:
    for name, value in fields.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as e:
            raise RegistryError(f"{version_id}: {name} must be plain JSON: {e}") from None


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _dict_changes(section: str, a: dict[str, Any], b: dict[str, Any]) -> list[Change]:
    fa, fb = _flatten(a), _flatten(b)
    return [Change(section, key, fa.get(key, MISSING), fb.get(key, MISSING))
            for key in sorted(fa.keys() | fb.keys()) if fa.get(key, MISSING) != fb.get(key,
                                                                                  MISSING)]


def _version(row: VersionRow) -> ModelVersion:
    code = (CodeVersion(commit=row.code_commit, dirty=bool(row.code_dirty))
            if row.code_commit else None)
    return ModelVersion(
        id=row.id, pipeline=row.pipeline, parent_id=row.parent_id,
        kind=row.kind,  # type: ignore[arg-type]  # checked when registered
        model_class=row.model_class, params=row.params, code=code,
        config_hash=row.config_hash, artifact_uri=row.artifact_uri,
        artifact_sha256=row.artifact_sha256,
        data=DataManifest.model_validate(row.data_manifest), metrics=row.metrics,
        created_at=row.created_at, created_by=row.created_by, status=row.status)


def _event(row: EventRow) -> LifecycleEvent:
    return LifecycleEvent(id=row.id, version_id=row.version_id, kind=row.kind, at=row.at,
                          actor=row.actor, details=row.details)


def _command(row: CommandRow) -> CommandRecord:
    return CommandRecord(id=row.id, status=row.status, channel=row.channel, raw=row.raw,
                         received_at=row.received_at, pipeline=row.pipeline,
                         command_id=row.command_id, op=row.op, version_id=row.version_id,
                         actor=row.actor, error=row.error, details=row.details)


def _text(s: str) -> str:
    """``s`` as every backend stores it: valid UTF-8 (no lone surrogates), no NUL
    (PostgreSQL's text refuses it)."""
    return s.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def _clip(s: str | None, width: int) -> str | None:
    return None if s is None else _text(s)[:width]
