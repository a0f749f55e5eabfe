"""The SQLite backend's schema and the statements of its ledger writes."""

from __future__ import annotations

from typing import Any

from meterware.storage.records import KeyTotals, Rollup

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (id TEXT PRIMARY KEY, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(id),
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    permission TEXT NOT NULL,
    website_id TEXT,
    created_at REAL NOT NULL,
    expires_at REAL,
    revoked_at REAL,
    per_minute INTEGER,
    monthly_limit INTEGER,
    monthly_credits INTEGER,
    billing_anchor_day INTEGER,
    last_used_at REAL,
    total_requests INTEGER NOT NULL DEFAULT 0,
    total_calls INTEGER NOT NULL DEFAULT 0,
    total_credits INTEGER NOT NULL DEFAULT 0,
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
CREATE TABLE IF NOT EXISTS counters (
    subject TEXT NOT NULL,
    period TEXT NOT NULL,
    count INTEGER NOT NULL,
    granted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (subject, period)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage_daily (
    account_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    day TEXT NOT NULL,
    action TEXT NOT NULL,
    calls INTEGER NOT NULL,
    credits INTEGER NOT NULL,
    PRIMARY KEY (account_id, key_id, day, action)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS usage_by_account ON usage_daily(account_id, day);
CREATE TABLE IF NOT EXISTS actions (action TEXT PRIMARY KEY, label TEXT NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('key_seq', 0);
"""


def _from_json(*columns: str) -> str:
    """`SELECT` the columns of a JSON array of rows (the statement's one parameter)."""
    picks = ", ".join(f"json_extract(value, '$[{i}]') AS {c}" for i, c in enumerate(columns))
    return f"SELECT {picks} FROM json_each(?1) WHERE true"  # WHERE: for the upsert's parser


CHUNK = 500  # rows per ledger statement

ADD_ROLLUPS = (
    "INSERT INTO usage_daily (key_id, action, day, account_id, calls, credits) "
    + _from_json("key_id", "action", "day", "account_id", "calls", "credits")
    + " ON CONFLICT (account_id, key_id, day, action) DO UPDATE SET "
    "calls = calls + excluded.calls, credits = credits + excluded.credits"
)
ADD_KEY_TOTALS = (
    "UPDATE keys SET total_requests = total_requests + t.requests, "
    "total_calls = total_calls + t.calls, total_credits = total_credits + t.credits, "
    "last_used_at = CASE WHEN t.last_used IS NULL THEN last_used_at "
    "ELSE max(coalesce(last_used_at, 0), t.last_used) END "
    "FROM (" + _from_json("id", "requests", "calls", "credits", "last_used") + ") AS t "
    "WHERE keys.id = t.id"
)
ADD_COUNTERS = (
    "INSERT INTO counters (subject, period, count) "
    + _from_json("subject", "period", "amount")
    + " ON CONFLICT (subject, period) DO UPDATE SET count = count + excluded.count"
)
SET_LABELS = (
    "INSERT INTO actions (action, label) "
    + _from_json("action", "label")
    + " ON CONFLICT (action) DO UPDATE SET label = excluded.label"
)


def rollup_row(r: Rollup) -> tuple[Any, ...]:
    return (r.key_id, r.action, r.day, r.account_id, r.calls, r.credits)


def totals_row(item: tuple[str, KeyTotals]) -> tuple[Any, ...]:
    key_id, t = item
    return (key_id, t.requests, t.calls, t.credits, t.last_used_at)
