"""The registry's tables as SQLAlchemy 2.0 ORM classes: model versions, their lifecycle,
the log of control commands, and the access and decision log (a Merkle tree's leaves).

These classes describe the schema at the *head* migration; the migrations in
``migrations/versions`` are what creates and upgrades it (a test checks that the two
agree). Times are stored in UTC and always come back timezone-aware.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

__all__ = ["AccessHeadRow", "AccessRow", "Base", "CommandRow", "EventRow", "UTCDateTime",
           "VersionRow"]


class UTCDateTime(TypeDecorator[dt.datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no zone: UTC is added back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the registry stores aware UTC times")
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect
                             ) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), dict[str, Any]: JSON()}


class VersionRow(Base):
    """One model version: what it is, where its bytes are, and what it learned from."""

    __tablename__ = "model_versions"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(100), index=True)
    parent_id: Mapped[str | None] = mapped_column(String(200), ForeignKey("model_versions.id"))
    kind: Mapped[str] = mapped_column(String(16))
    model_class: Mapped[str] = mapped_column(String(300))
    params: Mapped[dict[str, Any]]
    code_commit: Mapped[str | None] = mapped_column(String(64))
    code_dirty: Mapped[bool | None] = mapped_column(Boolean)
    config_hash: Mapped[str | None] = mapped_column(String(64))
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_sha256: Mapped[str] = mapped_column(String(64))
    data_manifest: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[dt.datetime]
    created_by: Mapped[str] = mapped_column(String(200))
    # Revision 0002: the state the lifecycle events have led to, kept beside them so a
    # transition is checked on one locked row.
    status: Mapped[str] = mapped_column(String(16), server_default="created")

    events: Mapped[list[EventRow]] = relationship(back_populates="version",
                                                  order_by="EventRow.id")

    __table_args__ = (Index("ix_model_versions_pipeline_status", "pipeline", "status"),)


class EventRow(Base):
    """One lifecycle event of a version: what happened, when, who did it and why."""

    __tablename__ = "lifecycle_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(String(200), ForeignKey("model_versions.id"),
                                            index=True)
    kind: Mapped[str] = mapped_column(String(16))
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(200))
    details: Mapped[dict[str, Any]]

    version: Mapped[VersionRow] = relationship(back_populates="events")


class CommandRow(Base):
    """Revision 0003: one message of a pipeline's control stream and what became of it
    (``applied`` or ``rejected`` with the error). Fields the message did not carry (it
    could not be parsed) are null; ``version_id`` is no foreign key, so that a command
    naming an unknown version is recorded too."""

    __tablename__ = "control_commands"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    command_id: Mapped[str | None] = mapped_column(String(32))
    pipeline: Mapped[str | None] = mapped_column(String(100), index=True)
    op: Mapped[str | None] = mapped_column(String(16))
    version_id: Mapped[str | None] = mapped_column(String(200))
    received_at: Mapped[dt.datetime]
    actor: Mapped[str | None] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(200))
    """Where it was read, with its position: ``file:/path/control.jsonl@123``."""
    raw: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]]


class AccessRow(Base):
    """Revision 0004: one entry of the access and decision log (append-only; indexes run
    0, 1, 2, ... without gaps). ``leaf_hash`` is SHA-256(0x00 || the entry's canonical
    bytes) in hex, written when it was appended (see :mod:`pipelines.audit.ledger`)."""

    __tablename__ = "access_log"

    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[dt.datetime]
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str | None] = mapped_column(String(100), index=True)
    target: Mapped[str | None] = mapped_column(String(200), index=True)
    version_before: Mapped[str | None] = mapped_column(String(200))
    version_after: Mapped[str | None] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]]
    leaf_hash: Mapped[str] = mapped_column(String(64))


class AccessHeadRow(Base):
    """Revision 0004: the log's tree head after its last entry, and the frontier (the
    perfect subtrees' roots) that the next append extends: one row, ``id`` 1, locked by
    every appender. A cache of what the entries hash to, never trusted by verification."""

    __tablename__ = "access_log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[str] = mapped_column(String(64))
    frontier: Mapped[list[str]] = mapped_column(JSON)
