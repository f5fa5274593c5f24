"""Initial registry: model versions and their lifecycle events.

Revision ID: 0001
Revises:
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("id", sa.String(200), primary_key=True),
        sa.Column("pipeline", sa.String(100), nullable=False),
        sa.Column("parent_id", sa.String(200), sa.ForeignKey("model_versions.id"),
                  nullable=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("model_class", sa.String(300), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("code_commit", sa.String(64), nullable=True),
        sa.Column("code_dirty", sa.Boolean(), nullable=True),
        sa.Column("config_hash", sa.String(64), nullable=True),
        sa.Column("artifact_uri", sa.Text(), nullable=False),
        sa.Column("artifact_sha256", sa.String(64), nullable=False),
        sa.Column("data_manifest", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(200), nullable=False),
    )
    op.create_index("ix_model_versions_pipeline", "model_versions", ["pipeline"])
    op.create_table(
        "lifecycle_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("version_id", sa.String(200), sa.ForeignKey("model_versions.id"),
                  nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_lifecycle_events_version_id", "lifecycle_events", ["version_id"])


def downgrade() -> None:
    op.drop_index("ix_lifecycle_events_version_id", table_name="lifecycle_events")
    op.drop_table("lifecycle_events")
    op.drop_index("ix_model_versions_pipeline", table_name="model_versions")
    op.drop_table("model_versions")
