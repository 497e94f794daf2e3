"""index images.updated_at: a serving engine finds what changed since its index was built

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(op.f("ix_images_updated_at"), "images", ["updated_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_images_updated_at"), table_name="images")
