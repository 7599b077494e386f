"""What every route of the API shares: the community, the topics, the live view, the one broker link, the
database client and the token check."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import HTTPException, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from energyhub.api.guard import token_refusal
from energyhub.api.link import BrokerLink
from energyhub.api.live import LiveView
from energyhub.api.settings import ApiSettings
from energyhub.domain.bookings import BookingStore
from energyhub.domain.community import load_community
from energyhub.domain.day_ahead import DayAheadStore
from energyhub.domain.topology import Community, Device
from energyhub.io.influx import InfluxClient, InfluxError, Series
from energyhub.wire.topics import Topics

__all__ = ["BEARER", "ApiContext"]

# For the OpenAPI page's "Authorize"; the token itself is checked by src/energyhub/api/guard.py.
BEARER = HTTPBearer(auto_error=False, description="The API's token (EHUB_API_TOKEN): every write needs it.")


@dataclass
class ApiContext:
    settings: ApiSettings
    community: Community
    topics: Topics
    live: LiveView
    link: BrokerLink
    influx: InfluxClient
    day_ahead: DayAheadStore
    bookings: BookingStore
    devices: dict[tuple[str, str], tuple[str, Device]]  # (gateway, device) -> (connection, device)
    gateways: frozenset[str]  # every gateway of the community, with devices or not

    @classmethod
    def build(cls, settings: ApiSettings) -> ApiContext:
        community = load_community(settings.community)
        topics = Topics(site=settings.site or community.community.id, root=settings.topic_root)
        live = LiveView(community, topics, max_ahead_s=settings.max_ahead_s)
        live.acks.max_overrides = settings.max_tracked_overrides
        devices = {(community.gateway_of(c, d), d.id): (c.id, d) for c, d in community.devices()}
        gateways = {g.id for _loop, _micro, c in community.connections() for g in c.gateways}
        link = BrokerLink(
            settings, live.filters(), live.take_message, publish_timeout_s=settings.publish_timeout_s
        )
        return cls(
            settings=settings,
            community=community,
            topics=topics,
            live=live,
            link=link,
            influx=settings.influx(),
            day_ahead=DayAheadStore(settings.state_dir / "day_ahead"),
            bookings=BookingStore(settings.state_dir / "bookings"),
            devices=devices,
            gateways=frozenset(gateways | {g for g, _ in devices}),
        )

    async def query(self, q: str) -> list[Series]:
        """Run InfluxQL; the database away (or refusing) is a 503 that says so, not a 500."""
        try:
            return await self.influx.query(q, epoch=None)
        except InfluxError as exc:
            raise HTTPException(503, f"the database did not answer: {exc}") from None

    def require_token(
        self, request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]
    ) -> None:
        """The guard has checked the token already; checked here too, so no write route is open on its own."""
        given = (value for name, value in request.scope["headers"] if name == b"authorization")
        refusal = token_refusal(given, self.settings.token)
        if refusal is not None:
            raise HTTPException(refusal.status, refusal.detail, refusal.headers or None)
