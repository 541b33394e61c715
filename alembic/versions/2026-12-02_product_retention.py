"""Per-product retention of raw events: how many days each product keeps.

Revision ID: 0004_product_retention
Revises: 0003_product_scoped_identity
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004_product_retention"
down_revision: str | None = "0003_product_scoped_identity"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A product without a row keeps everything: retention is opt-in, so an
    # empty table (the state after this upgrade) deletes nothing.
    op.execute(
        """
        CREATE TABLE product_retention (
            product text NOT NULL,
            keep_days integer NOT NULL,
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_product_retention PRIMARY KEY (product),
            CONSTRAINT ck_product_retention_keep_days_positive CHECK (keep_days >= 1)
        )
        """
    )


def downgrade() -> None:
    # The policies go; the events they already removed stay removed.
    op.execute("DROP TABLE product_retention")
