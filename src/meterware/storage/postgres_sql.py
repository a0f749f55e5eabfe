"""The PostgreSQL backend's migrations and statements, with the schema filled in."""

from __future__ import annotations

from meterware.storage.sql import KEY_COLUMNS, KEY_FIELDS

# `{s}` is the quoted schema name; everything else is a parameter.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        "CREATE TABLE {s}.meta (name TEXT PRIMARY KEY, value BIGINT NOT NULL)",
        "CREATE TABLE {s}.accounts (id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL)",
        """CREATE TABLE {s}.keys (
            id TEXT PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES {s}.accounts (id),
            name TEXT NOT NULL,
            tier TEXT NOT NULL,
            permission TEXT NOT NULL,
            website_id TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            revoked_at DOUBLE PRECISION,
            per_minute BIGINT,
            monthly_limit BIGINT,
            monthly_credits BIGINT,
            billing_anchor_day INTEGER,
            last_used_at DOUBLE PRECISION,
            total_requests BIGINT NOT NULL DEFAULT 0,
            total_calls BIGINT NOT NULL DEFAULT 0,
            total_credits BIGINT NOT NULL DEFAULT 0,
            version BIGINT NOT NULL
        )""",
        "CREATE INDEX keys_by_account ON {s}.keys (account_id, created_at)",
        "CREATE INDEX keys_by_version ON {s}.keys (version)",
        """CREATE TABLE {s}.key_secrets (
            hash TEXT PRIMARY KEY,
            key_id TEXT NOT NULL REFERENCES {s}.keys (id),
            expires_at DOUBLE PRECISION
        )""",
        "CREATE INDEX key_secrets_by_key ON {s}.key_secrets (key_id)",
        """CREATE TABLE {s}.counters (
            subject TEXT NOT NULL,
            period TEXT NOT NULL,
            count BIGINT NOT NULL,
            granted BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (subject, period)
        )""",
        """CREATE TABLE {s}.usage_daily (
            account_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            day TEXT NOT NULL,
            action TEXT NOT NULL,
            calls BIGINT NOT NULL,
            credits BIGINT NOT NULL,
            PRIMARY KEY (account_id, key_id, day, action)
        )""",
        "CREATE INDEX usage_by_account ON {s}.usage_daily (account_id, day)",
        "CREATE TABLE {s}.actions (action TEXT PRIMARY KEY, label TEXT NOT NULL)",
        "INSERT INTO {s}.meta (name, value) VALUES ('key_seq', 0)",
    ),
}


# A key change takes the next version by incrementing this row inside its transaction.
# The row stays locked until that transaction ends, so versions commit strictly in order
# and a rolled-back change gives its number back. A sequence would not do: `nextval` is
# not transactional, so version 8 can commit before version 7, and a poller that moved
# its cursor to 8 would never see 7. With the row, `key_changes` reads the counter and
# the keys in one snapshot and is exact: every version up to the cursor is visible.
# Key changes are admin operations, so queueing them on one row costs nothing.
NEXT_VERSION = "UPDATE {s}.meta SET value = value + 1 WHERE name = 'key_seq' RETURNING value"


class Queries:
    """The statements, with the schema filled in once per store."""

    def __init__(self, s: str) -> None:
        self.s = s
        k = ", ".join(f"k.{column}" for column in KEY_COLUMNS)
        self.next_version = NEXT_VERSION.format(s=s)
        self.ensure_account = (
            f"INSERT INTO {s}.accounts (id, created_at) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING"
        )
        self.insert_key = (
            f"INSERT INTO {s}.keys ({KEY_FIELDS}, version) VALUES "
            "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        )
        self.insert_secret = (
            f"INSERT INTO {s}.key_secrets (hash, key_id, expires_at) VALUES ($1, $2, NULL)"
        )
        self.get_key = f"SELECT {KEY_FIELDS} FROM {s}.keys WHERE id = $1"
        self.find_key = (
            f"SELECT {k}, t.expires_at FROM {s}.key_secrets t JOIN {s}.keys k ON k.id = t.key_id "
            "WHERE t.hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)"
        )
        self.list_keys = f"SELECT {KEY_FIELDS} FROM {s}.keys ORDER BY created_at, id"
        self.list_account_keys = (
            f"SELECT {KEY_FIELDS} FROM {s}.keys WHERE account_id = $1 ORDER BY created_at, id"
        )
        self.retire_secrets = (
            f"UPDATE {s}.key_secrets SET expires_at = LEAST(expires_at, $2) WHERE key_id = $1"
        )
        self.set_version = f"UPDATE {s}.keys SET version = $2 WHERE id = $1"
        self.key_changes = (
            f"SELECT m.value, ARRAY(SELECT id FROM {s}.keys WHERE version > $1 "
            f"ORDER BY version) FROM {s}.meta m WHERE m.name = 'key_seq'"
        )
        self.reserve = (
            f"INSERT INTO {s}.counters AS c (subject, period, count, granted) "
            "VALUES ($1, $2, LEAST($3::bigint, GREATEST(0, $4::bigint)), "
            "LEAST($3::bigint, GREATEST(0, $4::bigint))) "
            "ON CONFLICT (subject, period) DO UPDATE SET "
            "granted = LEAST($3::bigint, GREATEST(0, $4::bigint - c.count)), "
            "count = c.count + LEAST($3::bigint, GREATEST(0, $4::bigint - c.count)) "
            "RETURNING granted, count"
        )
        self.release = (
            f"UPDATE {s}.counters SET count = GREATEST(0, count - $3::bigint) "
            "WHERE subject = $1 AND period = $2"
        )
        self.add = (
            f"INSERT INTO {s}.counters AS c (subject, period, count) VALUES ($1, $2, $3) "
            "ON CONFLICT (subject, period) DO UPDATE SET count = c.count + excluded.count "
            "RETURNING count"
        )
        self.counter = f"SELECT count FROM {s}.counters WHERE subject = $1 AND period = $2"
        self.add_rollup = (
            f"INSERT INTO {s}.usage_daily AS u "
            "(account_id, key_id, day, action, calls, credits) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (account_id, key_id, day, action) DO UPDATE SET "
            "calls = u.calls + excluded.calls, credits = u.credits + excluded.credits"
        )
        # GREATEST ignores NULL: the later of the stored and the new last use.
        self.add_totals = (
            f"UPDATE {s}.keys SET total_requests = total_requests + $2, "
            "total_calls = total_calls + $3, total_credits = total_credits + $4, "
            "last_used_at = GREATEST(last_used_at, $5) WHERE id = $1"
        )
        self.set_label = (
            f"INSERT INTO {s}.actions (action, label) VALUES ($1, $2) "
            "ON CONFLICT (action) DO UPDATE SET label = excluded.label"
        )
        self.account_usage = (
            "SELECT day, action, sum(calls)::bigint, sum(credits)::bigint "
            f"FROM {s}.usage_daily WHERE account_id = $1 AND day BETWEEN $2 AND $3 "
            "GROUP BY day, action ORDER BY day, action"
        )
        self.key_usage = (
            f"SELECT day, action, calls, credits FROM {s}.usage_daily "
            "WHERE account_id = $1 AND key_id = $2 AND day BETWEEN $3 AND $4 "
            "ORDER BY day, action"
        )
        self.key_totals = (
            "SELECT total_requests, total_calls, total_credits, last_used_at "
            f"FROM {s}.keys WHERE id = $1"
        )
