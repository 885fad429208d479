"""Jobs: previews (a preview image after every scale) and the last scale whose preview is stored.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("previews", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("preview_scale", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("preview_scale")
        batch.drop_column("previews")
