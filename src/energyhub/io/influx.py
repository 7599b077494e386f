"""A small client for InfluxDB's v1-compatible HTTP API: ``/write`` (line protocol) and ``/query`` (InfluxQL).

InfluxDB 1.x, 2.x (token + DBRP mapping) and 3.x all serve this API, so ingest, control and the dashboards work on
each. Errors keep the HTTP status so callers can tell a retryable outage (5xx, connection refused) from bad data
(4xx), which must not be retried.
"""

from __future__ import annotations

import gzip
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

__all__ = ["InfluxClient", "InfluxError", "Series"]

# A whole batch's body (5,000 points: 1.7 MB, 0.3 MB gzipped) fits in the socket at once, so the kernel hands it
# to InfluxDB at InfluxDB's pace; with the default buffer, asyncio sends the rest only as the event loop comes back
# to the socket, and a busy loop (the ingest filling its next batch) keeps InfluxDB waiting (bench/ingest.py). The
# kernel caps it at net.core.wmem_max.
SEND_BUFFER_BYTES = 4 * 1024 * 1024


class InfluxError(RuntimeError):
    """A failed request. ``status`` is None when the server could not be reached."""

    def __init__(self, message: str, *, status: int | None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500 or self.status == 429


@dataclass(frozen=True)
class Series:
    name: str
    columns: list[str]
    values: list[list[Any]]
    tags: dict[str, str] = field(default_factory=dict)

    def rows(self) -> list[dict[str, Any]]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.values]


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except ValueError:
        return response.text[:500]


class InfluxClient:
    """Async client bound to one database (and optionally one retention policy)."""

    def __init__(
        self,
        *,
        url: str,
        database: str,
        retention_policy: str | None = None,
        username: str | None = None,
        password: str | None = None,
        token: str | None = None,
        timeout_s: float = 10.0,
        gzip_min_bytes: int = 64 * 1024,
    ) -> None:
        self.url = url.rstrip("/")
        self.database = database
        self.retention_policy = retention_policy
        self._timeout = timeout_s
        self._gzip_min_bytes = gzip_min_bytes
        self._headers = {"Authorization": f"Token {token}"} if token else {}
        self._auth = {"u": username, "p": password} if username else {}
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            transport = httpx.AsyncHTTPTransport(
                socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)]
            )
            self._client = httpx.AsyncClient(
                base_url=self.url, headers=self._headers, timeout=self._timeout, transport=transport
            )
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> InfluxClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http().request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise InfluxError(f"InfluxDB at {self.url} not reachable: {exc!r}", status=None) from exc
        if response.status_code >= 300:
            raise InfluxError(
                f"InfluxDB {path} answered {response.status_code}: {_error_text(response)}",
                status=response.status_code,
            )
        return response

    async def ping(self) -> bool:
        try:
            response = await self._http().get("/ping")
        except httpx.TransportError:
            return False
        return response.status_code == 204

    async def write(self, lines: Iterable[str] | str, *, precision: str = "ns") -> None:
        """Write line protocol; gzip bodies above ``gzip_min_bytes`` (cheap on loopback, a win over a WAN)."""
        body = (lines if isinstance(lines, str) else "\n".join(lines)).encode()
        params = {"db": self.database, "precision": precision, **self._auth}
        if self.retention_policy:
            params["rp"] = self.retention_policy
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if len(body) >= self._gzip_min_bytes:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        await self._request("POST", "/write", params=params, content=body, headers=headers)

    async def query(self, q: str, *, epoch: str | None = "ns") -> list[Series]:
        """Run InfluxQL (one or more ';'-separated statements) and return every series of every statement."""
        params = {"db": self.database, "q": q, **self._auth}
        if epoch:
            params["epoch"] = epoch
        response = await self._request("POST", "/query", data=params)
        out: list[Series] = []
        for result in response.json().get("results", []):
            if "error" in result:
                raise InfluxError(f"InfluxQL error in {q!r}: {result['error']}", status=400)
            for series in result.get("series", []):
                out.append(
                    Series(
                        series.get("name", ""),
                        series.get("columns", []),
                        series.get("values", []),
                        series.get("tags", {}) or {},
                    )
                )
        return out

    async def create_database(self) -> None:
        await self._request("POST", "/query", data={"q": f'CREATE DATABASE "{self.database}"', **self._auth})

    def create_database_sync(self) -> None:
        """For start-up code that has no event loop yet."""
        with httpx.Client(base_url=self.url, headers=self._headers, timeout=self._timeout) as client:
            response = client.post("/query", data={"q": f'CREATE DATABASE "{self.database}"', **self._auth})
            if response.status_code >= 300:
                raise InfluxError(
                    f"creating database {self.database!r} failed: {_error_text(response)}",
                    status=response.status_code,
                )
