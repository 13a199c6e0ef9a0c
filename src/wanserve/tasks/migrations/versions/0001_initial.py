"""Initial schema: accounts, api_keys, tasks, uploads.

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("account_id", sa.String(64), sa.ForeignKey("accounts.id"), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
        sa.Column("revoked_ms", sa.BigInteger),
    )
    op.create_table(
        "tasks",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("api_key_id", sa.String(32), nullable=False),
        sa.Column("request_id", sa.String(36), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("request", sa.JSON, nullable=False),
        sa.Column("submit_ms", sa.BigInteger, nullable=False),
        sa.Column("scheduled_ms", sa.BigInteger),
        sa.Column("end_ms", sa.BigInteger),
        sa.Column("code", sa.String(64)),
        sa.Column("message", sa.Text),
        sa.Column("result", sa.JSON),
        sa.Column("progress", sa.JSON),
        sa.Column("worker_id", sa.String(64)),
        sa.Column("lease_until_ms", sa.BigInteger),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    )
    op.create_index("ix_tasks_status_submit", "tasks", ["status", "submit_ms"])
    op.create_index("ix_tasks_account_submit", "tasks", ["account_id", "submit_ms"])
    op.create_table(
        "uploads",
        sa.Column("key", sa.String(512), primary_key=True),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_uploads_created", "uploads", ["created_ms"])


def downgrade() -> None:
    op.drop_table("uploads")
    op.drop_table("tasks")
    op.drop_table("api_keys")
    op.drop_table("accounts")
