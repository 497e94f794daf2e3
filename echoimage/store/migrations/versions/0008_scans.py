"""scans: the pages scans read (scan_pages) and the images found on them (scan_images, with
validators and content hash, so a re-scan fetches and compares only what changed), the
copies of catalogue images among them (scan_matches) and where they are shown (findings:
first and last seen, gone, reported), named watches (watches, watch_pages) and the scans
themselves (scans)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None
# the index files read nothing this changes (the scan tables): index files written
# at the revision before still serve (echoimage.store.db.index_revision)
index_unchanged = True


def _seen() -> list[sa.Column]:
    return [sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
            sa.Column("last_seen", sa.DateTime(timezone=True), nullable=True),
            sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True)]


def _validators() -> list[sa.Column]:
    return [sa.Column("status", sa.String(32), nullable=False),
            sa.Column("reason", sa.Text(), nullable=True),
            sa.Column("etag", sa.String(512), nullable=True),
            sa.Column("last_modified", sa.String(128), nullable=True),
            sa.Column("sha256", sa.String(64), nullable=True)]


def upgrade() -> None:
    op.create_table(
        "scan_pages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        *_validators(),
        sa.Column("images", sa.JSON(), nullable=True),
        sa.Column("links", sa.JSON(), nullable=True),
        *_seen(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_pages")),
        sa.UniqueConstraint("url", name=op.f("uq_scan_pages_url")),
    )
    op.create_table(
        "scan_images",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        *_validators(),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("queried_seq", sa.BigInteger(), nullable=True),
        sa.Column("picture", sa.LargeBinary(), nullable=True),
        sa.Column("picture_scale", sa.Float(), nullable=True),
        *_seen(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scan_images")),
        sa.UniqueConstraint("url", name=op.f("uq_scan_images_url")),
    )
    op.create_index(op.f("ix_scan_images_sha256"), "scan_images", ["sha256"])
    op.create_table(
        "scan_matches",
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("match", sa.JSON(), nullable=False),
        sa.Column("pairs", sa.LargeBinary(), nullable=True),
        sa.ForeignKeyConstraint(["catalogue_id"], ["images.id"], ondelete="CASCADE",
                                name=op.f("fk_scan_matches_catalogue_id_images")),
        sa.ForeignKeyConstraint(["image_id"], ["scan_images.id"], ondelete="CASCADE",
                                name=op.f("fk_scan_matches_image_id_scan_images")),
        sa.PrimaryKeyConstraint("image_id", "catalogue_id", name=op.f("pk_scan_matches")),
    )
    op.create_index(op.f("ix_scan_matches_catalogue_id"), "scan_matches", ["catalogue_id"])
    op.create_table(
        "findings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("catalogue_id", sa.Integer(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("gone_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gone_reason", sa.Text(), nullable=True),
        sa.Column("first_scan", sa.Integer(), nullable=True),
        sa.Column("last_scan", sa.Integer(), nullable=True),
        sa.Column("reported_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["catalogue_id"], ["images.id"], ondelete="CASCADE",
                                name=op.f("fk_findings_catalogue_id_images")),
        sa.ForeignKeyConstraint(["image_id"], ["scan_images.id"], ondelete="CASCADE",
                                name=op.f("fk_findings_image_id_scan_images")),
        sa.ForeignKeyConstraint(["page_id"], ["scan_pages.id"], ondelete="CASCADE",
                                name=op.f("fk_findings_page_id_scan_pages")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
        sa.UniqueConstraint("page_id", "image_id", "catalogue_id",
                            name=op.f("uq_findings_page_id")),
    )
    op.create_index(op.f("ix_findings_catalogue_id"), "findings", ["catalogue_id"])
    op.create_index(op.f("ix_findings_first_seen"), "findings", ["first_seen"])
    op.create_index(op.f("ix_findings_image_id"), "findings", ["image_id"])
    op.create_table(
        "watches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("follow_pages", sa.Integer(), nullable=False),
        sa.Column("notify", sa.String(2048), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_scan", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watches")),
        sa.UniqueConstraint("name", name=op.f("uq_watches_name")),
    )
    op.create_table(
        "watch_pages",
        sa.Column("watch_id", sa.Integer(), nullable=False),
        sa.Column("page_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["page_id"], ["scan_pages.id"], ondelete="CASCADE",
                                name=op.f("fk_watch_pages_page_id_scan_pages")),
        sa.ForeignKeyConstraint(["watch_id"], ["watches.id"], ondelete="CASCADE",
                                name=op.f("fk_watch_pages_watch_id_watches")),
        sa.PrimaryKeyConstraint("watch_id", "page_id", name=op.f("pk_watch_pages")),
    )
    op.create_index(op.f("ix_watch_pages_page_id"), "watch_pages", ["page_id"])
    op.create_table(
        "scans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("targets", sa.JSON(), nullable=False),
        sa.Column("watch", sa.String(128), nullable=True),
        sa.Column("counts", sa.JSON(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scans")),
    )


def downgrade() -> None:
    op.drop_table("scans")
    op.drop_index(op.f("ix_watch_pages_page_id"), table_name="watch_pages")
    op.drop_table("watch_pages")
    op.drop_table("watches")
    for name in ("image_id", "first_seen", "catalogue_id"):
        op.drop_index(op.f(f"ix_findings_{name}"), table_name="findings")
    op.drop_table("findings")
    op.drop_index(op.f("ix_scan_matches_catalogue_id"), table_name="scan_matches")
    op.drop_table("scan_matches")
    op.drop_index(op.f("ix_scan_images_sha256"), table_name="scan_images")
    op.drop_table("scan_images")
    op.drop_table("scan_pages")
