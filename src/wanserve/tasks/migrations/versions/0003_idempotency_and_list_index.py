"""Idempotent create (X-Idempotency-Key) and the list's covering index.

Revision ID: 0003
Revises: 0002

tasks gets `idempotency_key` and `request_hash` (both nullable: most tasks have no key), unique per
account (NULLs never collide). The list's index `ix_tasks_account_list` (account_id, submit_ms DESC,
id, status, model, end_ms) replaces `ix_tasks_account_submit`: it is in the list's order and holds
every column the list's filters and the lifetime rule read, so the count and a page's ids are read
from the index alone.
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tasks", sa.Column("idempotency_key", sa.String(255)))
    op.add_column("tasks", sa.Column("request_hash", sa.String(64)))
    op.create_index("ux_tasks_account_idempotency", "tasks", ["account_id", "idempotency_key"], unique=True)
    op.create_index("ix_tasks_account_list", "tasks",
                    ["account_id", sa.text("submit_ms DESC"), "id", "status", "model", "end_ms"])
    op.drop_index("ix_tasks_account_submit", table_name="tasks")


def downgrade() -> None:
    op.create_index("ix_tasks_account_submit", "tasks", ["account_id", "submit_ms"])
    op.drop_index("ix_tasks_account_list", table_name="tasks")
    op.drop_index("ux_tasks_account_idempotency", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("request_hash")
        batch.drop_column("idempotency_key")
