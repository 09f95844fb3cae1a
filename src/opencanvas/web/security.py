"""What keeps the pages safe when they show text strangers wrote and listen beyond localhost.

- Every response carries a Content-Security-Policy with no inline script and no third-party origin.
- Request bodies larger than `max_body` bytes are refused (413) before they are read into memory.
- A POST must carry `Authorization: Bearer <token>` (which a browser never adds across sites) or an
  `X-CSRF-Token` header that matches the session cookie (an HMAC of it under the server's secret), and
  a foreign `Origin` is refused: a page elsewhere cannot make the browser vote or generate.
- Tokens are compared by hash; the admin token is made at start-up and printed once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; base-uri 'none'; frame-ancestors 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
}
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SESSION_COOKIE = "oc_session"
ADMIN_COOKIE = "oc_admin"
MAX_BODY = 64 * 1024

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS


@dataclass
class Secrets:
    """The server's per-start secrets: the CSRF key and the admin token (kept as its hash)."""

    admin_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    csrf_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))

    def __post_init__(self) -> None:
        self.admin_sha256 = hashlib.sha256(self.admin_token.encode()).hexdigest()

    def is_admin(self, token: str | None) -> bool:
        if not token:
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode()).hexdigest(), self.admin_sha256)

    def csrf_token(self, session: str) -> str:
        return hmac.new(self.csrf_key, session.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(self.csrf_token(str(session)), str(token))


def bearer(headers: Any) -> str | None:
    value = headers.get("authorization") or ""
    scheme, _, token = value.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


class SecurityMiddleware:
    """Pure ASGI: security headers on every response, and the request body size limit."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            await _plain(send, 413, f"request body over {self.max_body} bytes")
            return
        seen = 0
        too_big = False

        async def limited_receive() -> Message:
            nonlocal seen, too_big
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    too_big = True
                    raise BodyTooLarge()
            return message

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                raw = [(k, v) for k, v in message.get("headers", []) if k.decode().lower() not in SECURITY_HEADERS]
                raw += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message["headers"] = raw
            await send(message)

        try:
            await self.app(scope, limited_receive, with_headers)
        except BodyTooLarge:
            if too_big:
                await _plain(send, 413, f"request body over {self.max_body} bytes")


class BodyTooLarge(Exception):
    pass


async def _plain(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                            *[(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]]})
    await send({"type": "http.response.body", "body": body})
