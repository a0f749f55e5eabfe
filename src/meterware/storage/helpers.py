"""Helpers the backends share beside the contract: which fields an update may change,
the order grants are spent in, outbox ids, a key seen through a retiring secret, and a
URL with its password hidden.

Pure functions of `meterware.keys`, `meterware.errors` and the storage records; the
contract (`meterware.storage.base`) re-exports the functions.
"""

from __future__ import annotations

import re
from typing import Any

from meterware.errors import InvalidValue
from meterware.keys import ApiKey
from meterware.storage.records import CreditGrant

__all__ = [
    "UPDATABLE_ACCOUNT_FIELDS",
    "UPDATABLE_KEY_FIELDS",
    "check_account_updatable",
    "check_updatable",
    "outbox_id",
    "redact",
    "retiring",
    "spending_order",
]

UPDATABLE_KEY_FIELDS = frozenset({
    "name", "tier", "permission", "website_id", "expires_at", "revoked_at",
    "per_minute", "monthly_limit", "monthly_credits", "billing_anchor_day",
})  # fmt: skip
"""The `ApiKey` fields `update_key` may change; any other name is an `InvalidValue`."""


UPDATABLE_ACCOUNT_FIELDS = frozenset({"tier", "name", "external_id", "stripe_customer_id"})
"""The `Account` fields `update_account` may change."""


def check_updatable(changes: dict[str, Any]) -> None:
    """`InvalidValue` if `changes` names a field `update_key` may not change."""
    unknown = set(changes) - UPDATABLE_KEY_FIELDS
    if unknown:
        raise InvalidValue(f"cannot update {sorted(unknown)}")


def check_account_updatable(changes: dict[str, Any]) -> None:
    """`InvalidValue` if `changes` names a field `update_account` may not change, or
    sets the tier to None (an account always has a plan)."""
    unknown = set(changes) - UPDATABLE_ACCOUNT_FIELDS
    if unknown:
        raise InvalidValue(f"cannot update {sorted(unknown)}")
    if "tier" in changes and changes["tier"] is None:
        raise InvalidValue("an account's tier cannot be None")


def spending_order(grant: CreditGrant) -> tuple[bool, float, float, str]:
    """The order grants are spent in: soonest expiry first, never-expiring last."""
    never = grant.expires_at is None
    return never, grant.expires_at or 0.0, grant.granted_at, grant.grant_id


def outbox_id(store_id: str, seq: int) -> str:
    """The identifier of outbox event `seq` of the store `store_id`: the same every time
    it is read, and different in every store (two deployments sending to one billing
    system)."""
    return f"mwu_{store_id}_{seq}"


def retiring(key: ApiKey, secret_expires_at: float | None) -> ApiKey:
    """`key` as seen through a secret that stops working at `secret_expires_at`."""
    if secret_expires_at is None:
        return key
    if key.expires_at is not None and key.expires_at <= secret_expires_at:
        return key
    return key.with_changes(expires_at=secret_expires_at)


_SECRET_PARAM = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&#]*")


def redact(url: str) -> str:
    """The URL with any password (userinfo or `?password=`) replaced by `***`."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    main, q, query = rest.partition("?")
    if "@" in main:
        userinfo, _, host = main.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        main = f"{user}{':***' if colon else ''}@{host}"
    if q:
        query = _SECRET_PARAM.sub(r"\1***", q + query)[1:]
    return f"{scheme}://{main}{q}{query}"
