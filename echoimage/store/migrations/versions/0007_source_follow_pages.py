"""sources.follow_pages: how many same-site links a web page source follows when it is
scraped (NULL for the other kinds of source), so that `index update` scrapes it again as
it was built.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None
# the index files read nothing this changes (a source column): index files written
# at the revision before still serve (echoimage.store.db.index_revision)
index_unchanged = True


def upgrade() -> None:
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("follow_pages", sa.Integer(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite >= 3.35): a batch copy of `sources`
    # would have to drop the table the images refer to, which its foreign keys forbid
    op.drop_column("sources", "follow_pages")
