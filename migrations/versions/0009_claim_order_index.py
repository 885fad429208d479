"""Jobs: an index in the order workers claim queued jobs (status, model, priority first, then oldest).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_claim_order", "jobs", ["status", "model", sa.text("priority DESC"), "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_claim_order", table_name="jobs")
