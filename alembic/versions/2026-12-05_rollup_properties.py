"""Rollups: events per hour, name and value of a declared property.

Revision ID: 0007_rollup_properties
Revises: 0006_rollup_users
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_rollup_properties"
down_revision: str | None = "0006_rollup_users"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The keys rolled up (ROLLUP_PROPERTIES, kept in step by the rollup refresh:
    # see storage.rollups). Reads use rollup_hourly_props only for a key listed
    # here, so a key being added or dropped is read raw meanwhile.
    op.execute(
        """
        CREATE TABLE rollup_property_keys (
            key          text        NOT NULL,
            declared_at  timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT pk_rollup_property_keys PRIMARY KEY (key)
        )
        """
    )
    # `value` is the property as text (properties #>> the key's dotted path),
    # NULL for the events without it. No unique index over it: a long value
    # would not fit in a btree entry, and a refresh deletes an hour's rows
    # before it inserts them again, so nothing needs one.
    op.execute(
        """
        CREATE TABLE rollup_hourly_props (
            product  text        NOT NULL,
            key      text        NOT NULL,
            hour     timestamptz NOT NULL,
            name     text        NOT NULL,
            value    text,
            events   bigint      NOT NULL
        )
        """
    )
    op.execute(
        "CREATE INDEX ix_rollup_hourly_props_product_key_hour "
        "ON rollup_hourly_props (product, key, hour)"
    )


def downgrade() -> None:
    # Derived data only.
    op.execute("DROP TABLE rollup_hourly_props")
    op.execute("DROP TABLE rollup_property_keys")
