"""features.colour_preview and features.colour_signature (a small colour JPEG for display and
a compact colour signature for colour_distance; NULL for rows indexed before, filled by the
next build or update), and runs.reason (why a run failed or was interrupted).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None
# the index files read nothing this changes (the colour columns, runs.reason): index files written
# at the revision before still serve (echoimage.store.db.index_revision)
index_unchanged = True


def upgrade() -> None:
    with op.batch_alter_table("features") as batch:
        batch.add_column(sa.Column("colour_preview", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("colour_signature", sa.LargeBinary(), nullable=True))
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("reason")
    with op.batch_alter_table("features") as batch:
        batch.drop_column("colour_signature")
        batch.drop_column("colour_preview")
