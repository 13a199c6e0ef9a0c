"""The queue: model routing, the accounts' round robin, and the claim's indexes.

Revision ID: 0005
Revises: 0004

tasks gets `route_model`, the canonical catalog name workers route on (`model` keeps the caller's
spelling): filled from the stored request's `model` (the normaliser writes the canonical name there),
else from the catalog, else `model` itself. `queue_accounts` (account_id, last_claim_ms) is the round
robin's state, one row for each account with a queued or running task. Three partial indexes (only
PENDING, or only RUNNING, rows) back the claim's probes, so a claim costs the same at 50 queued tasks
and at 50,000 (docs/queue.md).
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# (the second terms keep the list's queries off these indexes: see schema.py)
INDEXES = {  # name: (columns, condition)
    "ix_tasks_pending_route": (["route_model", "account_id", "submit_ms"],
                               "status = 'PENDING' AND route_model IS NOT NULL"),
    "ix_tasks_running_lease": (["lease_until_ms"], "status = 'RUNNING' AND lease_until_ms IS NOT NULL"),
    "ix_tasks_running_route": (["route_model", "account_id"],
                               "status = 'RUNNING' AND route_model IS NOT NULL"),
}


def _backfill_route_model() -> None:
    bind = op.get_bind()
    from_request = ("request::jsonb ->> 'model'" if bind.dialect.name == "postgresql"
                    else "json_extract(request, '$.model')")
    op.execute(f"UPDATE tasks SET route_model = COALESCE({from_request}, '') WHERE route_model = ''")
    # rows whose request has no model: the catalog's canonical name for the caller's spelling
    from wanserve.catalog.models import find_model

    left = bind.execute(sa.text("SELECT DISTINCT model FROM tasks WHERE route_model = ''")).scalars().all()
    fill = sa.text("UPDATE tasks SET route_model = :route WHERE route_model = '' AND model = :model")
    for model in left:
        spec = find_model(model)
        bind.execute(fill, {"route": spec.name if spec else model, "model": model})


def upgrade() -> None:
    op.add_column("tasks", sa.Column("route_model", sa.String(64), nullable=False, server_default=""))
    _backfill_route_model()
    op.create_table(
        "queue_accounts",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("last_claim_ms", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO queue_accounts (account_id, last_claim_ms) SELECT account_id, MIN(submit_ms) "
               "FROM tasks WHERE status IN ('PENDING', 'RUNNING') GROUP BY account_id")
    for name, (columns, where) in INDEXES.items():
        op.create_index(name, "tasks", columns, sqlite_where=sa.text(where), postgresql_where=sa.text(where))


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="tasks")
    op.drop_table("queue_accounts")
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("route_model")
