"""Webhook endpoints: where notices go, their secrets, the endpoint the environment names,
and the signed request of one attempt (the Standard Webhooks form, see `meterware.webhooks`).

It imports no other webhook module; `standardwebhooks` only when a request is signed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import importlib
import json
import os
import re
import secrets
from collections.abc import Collection, Mapping
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from meterware.clock import isoformat_ms
from meterware.errors import ConfigurationError
from meterware.storage.base import redact
from meterware.storage.records import Notice

__all__ = ["WebhookEndpoint", "endpoints_from_env", "new_secret", "payload", "signed_request"]

_PREFIX = "whsec_"
_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def _require() -> None:
    for module in ("standardwebhooks", "httpx"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise ConfigurationError(
                f"webhooks need {module}: pip install 'meterware[webhooks]'"
            ) from None


def new_secret() -> str:
    """A fresh endpoint secret: `whsec_` + base64 of 32 random bytes."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _check_secret(secret: object) -> None:
    how = (
        "a webhook secret is 'whsec_' followed by the base64 of 24 to 64 random bytes "
        "(meterware.webhooks.new_secret() makes one)"
    )
    if not isinstance(secret, str) or not secret.startswith(_PREFIX):
        raise ConfigurationError(f"{how}: this one does not start with 'whsec_'")
    encoded = secret[len(_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{how}: this one is not base64 after 'whsec_'") from None
    if not 24 <= len(key) <= 64:
        raise ConfigurationError(f"{how}: this one decodes to {len(key)} bytes")


class WebhookEndpoint:
    """Where notices go, and the secret they are signed with.

    - `url` - the endpoint, `http://` or `https://`.
    - `secret` - `whsec_` + base64 of 24 to 64 random bytes (the Standard Webhooks form),
      checked here; never shown in a repr, a log line or an error.
    - `name` - the endpoint's cursor, lease and rejections in the store
      (`webhook:<name>`). Defaults to a hash of the URL, so every process that sends to
      one URL shares them. Give one when the URL may change.
    - `types` - the notice types it takes. Defaults to None: every type.
    """

    __slots__ = ("_secret", "_signer", "name", "types", "url")

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        name: str | None = None,
        types: Collection[str] | None = None,
    ) -> None:
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"a webhook URL is http:// or https://, not {_shown(url)!r}")
        _check_secret(secret)
        if name is not None and not _NAME.fullmatch(name):
            raise ConfigurationError(
                f"a webhook endpoint's name is 1-64 characters of A-Za-z0-9_.:-, not {name!r}"
            )
        if isinstance(types, str) or (types is not None and not types):
            raise ConfigurationError("types is a non-empty collection of notice types, or None")
        self.url = url
        self.name = name or "url_" + hashlib.sha256(url.encode()).hexdigest()[:16]
        self.types = None if types is None else frozenset(types)
        self._secret = secret
        self._signer: Any = None

    def __repr__(self) -> str:
        return f"WebhookEndpoint({redact(self.url)!r}, name={self.name!r})"

    @property
    def reader(self) -> str:
        """Its cursor, lease and rejections in the store."""
        return f"webhook:{self.name}"

    def wants(self, notice_type: str) -> bool:
        """Whether it takes notices of this type."""
        return self.types is None or notice_type in self.types

    def sign(self, msg_id: str, timestamp: int, body: str) -> str:
        """The `webhook-signature` of one attempt (the `standardwebhooks` library's)."""
        if self._signer is None:
            _require()
            from standardwebhooks import Webhook

            self._signer = Webhook(self._secret)
        at = datetime.fromtimestamp(timestamp, tz=timezone.utc)
        signature: str = self._signer.sign(msg_id, at, body)
        return signature


def _shown(url: object) -> str:
    return redact(url) if isinstance(url, str) else repr(url)


def endpoints_from_env(environ: Mapping[str, str] | None = None) -> list[WebhookEndpoint]:
    """The endpoint `METERWARE_WEBHOOK_URL` and `METERWARE_WEBHOOK_SECRET` name (with
    `METERWARE_WEBHOOK_NAME` and `METERWARE_WEBHOOK_TYPES` if set), or none when no URL
    is set. A URL without a secret (or the reverse) is a `ConfigurationError`."""
    env = os.environ if environ is None else environ
    url = env.get("METERWARE_WEBHOOK_URL") or None
    secret = env.get("METERWARE_WEBHOOK_SECRET") or None
    if url is None and secret is None:
        return []
    if url is None or secret is None:
        missing = "METERWARE_WEBHOOK_SECRET" if url else "METERWARE_WEBHOOK_URL"
        raise ConfigurationError(f"webhooks: {missing} is not set")
    types = [t.strip() for t in (env.get("METERWARE_WEBHOOK_TYPES") or "").split(",")]
    types = [t for t in types if t]
    name = env.get("METERWARE_WEBHOOK_NAME") or None
    return [WebhookEndpoint(url, secret, name=name, types=types or None)]


def payload(notice: Notice) -> str:
    """The request's body: the notice as Standard Webhooks recommends (minified JSON)."""
    data = {**notice.data, "account_id": notice.account_id, "key_id": notice.key_id}
    data["id"] = notice.id
    event = {"type": notice.type, "timestamp": isoformat_ms(notice.created_at), "data": data}
    return json.dumps(event, separators=(",", ":"), default=str)


def signed_request(
    endpoint: WebhookEndpoint, notice: Notice, timestamp: int
) -> tuple[dict[str, str], bytes]:
    """The headers and body of one attempt to deliver `notice`, at `timestamp`."""
    body = payload(notice)
    headers = {
        "content-type": "application/json",
        "webhook-id": notice.id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": endpoint.sign(notice.id, timestamp, body),
    }
    return headers, body.encode()
