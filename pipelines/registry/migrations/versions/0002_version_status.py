"""A version's current lifecycle status, backfilled from its events, and indexed per pipeline.

Before 0002 the status had to be recomputed from the event log on every transition;
with it, a transition locks and checks one row (``SELECT ... FOR UPDATE``), which is
what keeps two writers from both promoting, or both retiring, the same version.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The event kinds that change a version's status (the others only log), as in 0002's code.
_STATUS_EVENTS = ("deployed", "shadowed", "canaried", "promoted", "rolled_back", "retired")


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False,
                                   server_default="created"))
    op.create_index("ix_model_versions_pipeline_status", "model_versions",
                    ["pipeline", "status"])
    # Backfill: a retired version stays retired; otherwise the latest status event wins.
    events = sa.table("lifecycle_events", sa.column("id", sa.Integer),
                      sa.column("version_id", sa.String), sa.column("kind", sa.String))
    versions = sa.table("model_versions", sa.column("id", sa.String),
                        sa.column("status", sa.String))
    conn = op.get_bind()
    rows = conn.execute(sa.select(events.c.version_id, events.c.kind)
                        .where(events.c.kind.in_(_STATUS_EVENTS))
                        .order_by(events.c.id)).all()
    status: dict[str, str] = {}
    for version_id, kind in rows:
        if status.get(version_id) != "retired":
            status[version_id] = kind
    for version_id, kind in status.items():
        conn.execute(sa.update(versions).where(versions.c.id == version_id)
                     .values(status=kind))


def downgrade() -> None:
    op.drop_index("ix_model_versions_pipeline_status", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("status")
