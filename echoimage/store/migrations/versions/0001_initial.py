"""initial schema: sources, images, features, runs

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("uri", sa.String(2048), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("added_at", TS, nullable=False),
        sa.Column("last_read_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sources")),
        sa.UniqueConstraint("uri", name=op.f("uq_sources_uri")),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("format", sa.String(16), nullable=True),
        sa.Column("nbytes", sa.Integer(), nullable=True),
        sa.Column("etag", sa.String(512), nullable=True),
        sa.Column("last_modified", sa.String(128), nullable=True),
        sa.Column("meta", sa.JSON(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.Column("indexed_at", TS, nullable=True),
        sa.Column("gone_at", TS, nullable=True),
        sa.ForeignKeyConstraint(["source_id"], ["sources.id"],
                                name=op.f("fk_images_source_id_sources")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
        sa.UniqueConstraint("url", name=op.f("uq_images_url")),
    )
    op.create_index(op.f("ix_images_source_id"), "images", ["source_id"])
    op.create_index(op.f("ix_images_status"), "images", ["status"])
    op.create_index(op.f("ix_images_sha256"), "images", ["sha256"])
    op.create_index(op.f("ix_images_indexed_at"), "images", ["indexed_at"])
    op.create_table(
        "features",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("phash", sa.LargeBinary(8), nullable=False),
        sa.Column("dhash", sa.LargeBinary(8), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=False),
        sa.Column("thumb_size", sa.Integer(), nullable=False),
        sa.Column("n_keypoints", sa.Integer(), nullable=False),
        sa.Column("keypoints", sa.LargeBinary(), nullable=False),
        sa.Column("descriptors", sa.LargeBinary(), nullable=False),
        sa.Column("work_scale", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE",
                                name=op.f("fk_features_image_id_images")),
        sa.PrimaryKeyConstraint("image_id", name=op.f("pk_features")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("sources", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )


def downgrade() -> None:
    op.drop_table("runs")
    op.drop_table("features")
    op.drop_index(op.f("ix_images_indexed_at"), table_name="images")
    op.drop_index(op.f("ix_images_sha256"), table_name="images")
    op.drop_index(op.f("ix_images_status"), table_name="images")
    op.drop_index(op.f("ix_images_source_id"), table_name="images")
    op.drop_table("images")
    op.drop_table("sources")
