"""What every HTTP request passes before the app sees it: the token for a write, then a cap on the body's size.

Both are checked before a byte of the body is read. FastAPI reads and parses a body before it runs a route's
dependencies, so a token check there came after a 100 MB upload had been read and parsed (issue 14). This ASGI
middleware sits in front of the app:

1. A write (``POST``, ``PUT``, ``PATCH``, ``DELETE``) needs ``Authorization: Bearer <token>`` (the scheme in any
   case, RFC 7235; the token compared in constant time); otherwise 401 with ``WWW-Authenticate: Bearer``, or 403
   when the API has no token at all.
2. A body announced larger than ``max_body_bytes`` (``Content-Length``) gets 413 at once; a body without a length
   (chunked) is counted as it arrives and gets 413 as soon as it passes the limit. Only then does the app get the
   body, from memory, at most ``max_body_bytes`` of it.

A refusal closes the connection (``Connection: close``) when the request has a body. A body that may fit the limit
is read and dropped after the answer, so the connection closes cleanly; a larger one is not read at all, and the
connection is reset under the client (as Go's server does): a client that reads while it sends (curl) sees the
413, one that reads only once it has sent everything sees the reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Iterable
from typing import NamedTuple

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["WRITE_METHODS", "Refusal", "RequestGuard", "token_refusal"]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REALM = 'Bearer realm="energyhub"'
# How long a refused body that may fit the limit is read (and dropped) before the connection closes.
DRAIN_S = 5.0


class Refusal(NamedTuple):
    status: int
    detail: str
    headers: dict[str, str]


def _bearer(values: list[bytes]) -> bytes | None:
    """The token of the one ``Authorization: Bearer <token>`` header; None for anything else."""
    if len(values) != 1:
        return None
    scheme, _, rest = values[0].strip().partition(b" ")
    token = rest.strip(b" ")
    if scheme.lower() != b"bearer" or not token or any(c in token for c in b" \t"):
        return None
    return token


def token_refusal(authorization: Iterable[bytes], token: str | None) -> Refusal | None:
    """Why a write with these ``Authorization`` header values is refused, or None if its token is good."""
    if token is None:
        return Refusal(403, "writes are off: this API has no token configured (EHUB_API_TOKEN)", {})
    values = list(authorization)
    given = _bearer(values)
    if given is None:
        # No bearer credentials at all: RFC 6750 asks for the challenge without an error code.
        return Refusal(
            401, "a valid token is needed: Authorization: Bearer <token>", {"WWW-Authenticate": REALM}
        )
    if not secrets.compare_digest(given, token.encode()):
        return Refusal(
            401,
            "the token is not valid: Authorization: Bearer <token>, with the API's token",
            {"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    return None


def _header(scope: Scope, name: bytes) -> list[bytes]:
    return [value for key, value in scope["headers"] if key.lower() == name]


def _size(n: int) -> str:
    return f"{n / 2**20:g} MiB" if n >= 2**20 else f"{n / 1024:g} KiB"


class RequestGuard:
    """ASGI middleware: the token of a write and the size of any body, before the body is read."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.token = token
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lengths = _header(scope, b"content-length")
        chunked = bool(_header(scope, b"transfer-encoding"))
        if lengths and not lengths[0].strip().isdigit():  # uvicorn's h11 refuses these before they get here
            await self._refuse(
                Refusal(400, "Content-Length is not a number of bytes", {}), receive, send, body=True
            )
            return
        length = int(lengths[0]) if lengths else None
        has_body = chunked or bool(length)
        # A client that waits for "100 Continue" sends no body after a refusal: there is nothing to drain.
        waits = any(v.strip().lower() == b"100-continue" for v in _header(scope, b"expect"))
        fits = length is None or length <= self.max_body_bytes
        if scope["method"] in WRITE_METHODS:
            refusal = token_refusal(_header(scope, b"authorization"), self.token)
            if refusal is not None:
                await self._refuse(
                    refusal, receive, send, body=has_body, drain=has_body and fits and not waits
                )
                return
        if not has_body:
            await self.app(scope, receive, send)
            return
        if not fits:
            await self._refuse(self._too_large(), receive, send, body=True, drain=False)
            return
        try:
            body = await self._read(receive)
        except _TooLarge:
            await self._refuse(self._too_large(), receive, send, body=True, drain=False)
            return
        if body is None:  # the client went away before it had sent the body
            return
        await self.app(scope, _replay(body, receive), send)

    def _too_large(self) -> Refusal:
        n = self.max_body_bytes
        return Refusal(
            413, f"the request body is over the limit of {n} bytes ({_size(n)}, the API's max_body_bytes)", {}
        )

    async def _refuse(
        self, refusal: Refusal, receive: Receive, send: Send, *, body: bool, drain: bool = False
    ) -> None:
        """Answer at once. If the request has a body, the connection closes after the answer; a body that may
        still fit the limit is read first (and dropped): closed with unread data, the connection is reset,
        which can cost the client the answer. A larger one is not read at all."""
        content: dict[str, object] = {"detail": refusal.detail}
        if refusal.status == 413:
            content["limit_bytes"] = self.max_body_bytes
        response = JSONResponse(
            content, refusal.status, {**refusal.headers, **({"Connection": "close"} if body else {})}
        )
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        await send({"type": "http.response.body", "body": response.body, "more_body": drain})
        if drain:
            await self._discard(receive)
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _discard(self, receive: Receive) -> None:
        """Read and drop the body of a refused request: up to ``max_body_bytes``, for ``DRAIN_S`` at most."""
        size = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                while size <= self.max_body_bytes:
                    message = await receive()
                    if message["type"] == "http.disconnect" or not message.get("more_body", False):
                        return
                    size += len(message.get("body", b""))

    async def _read(self, receive: Receive) -> bytes | None:
        """The body, counted as it arrives; None if the client went away. Raises ``_TooLarge`` as soon as it
        passes the limit (the rest is neither read nor kept)."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise _TooLarge
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _TooLarge(Exception):
    """The body passed ``max_body_bytes`` while it was read."""


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read already, then whatever the server says next (a disconnect)."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
