"""The PostgreSQL backend's statements, with the schema filled in once per store."""

from __future__ import annotations

from meterware.storage.records import OUTCOME_FIELDS
from meterware.storage.sql import (
    ACCOUNT_COLUMNS,
    LIVE_KEYS,
    ROLLUP_SELECT,
    STORED_KEY_COLUMNS,
    key_select,
)

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
        key = key_select(f"{s}.")
        stored = ", ".join(STORED_KEY_COLUMNS)
        places = ", ".join(f"${i}" for i in range(1, len(STORED_KEY_COLUMNS) + 2))
        self.next_version = NEXT_VERSION.format(s=s)
        accounts = ", ".join(ACCOUNT_COLUMNS)
        self.ensure_account = (
            f"INSERT INTO {s}.accounts ({accounts}) VALUES ($1, $2, $3, $4, $5, $6) "
            "ON CONFLICT (id) DO NOTHING"
        )
        self.get_account = f"SELECT {accounts} FROM {s}.accounts WHERE id = $1"
        self.list_accounts = f"SELECT {accounts} FROM {s}.accounts ORDER BY id"
        self.update_account = f"UPDATE {s}.accounts SET {{sets}} WHERE id = $1"
        self.lock_account = f"SELECT 1 FROM {s}.accounts WHERE id = $1 FOR UPDATE"
        self.live_keys = LIVE_KEYS.format(p=f"{s}.", a="$1", n="$2")
        self.account_keys_version = f"UPDATE {s}.keys SET version = $2 WHERE account_id = $1"
        self.key_tiers = (
            f"SELECT tier FROM {s}.keys WHERE tier IS NOT NULL UNION SELECT tier FROM {s}.accounts"
        )

        self.insert_key = f"INSERT INTO {s}.keys ({stored}, version) VALUES ({places})"
        self.insert_secret = (
            f"INSERT INTO {s}.key_secrets (hash, key_id, expires_at) VALUES ($1, $2, NULL)"
        )
        self.get_key = f"SELECT {key} FROM {s}.keys k WHERE k.id = $1"
        self.find_key = (
            f"SELECT {key}, t.expires_at FROM {s}.key_secrets t JOIN {s}.keys k "
            "ON k.id = t.key_id WHERE t.hash = $1 AND (t.expires_at IS NULL OR t.expires_at > $2)"
        )
        self.list_keys = f"SELECT {key} FROM {s}.keys k ORDER BY created_at, id"
        self.keys_expired = (
            f"SELECT {key} FROM {s}.keys k WHERE k.expires_at > $1 AND k.expires_at <= $2 "
            "ORDER BY k.expires_at, k.id"
        )
        self.list_account_keys = (
            f"SELECT {key} FROM {s}.keys k WHERE account_id = $1 ORDER BY created_at, id"
        )
        self.update_key = f"UPDATE {s}.keys SET {{sets}}version = $2 WHERE id = $1"
        self.retire_secrets = (
            f"UPDATE {s}.key_secrets SET expires_at = LEAST(expires_at, $2) WHERE key_id = $1"
        )
        self.set_version = f"UPDATE {s}.keys SET version = $2 WHERE id = $1"
        self.key_changes = (
            f"SELECT m.value, ARRAY(SELECT id FROM {s}.keys WHERE version > $1 "
            f"ORDER BY version) FROM {s}.meta m WHERE m.name = 'key_seq'"
        )
        # One statement, one round trip. In ON CONFLICT DO UPDATE every right-hand side
        # reads the row as it was (`c.count` is the old count), so `granted`, `count` and
        # `window_end` agree; a racing caller waits on the row lock and then sees ours.
        # Claims come sorted by counter, so two reservations lock rows in one order.
        new = "LEAST(t.want, GREATEST(0, t.cap))"
        fresh = "LEAST(excluded.want, GREATEST(0, excluded.cap))"
        more = "LEAST(excluded.want, GREATEST(0, excluded.cap - c.count))"
        self.reserve = (
            f"INSERT INTO {s}.windows AS c (counter, window_end, count, granted, want, cap) "
            f"SELECT t.counter, t.window_end, {new}, {new}, t.want, t.cap "
            "FROM (SELECT u.counter, CASE WHEN u.window_end > $5 THEN u.want ELSE 0 END AS want, "
            "u.cap, u.window_end "
            "FROM unnest($1::text[], $2::bigint[], $3::bigint[], $4::float8[]) "
            "AS u(counter, want, cap, window_end)) AS t "
            "ON CONFLICT (counter) DO UPDATE SET "
            f"granted = CASE WHEN c.window_end <= $5 THEN {fresh} ELSE {more} END, "
            f"count = CASE WHEN c.window_end <= $5 THEN {fresh} ELSE c.count + {more} END, "
            "window_end = CASE WHEN c.window_end <= $5 THEN excluded.window_end "
            "ELSE c.window_end END "
            "RETURNING counter, granted, count, window_end"
        )
        self.release = (
            f"UPDATE {s}.windows SET count = GREATEST(0, count - $3::bigint) "
            "WHERE counter = $1 AND window_end = $2"
        )
        self.counter = f"SELECT count FROM {s}.windows WHERE counter = $1 AND window_end > $2"
        # GREATEST ignores NULL: the later of the stored and the new last use.
        outcome_types = "".join(f", ${i}::bigint[]" for i in range(9, 9 + len(OUTCOME_FIELDS)))
        self.add_rollups = (
            f"INSERT INTO {s}.usage_daily AS u "
            "(account_id, key_id, day, action, calls, credits, requests, last_used_at, "
            f"{', '.join(OUTCOME_FIELDS)}) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
            f"$5::bigint[], $6::bigint[], $7::bigint[], $8::float8[]{outcome_types}) "
            "ON CONFLICT (account_id, key_id, day, action) DO UPDATE SET "
            "calls = u.calls + excluded.calls, credits = u.credits + excluded.credits, "
            "requests = u.requests + excluded.requests, "
            + "".join(f"{c} = u.{c} + excluded.{c}, " for c in OUTCOME_FIELDS)
            + "last_used_at = GREATEST(u.last_used_at, excluded.last_used_at)"
        )
        self.add_draws = (
            f"INSERT INTO {s}.balance_daily AS b (account_id, grant_id, day, action, credits) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) "
            "ON CONFLICT (account_id, grant_id, day, action) DO UPDATE SET "
            "credits = b.credits + excluded.credits"
        )
        # The outbox's numbers come from one meta row, taken in the ledger's transaction:
        # the row lock queues writers, so events are numbered and committed in order (a
        # reader never sees number 8 before number 7 has committed: see NEXT_VERSION).
        self.outbox_take = (
            f"UPDATE {s}.meta SET value = value + $1 WHERE name = 'outbox_seq' RETURNING value - $1"
        )
        self.store_id = f"SELECT value FROM {s}.meta WHERE name = 'store_id'"
        self.add_outbox = (
            f"INSERT INTO {s}.outbox "
            "(seq, id, account_id, key_id, action, day, requests, calls, credits, time) "
            "SELECT $1::bigint + t.n, $2::text || ($1::bigint + t.n), "
            "t.a, t.k, t.ac, t.d, t.r, t.c, t.cr, $3 "
            "FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::bigint[], "
            "$9::bigint[], $10::bigint[]) WITH ORDINALITY AS t(a, k, ac, d, r, c, cr, n)"
        )
        self.rollups = (
            f"SELECT {ROLLUP_SELECT} FROM {s}.usage_daily WHERE day BETWEEN $1 AND $2 "
            "AND ($3::text IS NULL OR account_id = $3) AND ($4::text IS NULL OR key_id = $4) "
            "ORDER BY day, account_id, key_id, action"
        )
        self.set_label = (
            f"INSERT INTO {s}.actions (action, label) VALUES ($1, $2) "
            "ON CONFLICT (action) DO UPDATE SET label = excluded.label"
        )
        columns = "day, action, sum(calls)::bigint, sum(credits)::bigint, sum(requests)::bigint"
        self.account_usage = (
            f"SELECT {columns} FROM {s}.usage_daily "
            "WHERE account_id = $1 AND day BETWEEN $2 AND $3 "
            "GROUP BY day, action ORDER BY day, action"
        )
        self.key_usage = (
            f"SELECT {columns} FROM {s}.usage_daily "
            "WHERE account_id = $1 AND key_id = $2 AND day BETWEEN $3 AND $4 "
            "GROUP BY day, action ORDER BY day, action"
        )
        sums = (
            "coalesce(sum(requests), 0)::bigint, coalesce(sum(calls), 0)::bigint, "
            "coalesce(sum(credits), 0)::bigint, max(last_used_at)"
        )
        self.account_totals = (
            f"SELECT {sums} FROM {s}.usage_daily WHERE account_id = $1 AND day BETWEEN $2 AND $3"
        )
        self.key_totals = (
            f"SELECT {sums} FROM {s}.usage_daily "
            "WHERE account_id = $1 AND key_id = $2 AND day BETWEEN $3 AND $4"
        )

        # One subquery form per case, so that each can use the primary key.
        def since(column: str) -> str:
            return (
                f"CASE WHEN t.key_id IS NULL THEN (SELECT coalesce(sum(u.{column}), 0) "
                f"FROM {s}.usage_daily u WHERE u.account_id = t.account_id "
                "AND u.day >= t.first_day) "
                f"ELSE (SELECT coalesce(sum(u.{column}), 0) FROM {s}.usage_daily u "
                "WHERE u.account_id = t.account_id AND u.key_id = t.key_id "
                "AND u.day >= t.first_day) END::bigint"
            )

        self.month_usage = (
            f"SELECT {since('requests')}, {since('credits')} "
            "FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY "
            "AS t(account_id, key_id, first_day, n) ORDER BY t.n"
        )
