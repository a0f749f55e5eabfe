"""The checks `Admin` applies to what it is given: ids, accounts and keys.

Each raises `InvalidValue` with a message that says what is wrong. Imports no other part of
`meterware.admin`.
"""

from __future__ import annotations

from meterware.clock import LATEST
from meterware.errors import InvalidValue
from meterware.keys import PERMISSIONS, Account, ApiKey, valid_id
from meterware.tiers import MAX_COUNT, TierTable


def check_id(value: str, what: str) -> str:
    """The id, if it is one (`InvalidValue` if not)."""
    if not isinstance(value, str) or not valid_id(value):
        raise InvalidValue(
            f"{value!r} is not a valid {what} id (1-128 characters of A-Za-z0-9_.:-)"
        )
    return value


def check_account(account: Account, tiers: TierTable) -> None:
    """Refuse an account whose id, tier, name or external ids `Admin` cannot take."""
    check_id(account.id, "account")
    if not tiers.knows(account.tier):
        raise InvalidValue(f"unknown tier {account.tier!r} (known: {', '.join(tiers.names())})")
    if account.name is not None and not 1 <= len(account.name.strip()) <= 200:
        raise InvalidValue("an account's name must be 1-200 characters")
    for what in ("external_id", "stripe_customer_id"):
        value = getattr(account, what)
        if value is not None:
            check_id(value, what.replace("_", " "))


def check_key(key: ApiKey, tiers: TierTable) -> None:
    """Refuse a key whose name, account, tier, permission, website or limits `Admin`
    cannot take."""
    if not key.name.strip() or len(key.name) > 200:
        raise InvalidValue("a key's name must be 1-200 characters")
    check_id(key.account_id, "account")
    if key.tier is not None and not tiers.knows(key.tier):
        raise InvalidValue(f"unknown tier {key.tier!r} (known: {', '.join(tiers.names())})")
    if key.permission not in PERMISSIONS:
        raise InvalidValue(f"permission must be one of {', '.join(PERMISSIONS)}")
    if key.website_id is not None:
        check_id(key.website_id, "website")
    if key.permission == "site_access" and not key.website_id:
        raise InvalidValue("a site_access key needs a website id")
    if key.permission == "full_access" and key.website_id:
        raise InvalidValue("a website id is only for site_access keys")
    for what in ("per_minute", "monthly_limit", "monthly_credits"):
        value = getattr(key, what)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT
        ):
            raise InvalidValue(f"{what} must be an integer from 0 to {MAX_COUNT}, or None")
    if key.expires_at is not None and not key.expires_at <= LATEST:
        raise InvalidValue("expires_at must be a time before the year 10000")
    anchor = key.billing_anchor_day
    if anchor is not None and not 1 <= anchor <= 31:
        raise InvalidValue("billing_anchor_day must be 1-31")
