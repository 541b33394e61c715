"""An event's identity includes its product; a key's rate limit is a sane number.

Revision ID: 0003_product_scoped_identity
Revises: 0002_rate_limits_dead_letters
Create Date: 2026-12-01
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_product_scoped_identity"
down_revision: str | None = "0002_rate_limits_dead_letters"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# auth.keys.MIN/MAX_RATE_LIMIT_PER_SECOND when this was written; a migration
# keeps its own copy so that history does not change when the constants do.
# Below the minimum the token bucket's expiry and Retry-After overflow what
# Redis accepts (a rate of 1e-300 is "above 0" and still broke the script).
MIN_RATE_LIMIT_PER_SECOND = "0.001"
MAX_RATE_LIMIT_PER_SECOND = "1000000"

# PostgreSQL orders NaN above every number and 'Infinity' is a valid double:
# the range test excludes NaN, +Infinity and -Infinity with it.
_RATE_IS_VALID = (
    f"rate_limit_per_second >= {MIN_RATE_LIMIT_PER_SECOND} "
    f"AND rate_limit_per_second <= {MAX_RATE_LIMIT_PER_SECOND}"
)


def upgrade() -> None:
    # Under (timestamp, event_id), product B sending an id and timestamp that
    # product A had already used was a "duplicate" of A's event: whichever
    # came second was dropped, though both were acknowledged with a 202.
    # Identity is per product now.
    # The partition key must stay in the primary key. PostgreSQL drops and
    # rebuilds the key index of every partition (the default one included)
    # under an ACCESS EXCLUSIVE lock: ingest keeps answering meanwhile (it
    # never waits on PostgreSQL) and the flusher retries until it is done.
    # Existing rows cannot conflict: the old key was stricter.
    op.execute("ALTER TABLE events DROP CONSTRAINT pk_events")
    op.execute(
        'ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY ("timestamp", product, event_id)'
    )

    # Rates outside the range (Infinity, NaN, 1e-300, negatives, absurdly
    # high) were accepted until now, and made the shared Lua script fail for
    # every key in the same call. Before the CHECK can exist they become NULL:
    # the deployment's default rate, the same fallback the key cache applies
    # to a row it cannot use. This includes 0, which ingest read as "no limit
    # for this key": a key without a limit of its own is no longer possible,
    # only a deployment without one (RATE_LIMIT_EVENTS_PER_SECOND=0).
    op.execute(
        f"UPDATE api_keys SET rate_limit_per_second = NULL "
        f"WHERE rate_limit_per_second IS NOT NULL AND NOT ({_RATE_IS_VALID})"
    )
    op.execute(
        f"""
        ALTER TABLE api_keys ADD CONSTRAINT ck_api_keys_rate_limit_per_second_valid
            CHECK (rate_limit_per_second IS NULL OR ({_RATE_IS_VALID}))
        """
    )


def downgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP CONSTRAINT ck_api_keys_rate_limit_per_second_valid")
    # The rates set to NULL on the way up stay NULL: they were unusable.

    # The old key cannot hold two products' events with the same id and
    # timestamp. Deduplicating would delete one product's rows silently,
    # the very loss this revision fixed, and which to keep is not ours to
    # choose: refuse, name the count, and leave the data as it is. The lock
    # comes first so no clash can be inserted between the check and the key.
    op.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    op.execute(
        """
        DO $$
        DECLARE
            clashes bigint;
        BEGIN
            SELECT count(*) INTO clashes FROM (
                SELECT 1 FROM events GROUP BY "timestamp", event_id HAVING count(*) > 1
            ) AS shared;
            IF clashes > 0 THEN
                RAISE EXCEPTION
                    'cannot downgrade: % (timestamp, event_id) pairs are stored for more than '
                    'one product, and the old primary key would force deleting all but one',
                    clashes
                USING HINT = 'Export or delete the rows of one product for each pair '
                    '(GROUP BY "timestamp", event_id HAVING count(*) > 1), then downgrade.';
            END IF;
        END
        $$
        """
    )
    op.execute("ALTER TABLE events DROP CONSTRAINT pk_events")
    op.execute('ALTER TABLE events ADD CONSTRAINT pk_events PRIMARY KEY ("timestamp", event_id)')
