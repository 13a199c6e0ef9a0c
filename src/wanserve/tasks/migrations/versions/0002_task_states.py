"""Task state invariants as CHECK constraints; the task_failures history.

Revision ID: 0002
Revises: 0001

The constraints are written out here (not imported from schema.py) so this revision never changes;
schema.TASK_CHECKS must match them (tests/test_task_store.py compares the database with schema.py).
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_TERMINAL = "'CANCELED', 'FAILED', 'SUCCEEDED'"
CHECKS = {
    "ck_tasks_status": "status IN ('CANCELED', 'FAILED', 'PENDING', 'RUNNING', 'SUCCEEDED')",
    "ck_tasks_end_iff_terminal": f"(status IN ({_TERMINAL}) AND end_ms IS NOT NULL) "
                                 f"OR (status NOT IN ({_TERMINAL}) AND end_ms IS NULL)",
    "ck_tasks_running_owned": "status <> 'RUNNING' OR (worker_id IS NOT NULL AND lease_until_ms IS NOT NULL)",
    "ck_tasks_lease_only_running": "lease_until_ms IS NULL OR status = 'RUNNING'",
    "ck_tasks_failed_code": "status <> 'FAILED' OR code IS NOT NULL",
    "ck_tasks_succeeded_result": "status <> 'SUCCEEDED' OR result IS NOT NULL",
}


def upgrade() -> None:
    # Bring rows written before the constraints into line (the old code kept these invariants, but a
    # hand-edited database might not); a row that still breaks one stops the migration.
    op.execute("UPDATE tasks SET lease_until_ms = NULL WHERE status <> 'RUNNING'")
    op.execute(f"UPDATE tasks SET end_ms = COALESCE(scheduled_ms, submit_ms) "
               f"WHERE status IN ({_TERMINAL}) AND end_ms IS NULL")
    op.execute("UPDATE tasks SET code = 'InternalError' WHERE status = 'FAILED' AND code IS NULL")
    with op.batch_alter_table("tasks") as batch:
        for name, sql in CHECKS.items():
            batch.create_check_constraint(name, sa.text(sql))
    op.create_table(
        "task_failures",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(36), sa.ForeignKey("tasks.id"), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(64)),
        sa.Column("code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_task_failures_task", "task_failures", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_task_failures_task", table_name="task_failures")
    op.drop_table("task_failures")
    with op.batch_alter_table("tasks") as batch:
        for name in CHECKS:
            batch.drop_constraint(name, type_="check")
