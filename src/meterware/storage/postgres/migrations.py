"""The PostgreSQL backend's migrations: each schema step's statements, and schema 1's rows
for step 2 to move."""

from __future__ import annotations

from meterware.storage.records import OUTCOME_FIELDS

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
    # Step 2 also moves schema 1's totals and counters (see `sql.v1_to_v2`), between
    # its statements and FINISH_V2.
    2: (
        "ALTER TABLE {s}.usage_daily ADD COLUMN requests BIGINT NOT NULL DEFAULT 0",
        "ALTER TABLE {s}.usage_daily ADD COLUMN last_used_at DOUBLE PRECISION",
        """CREATE TABLE {s}.windows (
            counter TEXT PRIMARY KEY,
            window_end DOUBLE PRECISION NOT NULL,
            count BIGINT NOT NULL,
            granted BIGINT NOT NULL DEFAULT 0,
            want BIGINT NOT NULL DEFAULT 0,
            cap BIGINT NOT NULL DEFAULT 0
        )""",
    ),
    # Step 3: plans move to accounts; `sql.v2_to_v3` runs after these statements.
    3: (
        "ALTER TABLE {s}.accounts ADD COLUMN tier TEXT NOT NULL DEFAULT 'free', "
        "ADD COLUMN name TEXT, ADD COLUMN external_id TEXT, ADD COLUMN stripe_customer_id TEXT",
        "CREATE UNIQUE INDEX accounts_by_external_id ON {s}.accounts (external_id)",
        "ALTER TABLE {s}.keys ALTER COLUMN tier DROP NOT NULL",
    ),
    # Step 4: outcomes in the ledger, prepaid grants, the outbox and its readers, leases,
    # notices; the store's own id (in outbox event ids).
    4: (
        "ALTER TABLE {s}.usage_daily "
        + ", ".join(f"ADD COLUMN {c} BIGINT NOT NULL DEFAULT 0" for c in OUTCOME_FIELDS),
        """CREATE TABLE {s}.grants (
            account_id TEXT NOT NULL REFERENCES {s}.accounts (id),
            grant_id TEXT NOT NULL,
            amount BIGINT NOT NULL,
            granted_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION,
            PRIMARY KEY (account_id, grant_id)
        )""",
        """CREATE TABLE {s}.balance_daily (
            account_id TEXT NOT NULL,
            grant_id TEXT NOT NULL,
            day TEXT NOT NULL,
            action TEXT NOT NULL,
            credits BIGINT NOT NULL,
            PRIMARY KEY (account_id, grant_id, day, action)
        )""",
        """CREATE TABLE {s}.outbox (
            seq BIGINT PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL,
            key_id TEXT NOT NULL,
            action TEXT NOT NULL,
            day TEXT NOT NULL,
            requests BIGINT NOT NULL,
            calls BIGINT NOT NULL,
            credits BIGINT NOT NULL,
            time DOUBLE PRECISION NOT NULL
        )""",
        "CREATE TABLE {s}.cursors (name TEXT PRIMARY KEY, position BIGINT NOT NULL)",
        """CREATE TABLE {s}.rejections (
            name TEXT NOT NULL,
            seq BIGINT NOT NULL,
            id TEXT NOT NULL,
            reason TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, seq)
        )""",
        "CREATE TABLE {s}.leases "
        "(name TEXT PRIMARY KEY, owner TEXT NOT NULL, until DOUBLE PRECISION NOT NULL)",
        """CREATE TABLE {s}.notices (
            seq BIGINT PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            account_id TEXT,
            key_id TEXT,
            data JSONB NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        )""",
        "INSERT INTO {s}.meta (name, value) VALUES ('store_id', floor(random() * 2147483648))",
        "INSERT INTO {s}.meta (name, value) VALUES ('outbox_seq', 0), ('notice_seq', 0)",
    ),
}

V1_KEYS = "SELECT id, account_id, billing_anchor_day, total_requests, last_used_at FROM {s}.keys"
V1_COUNTERS = "SELECT subject, period, count FROM {s}.counters"
FINISH_V2 = (
    "DROP TABLE {s}.counters",
    "ALTER TABLE {s}.keys DROP COLUMN last_used_at, DROP COLUMN total_requests, "
    "DROP COLUMN total_calls, DROP COLUMN total_credits",
)
