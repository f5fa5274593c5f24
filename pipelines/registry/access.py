"""The access and decision log in the registry's database: append an entry, read the tree
head, verify the log against recorded heads, and prove inclusion and consistency.

An entry says who (``actor``: the OS user or an API principal), when (``at``, UTC), what
(``action``: ``deploy``, ``promote``, ``models.show``, ``audit.verify``...), on what
(``pipeline``, ``target``: a version id or another object), the versions ``before`` and
``after``, why (``reason``), and the numbers (``details``, plain JSON). Its leaf hash is
SHA-256(0x00 || :func:`~pipelines.audit.ledger.entry_bytes`), so the log is a Merkle tree
as Certificate Transparency keeps one (:mod:`pipelines.audit.ledger`).

- **Same transaction.** :func:`append` takes the caller's session: a lifecycle write and
  its entry are committed together, or neither is.
- **One writer at a time.** An appender locks the head row (``SELECT ... FOR UPDATE`` on
  PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` already holds the write lock) before it reads
  the next index, so concurrent processes get contiguous, unique indexes.
- **One snapshot.** Verification and proofs read every entry and the head in one
  snapshot (PostgreSQL: REPEATABLE READ), so a concurrent append cannot look like damage.
- **No personal data in clear.** A data subject's key is logged only as
  :func:`~pipelines.audit.subjects.subject_hash`: details under a subject field (``key``,
  ``subject``...) holding anything else are refused.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from pyarrow import fs
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipelines.audit.ledger import (
    ConsistencyProof,
    Frontier,
    InclusionProof,
    StoredEntry,
    TreeHead,
    Verification,
    check_log,
    consistency_proof,
    entry_bytes,
    inclusion_proof,
    leaf_hash,
    tree_root,
)
from pipelines.audit.subjects import is_subject_hash
from pipelines.errors import AuditError, RegistryError
from pipelines.registry.schema import AccessHeadRow, AccessRow
from pipelines.storage import resolve

__all__ = ["SUBJECT_FIELDS", "AccessEntry", "append", "check_details", "consistency",
           "entries", "head", "inclusion", "recorded_heads", "verify"]

_ACTION = re.compile(r"[a-z][a-z0-9._-]{0,63}")
SUBJECT_FIELDS = frozenset({"key", "keys", "subject", "subjects", "subject_key",
                            "subject_keys", "record_key"})
"""Details fields that name data subjects: they may hold subject hashes only."""
_HEAD_ID = 1


@dataclass(frozen=True)
class AccessEntry:
    index: int
    at: dt.datetime
    actor: str
    action: str
    pipeline: str | None
    target: str | None
    before: str | None
    after: str | None
    reason: str | None
    details: dict[str, Any]
    leaf_hash: str


def _fields(row: AccessRow) -> dict[str, Any]:
    """What of a row is hashed (everything but its index, which :func:`entry_bytes` adds,
    and its leaf hash)."""
    return {"at": row.at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
            "actor": row.actor, "action": row.action, "pipeline": row.pipeline,
            "target": row.target, "before": row.version_before, "after": row.version_after,
            "reason": row.reason, "details": row.details}


def check_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` as the database will give them back (plain JSON, string keys), or a
    :class:`RegistryError` naming what is refused: not JSON, or a subject field holding
    anything but subject hashes."""
    try:
        plain = json.loads(json.dumps(details, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise RegistryError(f"access log: details must be plain JSON: {e}") from None
    _no_raw_subjects(plain, "details")
    return dict(plain)


def _no_raw_subjects(value: Any, where: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if k in SUBJECT_FIELDS:
                values = v if isinstance(v, list) else [v]
                if not all(is_subject_hash(x) for x in values):
                    raise RegistryError(f"access log: {where}.{k} must hold subject_hash(key), "
                                        "never a data subject's key in clear")
            _no_raw_subjects(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_raw_subjects(v, f"{where}[{i}]")


def _text(s: str | None, width: int | None = None) -> str | None:
    """Storable on every backend (valid UTF-8, no NUL) and within its column: what is
    hashed is exactly what is stored."""
    if s is None:
        return None
    clean = s.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")
    return clean if width is None else clean[:width]


def append(s: Session, action: str, *, actor: str, pipeline: str | None = None,
           target: str | None = None, before: str | None = None, after: str | None = None,
           reason: str | None = None, details: dict[str, Any] | None = None) -> int:
    """Append one entry in ``s``'s transaction; returns its index."""
    if not isinstance(action, str) or not _ACTION.fullmatch(action):
        raise RegistryError(f"access log: action {action!r} must be lowercase letters, digits "
                            "and . _ - (at most 64)")
    plain = check_details(details or {})
    head = s.execute(select(AccessHeadRow).where(AccessHeadRow.id == _HEAD_ID)
                     .with_for_update().execution_options(populate_existing=True)
                     ).scalar_one_or_none()
    if head is None:
        raise RegistryError("access log: its head row is gone (the database was edited): "
                            "run riffle audit verify")
    row = AccessRow(idx=head.size, at=dt.datetime.now(dt.UTC), actor=_text(actor, 200) or "",
                    action=action, pipeline=_text(pipeline, 100), target=_text(target, 200),
                    version_before=_text(before, 200), version_after=_text(after, 200),
                    reason=_text(reason), details=plain)
    leaf = leaf_hash(entry_bytes(row.idx, _fields(row)))
    row.leaf_hash = leaf.hex()
    frontier = Frontier(head.size, tuple(bytes.fromhex(h) for h in head.frontier)).append(leaf)
    head.size = frontier.size
    head.root = frontier.root().hex()
    head.frontier = [node.hex() for node in frontier.nodes]
    s.add(row)
    s.flush()
    return row.idx


def head(s: Session) -> tuple[int, str]:
    """(size, root hex) after the last entry, from the head row: O(1)."""
    row = s.get(AccessHeadRow, _HEAD_ID)
    if row is None:
        raise RegistryError("access log: its head row is gone (the database was edited): "
                            "run riffle audit verify")
    return row.size, row.root


def entries(s: Session, *, pipeline: str | None = None, target: str | None = None,
            action: str | None = None, limit: int | None = None) -> list[AccessEntry]:
    """The entries (filtered), oldest first; with ``limit``, the latest ``limit``."""
    query = select(AccessRow).order_by(AccessRow.idx.desc())
    if pipeline is not None:
        query = query.where(AccessRow.pipeline == pipeline)
    if target is not None:
        query = query.where(AccessRow.target == target)
    if action is not None:
        query = query.where(AccessRow.action == action)
    if limit is not None:
        query = query.limit(max(limit, 0))
    return [AccessEntry(index=r.idx, at=r.at, actor=r.actor, action=r.action,
                        pipeline=r.pipeline, target=r.target, before=r.version_before,
                        after=r.version_after, reason=r.reason, details=r.details,
                        leaf_hash=r.leaf_hash) for r in s.scalars(query)][::-1]


def _snapshot(s: Session) -> None:
    """Make the rest of ``s``'s transaction read one snapshot (call it first)."""
    if s.get_bind().dialect.name == "postgresql":
        s.connection(execution_options={"isolation_level": "REPEATABLE READ"})


def verify(s: Session, heads: Iterable[TreeHead] = ()) -> Verification:
    """Every entry recomputed and checked against its leaf hash, against ``heads`` and
    against the head row (which names a truncated tail even when no head was recorded)."""
    _snapshot(s)
    stored = [StoredEntry(r.idx, _fields(r), r.leaf_hash)
              for r in s.scalars(select(AccessRow).order_by(AccessRow.idx))]
    own = s.get(AccessHeadRow, _HEAD_ID)
    recorded = list(heads)
    if own is not None:
        recorded.append(TreeHead(own.size, own.root, "the registry's head row"))
    return check_log(stored, recorded)


def _leaves(s: Session, size: int | None) -> tuple[list[bytes], int]:
    leaves = list(verify(s).leaves)
    n = len(leaves) if size is None else size
    if not 0 <= n <= len(leaves):
        raise RegistryError(f"access log: it has {len(leaves)} entries, not {n}")
    return leaves, n


def inclusion(s: Session, index: int, size: int | None = None) -> InclusionProof:
    """That entry ``index``, as it is now, is in the tree of the first ``size`` entries
    (default: all), recomputed from the entries as they are now."""
    leaves, n = _leaves(s, size)
    if not 0 <= index < n:
        raise RegistryError(f"access log: no entry {index} among the first {n}")
    path = inclusion_proof(leaves, index, n)
    return InclusionProof(index, n, leaves[index].hex(), tuple(h.hex() for h in path),
                          tree_root(leaves[:n]).hex())


def consistency(s: Session, first: int, second: int | None = None) -> ConsistencyProof:
    """That the first ``first`` entries are a prefix of the first ``second`` (default:
    all), with both roots recomputed from the entries as they are now."""
    leaves, n = _leaves(s, second)
    if not 0 <= first <= n:
        raise RegistryError(f"access log: no consistency proof from {first} to {n} entries "
                            f"(the first size must be 0..{n})")
    path = consistency_proof(leaves, first, n)
    return ConsistencyProof(first, n, tree_root(leaves[:first]).hex(),
                            tree_root(leaves[:n]).hex(), tuple(h.hex() for h in path))


def recorded_heads(store_url: str) -> list[TreeHead]:
    """The tree heads recorded in a checkpoint store's manifests (their ``access_log``
    field, ``{"size": n, "root": hex}``), oldest checkpoint first; none if the store does
    not exist. Read from the manifests' JSON as written, whatever else they hold."""
    from pipelines.checkpoint import MANIFEST

    try:
        filesystem, root = resolve(store_url)
        infos = filesystem.get_file_info(fs.FileSelector(root.rstrip("/"),
                                                         allow_not_found=True))
    except (OSError, ValueError) as e:
        raise AuditError(f"checkpoint store {store_url}: {e}") from None
    heads: list[tuple[int, TreeHead]] = []
    for info in infos:
        name = info.base_name
        if info.type != fs.FileType.Directory or not name.startswith("ckpt-"):
            continue
        try:
            with filesystem.open_input_stream(f"{info.path}/{MANIFEST}") as f:
                manifest = orjson.loads(f.read())
        except FileNotFoundError:
            continue  # no manifest, no checkpoint
        except (OSError, orjson.JSONDecodeError) as e:
            raise AuditError(f"checkpoint {name}: manifest unreadable: {e}") from None
        recorded = manifest.get("access_log") if isinstance(manifest, dict) else None
        if recorded is None:
            continue
        try:
            size, hex_root = int(recorded["size"]), str(recorded["root"])
            bytes.fromhex(hex_root)
        except (KeyError, TypeError, ValueError):
            raise AuditError(f"checkpoint {name}: access_log {recorded!r} is not "
                             '{"size": n, "root": hex}') from None
        heads.append((int(manifest.get("seq", 0)), TreeHead(size, hex_root,
                                                           f"checkpoint {name}")))
    return [h for _, h in sorted(heads, key=lambda p: p[0])]
