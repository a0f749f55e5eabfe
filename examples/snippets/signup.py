"""A signup flow: a new customer gets an account on a plan, and its first key.

    python examples/snippets/signup.py

Runs against a SQLite file in a temporary directory.
"""

from __future__ import annotations

import asyncio
import tempfile

from meterware import Admin, Conflict


async def sign_up(admin: Admin, customer_id: str, company: str) -> str:
    """Create the customer's account and first key; the secret, to show once."""
    account = await admin.create_account(name=company, tier="free", external_id=customer_id)
    key, secret = await admin.create_key(name="Default key", account_id=account.id)
    print(f"account {account.id} ({account.name}) on the {account.tier} plan")
    print(f"key {key.id} follows the account's plan: {key.tier is None}")
    print(f"secret {secret[:7]}… ({len(secret)} characters, shown once)")
    return secret


async def main() -> None:
    url = f"sqlite:///{tempfile.mkdtemp()}/meterware.db"
    async with Admin(url) as admin:
        await sign_up(admin, customer_id="cust_1042", company="Acme Inc.")
        try:  # the same customer signing up twice
            await sign_up(admin, customer_id="cust_1042", company="Acme Inc.")
        except Conflict as exc:
            print(f"Conflict (HTTP {exc.http_status}, exit status {exc.exit_status}): {exc}")


if __name__ == "__main__":
    asyncio.run(main())
