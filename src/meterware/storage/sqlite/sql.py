"""The SQLite backend's schema, its migration from schema 1, and the statements that take
several rows at once (one JSON array parameter each)."""

from __future__ import annotations

from typing import Any

from meterware.storage.records import OUTCOME_FIELDS, BalanceDraw, Claim, Rollup

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    tier TEXT NOT NULL DEFAULT 'free',
    name TEXT,
    external_id TEXT,
    stripe_customer_id TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS accounts_by_external_id ON accounts(external_id);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    tier TEXT,
    permission TEXT NOT NULL,
    website_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    per_minute INTEGER,
    monthly_limit INTEGER,
    monthly_credits INTEGER,
    billing_anchor_day INTEGER,
    version INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS keys_by_account ON keys(account_id, created_at);
CREATE INDEX IF NOT EXISTS keys_by_version ON keys(version);
CREATE TABLE IF NOT EXISTS key_secrets (
    hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES keys(id),
    expires_at REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS key_secrets_by_key ON key_secrets(key_id);
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    action TEXT NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    requests INTEGER NOT NULL DEFAULT 0,
    last_used_at REAL,
    PRIMARY KEY (account_id, key_id, day, action)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_account ON usage_daily(account_id, day);
CREATE TABLE IF NOT EXISTS actions (action TEXT PRIMARY KEY, label TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('key_seq', 0);
"""
"""Schema 3, created whole on a new file (then `V4` on it)."""

V4 = (
    *(f"ALTER TABLE usage_daily ADD COLUMN {c} INTEGER NOT NULL DEFAULT 0" for c in OUTCOME_FIELDS),
    """CREATE TABLE grants (
        account_id TEXT NOT NULL REFERENCES accounts(id),
        grant_id TEXT NOT NULL,
        amount INTEGER NOT NULL,
        granted_at REAL NOT NULL,
        expires_at REAL,
        PRIMARY KEY (account_id, grant_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE balance_daily (
        account_id TEXT NOT NULL,
        grant_id TEXT NOT NULL,
        day TEXT NOT NULL,
        action TEXT NOT NULL,
        credits INTEGER NOT NULL,
        PRIMARY KEY (account_id, grant_id, day, action)
    ) WITHOUT ROWID""",
    """CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        account_id TEXT NOT NULL,
        key_id TEXT NOT NULL,
        action TEXT NOT NULL,
        day TEXT NOT NULL,
        requests INTEGER NOT NULL,
        calls INTEGER NOT NULL,
        credits INTEGER NOT NULL,
        time REAL NOT NULL
    )""",
    "CREATE TABLE cursors (name TEXT PRIMARY KEY, position INTEGER NOT NULL)",
    """CREATE TABLE rejections (
        name TEXT NOT NULL,
        seq INTEGER NOT NULL,
        id TEXT NOT NULL,
        reason TEXT NOT NULL,
        at REAL NOT NULL,
        PRIMARY KEY (name, seq)
    ) WITHOUT ROWID""",
    "CREATE TABLE leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, until REAL NOT NULL)",
    """CREATE TABLE notices (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        type TEXT NOT NULL,
        account_id TEXT,
        key_id TEXT,
        data TEXT NOT NULL,
        created_at REAL NOT NULL
    )""",
    # The store's own id, in the outbox events' identifiers (random, 31 bits).
    "INSERT INTO meta (name, value) VALUES ('store_id', abs(random()) % 2147483648)",
)
"""Schema 3 to 4: outcomes in the ledger, prepaid grants, the outbox and its readers,
leases, notices."""

WINDOWS = """
CREATE TABLE IF NOT EXISTS windows (
    counter TEXT PRIMARY KEY,
    window_end REAL NOT NULL,
    count INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    want INTEGER NOT NULL DEFAULT 0,
    cap INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
"""One row per counter: its current window's end and count. `granted`, `want` and `cap`
only carry a reservation's numbers from the inserted row to the update (`excluded.`)."""

FROM_V1 = (
    "ALTER TABLE usage_daily ADD COLUMN requests INTEGER NOT NULL DEFAULT 0",
    "ALTER TABLE usage_daily ADD COLUMN last_used_at REAL",
)
"""Schema 1 to 2, before its rows move (see `storage.sql.v1_to_v2`)."""

FROM_V2_ACCOUNTS = (
    "ALTER TABLE accounts ADD COLUMN tier TEXT NOT NULL DEFAULT 'free'",
    "ALTER TABLE accounts ADD COLUMN name TEXT",
    "ALTER TABLE accounts ADD COLUMN external_id TEXT",
    "ALTER TABLE accounts ADD COLUMN stripe_customer_id TEXT",
    "CREATE UNIQUE INDEX accounts_by_external_id ON accounts(external_id)",
)
# SQLite cannot drop a NOT NULL: the key's tier moves to a new column that may be NULL.
FROM_V2_KEYS = (
    "ALTER TABLE keys ADD COLUMN own_tier TEXT",
    "UPDATE keys SET own_tier = tier",
    "ALTER TABLE keys DROP COLUMN tier",
    "ALTER TABLE keys RENAME COLUMN own_tier TO tier",
)
"""Schema 2 to 3, around `storage.sql.v2_to_v3` (accounts first, then keys, then its statements)."""

V1_KEYS = "SELECT id, account_id, billing_anchor_day, total_requests, last_used_at FROM keys"
V1_COUNTERS = "SELECT subject, period, count FROM counters"
DROP_V1 = (
    "DROP TABLE counters",
    "ALTER TABLE keys DROP COLUMN last_used_at",
    "ALTER TABLE keys DROP COLUMN total_requests",
    "ALTER TABLE keys DROP COLUMN total_calls",
    "ALTER TABLE keys DROP COLUMN total_credits",
)


def _from_json(*columns: str) -> str:
    """`SELECT` the columns of a JSON array of rows (the statement's one parameter)."""
    picks = ", ".join(f"json_extract(value, '$[{i}]') AS {c}" for i, c in enumerate(columns))
    return f"SELECT {picks} FROM json_each(?1) WHERE true"  # WHERE: for the upsert's parser


CHUNK = 500  # rows per ledger statement

# In an UPDATE every right-hand side reads the row as it was, so `granted`, `count` and
# `window_end` are all computed from the same old row in one atomic statement; a
# window that has ended (window_end <= now) starts again from 0. A claim for a window
# that would end by now (an expired grant's) wants nothing.
RESERVE = (
    "INSERT INTO windows (counter, window_end, count, granted, want, cap) "
    "SELECT counter, window_end, min(want, max(0, cap)), min(want, max(0, cap)), want, cap "
    "FROM (SELECT counter, iif(window_end > ?2, want, 0) AS want, cap, window_end FROM ("
    + _from_json("counter", "want", "cap", "window_end")
    + ")) WHERE true "
    "ON CONFLICT (counter) DO UPDATE SET "
    "granted = CASE WHEN window_end <= ?2 THEN min(excluded.want, max(0, excluded.cap)) "
    "ELSE min(excluded.want, max(0, excluded.cap - count)) END, "
    "count = CASE WHEN window_end <= ?2 THEN min(excluded.want, max(0, excluded.cap)) "
    "ELSE count + min(excluded.want, max(0, excluded.cap - count)) END, "
    "window_end = CASE WHEN window_end <= ?2 THEN excluded.window_end ELSE window_end END "
    "RETURNING counter, granted, count, window_end"
)
RELEASE = "UPDATE windows SET count = max(0, count - ?3) WHERE counter = ?1 AND window_end = ?2"
ROLLUP_COLUMNS = (
    "key_id", "action", "day", "account_id", "calls", "credits", "requests", "last_used_at",
    *OUTCOME_FIELDS,
)  # fmt: skip
ADD_ROLLUPS = (
    f"INSERT INTO usage_daily ({', '.join(ROLLUP_COLUMNS)}) "
    + _from_json(*ROLLUP_COLUMNS)
    + " ON CONFLICT (account_id, key_id, day, action) DO UPDATE SET "
    "calls = calls + excluded.calls, credits = credits + excluded.credits, "
    "requests = requests + excluded.requests, "
    + "".join(f"{c} = {c} + excluded.{c}, " for c in OUTCOME_FIELDS)
    + "last_used_at = CASE WHEN excluded.last_used_at IS NULL THEN last_used_at "
    "WHEN last_used_at IS NULL THEN excluded.last_used_at "
    "ELSE max(last_used_at, excluded.last_used_at) END"
)
SET_LABELS = (
    "INSERT INTO actions (action, label) "
    + _from_json("action", "label")
    + " ON CONFLICT (action) DO UPDATE SET label = excluded.label"
)
TOTALS = (
    "SELECT coalesce(sum(requests), 0), coalesce(sum(calls), 0), coalesce(sum(credits), 0), "
    "max(last_used_at) FROM usage_daily WHERE account_id = ? AND day BETWEEN ? AND ?"
)


# One subquery form per case, so that each can use the primary key.
def _since(column: str) -> str:
    # One subquery form per case, so that each can use the primary key.
    return (
        f"CASE WHEN key_id IS NULL THEN (SELECT coalesce(sum(u.{column}), 0) FROM usage_daily u "
        "WHERE u.account_id = s.account_id AND u.day >= s.first_day) "
        f"ELSE (SELECT coalesce(sum(u.{column}), 0) FROM usage_daily u "
        "WHERE u.account_id = s.account_id AND u.key_id = s.key_id AND u.day >= s.first_day) END"
    )


MONTH_USAGE = (
    f"SELECT {_since('requests')}, {_since('credits')} "
    "FROM (SELECT key AS n, json_extract(value, '$[0]') AS account_id, "
    "json_extract(value, '$[1]') AS key_id, json_extract(value, '$[2]') AS first_day "
    "FROM json_each(?1)) s ORDER BY s.n"
)


def claim_row(c: Claim) -> tuple[Any, ...]:
    return (c.counter, c.want, c.limit, c.window_end)


ADD_DRAWS = (
    "INSERT INTO balance_daily (account_id, grant_id, day, action, credits) "
    + _from_json("account_id", "grant_id", "day", "action", "credits")
    + " ON CONFLICT (account_id, grant_id, day, action) DO UPDATE SET "
    "credits = credits + excluded.credits"
)
ADD_OUTBOX = (
    "INSERT INTO outbox "
    "(seq, id, account_id, key_id, action, day, requests, calls, credits, time) "
    "SELECT ?2 + n, 'mwu_' || ?3 || '_' || (?2 + n), account_id, key_id, action, day, "
    "requests, calls, credits, ?4 FROM ("
    "SELECT key + 1 AS n, json_extract(value, '$[0]') AS account_id, "
    "json_extract(value, '$[1]') AS key_id, json_extract(value, '$[2]') AS action, "
    "json_extract(value, '$[3]') AS day, json_extract(value, '$[4]') AS requests, "
    "json_extract(value, '$[5]') AS calls, json_extract(value, '$[6]') AS credits "
    "FROM json_each(?1)) WHERE true ORDER BY n"
)
"""One event per row of a JSON array (?1), numbered on from ?2 (the last number, read in
the ledger's write transaction: no other writer numbers events meanwhile), with ids of
the store ?3, at ?4."""


def rollup_row(r: Rollup) -> tuple[Any, ...]:
    return (
        r.key_id, r.action, r.day, r.account_id, r.calls, r.credits, r.requests, r.last_used_at,
        *(getattr(r, c) for c in OUTCOME_FIELDS),
    )  # fmt: skip


def draw_row(d: BalanceDraw) -> tuple[Any, ...]:
    return (d.account_id, d.grant_id, d.day, d.action, d.credits)


def outbox_row(r: Rollup) -> tuple[Any, ...]:
    return (r.account_id, r.key_id, r.action, r.day, r.requests, r.calls, r.credits)
