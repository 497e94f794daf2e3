"""store_info.row_format: how feature rows are encoded (1: raw thumbnails and float32
keypoints; 2: JPEG thumbnails and fixed-point keypoint positions, see store/codec.py). The
rows of an existing store are converted in batches after the schema upgrade, resumably
(`echoimage db upgrade`, or any command that writes the store); a new store starts at 2.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("store_info") as batch:
        batch.add_column(sa.Column("row_format", sa.Integer(), nullable=False,
                                   server_default="1"))
    has_rows = op.get_bind().execute(sa.text("SELECT 1 FROM features LIMIT 1")).first()
    if has_rows is None:
        op.execute("UPDATE store_info SET row_format = 2")


def downgrade() -> None:
    with op.batch_alter_table("store_info") as batch:
        batch.drop_column("row_format")
