"""The usage endpoint, in the two formats of the reference APIs.

- `credits` (reference A): calls and credits by endpoint and by day over a window of
  `days` (1-90, default 30), scoped to the calling key, another key of the same account
  (`keyId`), or the whole account when the caller is an account.
- `quota` (reference B): the key's monthly requests, limit, remaining, reset instant,
  lifetime requests, per-minute limit and tier.

`UsageApp` is served by the middleware at `usage_path`, and can also be mounted like
any ASGI app behind the middleware (`app.mount("/usage", UsageApp("credits"))`): the
middleware authenticates it, rate-limits it per minute, and neither counts it toward
the monthly quota nor charges it. Its errors are in the middleware's envelope.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta
from typing import Any

from starlette.datastructures import QueryParams
from starlette.types import Receive, Scope, Send

from meterware import responses
from meterware.clock import day_of, isoformat_ms, midnight
from meterware.config import ENVELOPE_OF, USAGE_FORMATS, UsageFormat
from meterware.errors import ConfigurationError, StorageError
from meterware.keys import Caller, valid_id
from meterware.responses import Refusal, render_json, send_json, send_refusal
from meterware.runtime import SCOPE_KEY, Call, Runtime

__all__ = ["UsageApp", "UsageFormat"]

_DAYS = re.compile(r"[0-9]{1,3}")


class UsageApp:
    """An ASGI app answering `GET` with the caller's usage in one of the two formats."""

    meterware_action = "usage"  # its action in metrics and the ledger
    meterware_unmetered = True  # behind the middleware: rate-limited, never counted

    def __init__(self, format: UsageFormat = "quota") -> None:
        if format not in USAGE_FORMATS:
            raise ConfigurationError(f"usage_format must be one of {USAGE_FORMATS}, not {format!r}")
        self.format = format

    def __repr__(self) -> str:
        return f"UsageApp({self.format!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = scope.get(SCOPE_KEY)
        if not isinstance(call, Call):  # reached without the middleware in front
            envelope = ENVELOPE_OF[self.format]
            challenge = responses.challenges(("x-api-key",), bearer=True)
            return await send_refusal(
                send, envelope, responses.UNAUTHORIZED, time.time(), challenge
            )
        runtime = call.runtime
        now = runtime.clock()
        envelope = runtime.settings.envelope
        headers = call.headers or []
        if scope["method"] not in ("GET", "HEAD"):
            allow = [*headers, (b"allow", b"GET")]
            return await send_refusal(send, envelope, responses.NOT_ALLOWED, now, allow)
        try:
            if self.format == "credits":
                body = await self._credits(runtime, call.caller, scope, now)
            else:
                body = await self._quota(runtime, call.caller, now)
        except StorageError:
            unavailable = [*headers, responses.RETRY_STORAGE]
            return await send_refusal(
                send, envelope, responses.STORAGE_UNAVAILABLE, now, unavailable
            )
        if isinstance(body, Refusal):
            return await send_refusal(send, envelope, body, now, headers)
        await send_json(send, 200, render_json(body), [*headers, (b"cache-control", b"no-store")])

    async def _credits(
        self, runtime: Runtime, caller: Caller, scope: Scope, now: float
    ) -> dict[str, Any] | Refusal:
        query = QueryParams(scope.get("query_string", b"").decode("latin-1"))
        days = 30
        if "days" in query:
            raw = query["days"]
            if not _DAYS.fullmatch(raw) or not 1 <= int(raw) <= 90:
                return responses.BAD_DAYS
            days = int(raw)
        key_id = caller.key_id
        if "keyId" in query:
            key_id = query["keyId"]
            if not valid_id(key_id):
                return responses.BAD_KEY_ID
        store = runtime.store
        await runtime.meter.flush()
        key = None
        if key_id is not None:
            key = await store.get_key(key_id)
            if key is None or key.account_id != caller.account_id:
                return responses.KEY_NOT_FOUND
        today = day_of(now)
        first = today - timedelta(days=days)
        rows = await store.usage(
            account_id=caller.account_id,
            key_id=key_id,
            first_day=first.isoformat(),
            last_day=today.isoformat(),
        )
        labels = await runtime.labels()
        by_endpoint: dict[str, dict[str, Any]] = {}
        by_day: dict[str, list[int]] = {}
        total_calls = total_credits = 0
        for row in rows:
            if not row.calls:  # requests that cost nothing are not in this report
                continue
            entry = by_endpoint.setdefault(
                row.action, {"calls": 0, "credits": 0, "label": labels.get(row.action, row.action)}
            )
            entry["calls"] += row.calls
            entry["credits"] += row.credits
            day = by_day.setdefault(row.day, [0, 0])
            day[0] += row.calls
            day[1] += row.credits
            total_calls += row.calls
            total_credits += row.credits
        ordered = sorted(
            by_endpoint.items(), key=lambda i: (-i[1]["credits"], -i[1]["calls"], i[0])
        )
        daily = []
        for offset in range(days + 1):
            date = (first + timedelta(days=offset)).isoformat()
            calls, credits = by_day.get(date, (0, 0))
            daily.append({"date": date, "calls": calls, "credits": credits})
        report: dict[str, Any] = {
            "period": {
                "start": isoformat_ms(midnight(first)),
                "end": isoformat_ms(now),
                "days": days,
            }
        }
        if key is not None:
            totals = await store.key_totals(key.id)
            last_used = totals.last_used_at
            report["key"] = {
                "id": key.id,
                "name": key.name,
                "lastUsed": None if last_used is None else isoformat_ms(last_used),
            }
        report["summary"] = {
            "totalCalls": total_calls,
            "totalCredits": total_credits,
            "byEndpoint": dict(ordered),
        }
        report["daily"] = daily
        return report

    async def _quota(self, runtime: Runtime, caller: Caller, now: float) -> dict[str, Any]:
        status = await runtime.quota_status(caller, now)
        return {
            "success": True,
            "data": {
                "api_key": {
                    "id": caller.key_id,
                    "name": caller.name,
                    "permission": caller.permission,
                    "website_id": caller.website_id,
                },
                "usage": {
                    "monthly_requests": status.monthly_requests,
                    "monthly_limit": status.monthly_limit,
                    "monthly_remaining": status.monthly_remaining,
                    "monthly_reset_at": isoformat_ms(status.monthly_reset_at),
                    "total_requests": status.total_requests,
                },
                "rate_limits": {"requests_per_minute": status.per_minute},
                "subscription": {"tier": caller.tier},
            },
            "timestamp": isoformat_ms(now),
        }
