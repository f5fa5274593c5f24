"""The access and decision log: who did or read what, when and why, as a Merkle tree's leaves.

``access_log`` holds the entries (index 0, 1, 2, ... without gaps, each with its leaf
hash); ``access_log_head`` holds one row, the tree head after the last entry and the
frontier the next append extends (appenders lock it: that is what keeps two writers from
taking the same index). The log starts empty: what happened before this revision is in
the lifecycle events and the control log, but was never part of a tree.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "access_log",
        sa.Column("idx", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("pipeline", sa.String(100), nullable=True),
        sa.Column("target", sa.String(200), nullable=True),
        sa.Column("version_before", sa.String(200), nullable=True),
        sa.Column("version_after", sa.String(200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
    )
    op.create_index("ix_access_log_pipeline", "access_log", ["pipeline"])
    op.create_index("ix_access_log_target", "access_log", ["target"])
    head = op.create_table(
        "access_log_head",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("frontier", sa.JSON(), nullable=False),
    )
    # The empty tree: its root is SHA-256 of nothing (RFC 9162).
    op.bulk_insert(head, [{"id": 1, "size": 0, "root": hashlib.sha256(b"").hexdigest(),
                           "frontier": []}])


def downgrade() -> None:
    op.drop_table("access_log_head")
    op.drop_index("ix_access_log_target", table_name="access_log")
    op.drop_index("ix_access_log_pipeline", table_name="access_log")
    op.drop_table("access_log")
