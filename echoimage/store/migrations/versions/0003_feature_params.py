"""features.params: the extraction parameters of each row, so `index update` re-extracts
rows made with other ones (NULL: made before this column existed)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("features") as batch:
        batch.add_column(sa.Column("params", sa.String(64), nullable=True))
    # finding stale rows must not read the large rows themselves
    op.create_index(op.f("ix_features_params"), "features", ["params"])


def downgrade() -> None:
    op.drop_index(op.f("ix_features_params"), table_name="features")
    with op.batch_alter_table("features") as batch:
        batch.drop_column("params")
