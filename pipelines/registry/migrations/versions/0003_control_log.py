"""The control log: every command a pipeline received on its control stream, and its outcome.

One row per message, applied or rejected: a message that could not be parsed has no
command id or op, and a command about a version the registry does not know is recorded
all the same (``version_id`` is deliberately not a foreign key). ``channel`` says where
it was read, with its position (``kafka:riffle.models[0]@45``).

Revision ID: 0003
Revises: 0002
Create Date: 2025-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "control_commands",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("command_id", sa.String(32), nullable=True),
        sa.Column("pipeline", sa.String(100), nullable=True),
        sa.Column("op", sa.String(16), nullable=True),
        sa.Column("version_id", sa.String(200), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("channel", sa.String(200), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_control_commands_pipeline", "control_commands", ["pipeline"])


def downgrade() -> None:
    op.drop_index("ix_control_commands_pipeline", table_name="control_commands")
    op.drop_table("control_commands")
