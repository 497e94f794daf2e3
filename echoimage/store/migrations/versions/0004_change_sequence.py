"""store identity and change sequence: store_info (one row: a store id made with the store
and the last change number handed out) and images.seq (the change number of each row's last
change), so index files name the store and the change they include

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    info = op.create_table(
        "store_info",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("store_id", sa.String(36), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_info")),
    )
    # rows that exist already all carry change 1: an index built before has no change
    # number in its manifest and is rebuilt once
    op.bulk_insert(info, [{"id": 1, "store_id": str(uuid.uuid4()), "seq": 1,
                           "created_at": datetime.now(UTC)}])
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=False,
                                   server_default="1"))
    op.create_index(op.f("ix_images_seq"), "images", ["seq"])


def downgrade() -> None:
    op.drop_index(op.f("ix_images_seq"), table_name="images")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("seq")
    op.drop_table("store_info")
