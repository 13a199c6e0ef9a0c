"""Webhooks and the worker registry.

Revision ID: 0004
Revises: 0003

tasks gets `callback_url` and `callback_due_ms` (the next delivery attempt, NULL when nothing is left
to deliver; indexed so the deliverer finds due tasks without a scan); api_keys gets a default
`callback_url`; `webhook_deliveries` records every delivery attempt; `workers` is the registry of
worker processes (id, host, pid, models, gpus, started, last seen, state, current task).
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("callback_url", sa.Text()))
    op.add_column("tasks", sa.Column("callback_due_ms", sa.BigInteger()))
    op.create_index("ix_tasks_callback_due", "tasks", ["callback_due_ms"])
    op.add_column("api_keys", sa.Column("callback_url", sa.Text()))
    op.create_table(
        "webhook_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("ok", sa.Integer(), nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
    )
    op.create_index("ix_webhook_deliveries_task", "webhook_deliveries", ["task_id"])
    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("gpus", sa.String(64), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("task_id", sa.String(36)),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen_ms"])


def downgrade() -> None:
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
    op.drop_index("ix_webhook_deliveries_task", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("callback_url")
    op.drop_index("ix_tasks_callback_due", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("callback_due_ms")
        batch.drop_column("callback_url")
