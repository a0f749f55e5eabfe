"""Webhooks: the stored notices, delivered to HTTP endpoints and signed as the Standard
Webhooks specification describes (https://www.standardwebhooks.com).

A notice (a threshold crossed, a key created, a concern failing open...) is stored once
(`store.add_notice`). A `WebhookSender` delivers the stored notices to each
`WebhookEndpoint`, in the order they were stored. Run it in the app (`await
sender.run(stop)` in a background task) or beside it (`meterware webhooks deliver
--follow`, see `meterware.cli.webhooks`). It needs `pip install 'meterware[webhooks]'`
(`standardwebhooks`, `httpx`).

The request
    `POST <url>`, `content-type: application/json`, with the body
    `{"type": "<notice type>", "timestamp": "2026-04-12T14:30:00.000Z", "data": {<the
    notice's data>, "account_id": ..., "key_id": ..., "id": "<notice id>"}}` (`timestamp`
    is when the notice was created) and the headers `webhook-id` (the notice's id, the
    same on every attempt), `webhook-timestamp` (the attempt's Unix time, in seconds)
    and `webhook-signature` (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, signed by
    the `standardwebhooks` library). A receiver checks it with
    `standardwebhooks.Webhook(secret).verify(body, headers)`, and deduplicates on
    `webhook-id`, as the specification asks.

Delivery
    *At least once* to each endpoint; a second time only around a failure. Each notice
    is stored before anything is sent. Each endpoint is a reader of the stored notices,
    with a cursor in the store (`webhook:<name>`): the last notice it is done with. A
    notice is sent until the endpoint answers 2xx, and the cursor moves past it right
    after that answer (one write per notice, not per batch), before the next one is
    sent. So a sender that dies (killed, crashed) sends one notice again when it, or a
    standby, resumes, with the same `webhook-id`: the one it had sent and had no answer
    for (the endpoint may have processed it), or the one whose 2xx came in just before
    the cursor's write (the time of one store write). The same happens when the store
    fails that write. At most one notice per endpoint and failure; receivers drop it by
    its `webhook-id`, as the specification asks. A graceful stop (`stop`, SIGTERM to
    the command) finishes the notice in flight and repeats nothing.

Ordering and retries
    Per endpoint, notices go one at a time in stored order: a notice being retried holds
    back the ones after it. A failed attempt (no answer within `timeout`, a connection
    error, any status but 2xx) is retried after a backoff of the endpoint's: 1 s
    doubling to 5 minutes, each wait drawn between half and all of it (jitter), or
    longer when the answer has a `retry-after` (honoured up to an hour). It resets at
    the next 2xx. Endpoints are independent: each has its own loop, backoff and lease,
    so a failing or slow endpoint holds back no other.

Giving up
    A notice is given up on when the endpoint refused it `refusals` times (default 5)
    with a 4xx other than 408, 409 and 429 (which are retried like a 5xx), or when it
    could not be delivered within `max_age` of its creation (default 3 days, as the
    specification's schedule; while an endpoint is failing, a notice older than that is
    given up on without another attempt). It is recorded in the store with the reason,
    in the write that moves the cursor past it (`store.rejections("webhook:<name>")`,
    `meterware webhooks rejected`), logged at ERROR, and the notices after it go on. A
    wrong secret is such a case: the receiver answers 400 to every attempt.

The lease
    One sender per endpoint at a time: the store lease `webhook:<name>`, held by
    `owner` for `lease_ttl` seconds and renewed before a notice is sent whenever less
    than `2 × timeout + 1` seconds of it remain, so it cannot lapse while the notice is
    in flight and its cursor written. *Fencing*: before the cursor moves, the sender
    checks that the lease it holds still has `timeout` seconds to run (by its clock);
    if not (a stalled process), it asks the store again, and a sender that lost the
    lease moves nothing and stops: the holder sends that notice again. Another sender
    stands by and takes over within `lease_ttl` (and a `poll`) of a holder's crash, at
    its next poll after a graceful stop (`run` releases its leases). A process restarted
    with the `owner` it had resumes its own lease at once. Leases compare the clocks of
    the processes that share them: keep them in sync.

A new endpoint (no cursor yet) starts with the notices of the past `max_age`; older ones
are skipped, as are notices of types the endpoint does not take. Every HTTP call and
every store call is bounded by `timeout` seconds. The secret is never in a repr, a log
line or an exception.

Environment (`endpoints_from_env`, the `meterware webhooks` command):

| variable | what |
| --- | --- |
| `METERWARE_WEBHOOK_URL` | the endpoint's URL (http or https) |
| `METERWARE_WEBHOOK_SECRET` | its secret, `whsec_` + base64 of 24 to 64 random bytes |
| `METERWARE_WEBHOOK_NAME` | its name in the store (optional; default from the URL) |
| `METERWARE_WEBHOOK_TYPES` | the notice types it takes, comma-separated (optional: all) |
"""

from __future__ import annotations

from meterware.webhooks.endpoints import (
    WebhookEndpoint,
    endpoints_from_env,
    new_secret,
    payload,
    signed_request,
)
from meterware.webhooks.http import MAX_ANSWER as MAX_ANSWER
from meterware.webhooks.http import RETRIED_4XX as RETRIED_4XX
from meterware.webhooks.http import Attempt, send_once
from meterware.webhooks.readers import EndpointStatus
from meterware.webhooks.sender import FIRST_DELAY as FIRST_DELAY
from meterware.webhooks.sender import MAX_AGE, WebhookSender, retry_delay
from meterware.webhooks.sender import MAX_DELAY as MAX_DELAY
from meterware.webhooks.sender import MAX_RETRY_AFTER as MAX_RETRY_AFTER
from meterware.webhooks.sender import POLL as POLL
from meterware.webhooks.sender import REFUSALS as REFUSALS

__all__ = [
    "MAX_AGE",
    "Attempt",
    "EndpointStatus",
    "WebhookEndpoint",
    "WebhookSender",
    "endpoints_from_env",
    "new_secret",
    "payload",
    "retry_delay",
    "send_once",
    "signed_request",
]
