"""Day-ahead profiles uploaded through the API reach control's limits, and bad ones are refused or named."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from energyhub.api.app import ApiSettings, create_app
from energyhub.control.online import ControlSettings, OnlineController
from tests.communities import base, dump

TOKEN = "day-ahead-test-token"
AMS = ZoneInfo("Europe/Amsterdam")
DAY = "2026-06-10"


@pytest.fixture
def community_file(tmp_path: Path) -> Path:
    doc = base()
    # c-001: firm 120 kW plus a non-firm right of up to 50 kW that the DSO may restrict a day ahead.
    doc["loops"][0]["connections"][0]["limits"] = {
        "import_kw": 120,
        "export_kw": 0,
        "day_ahead": {"import_kw": 50, "export_kw": 0},
    }
    path = tmp_path / "community.yaml"
    path.write_text(dump(doc))
    return path


def profile(noon_kw: float, rest_kw: float = 50) -> list[float]:
    """A June day (96 quarter hours) restricted to ``noon_kw`` from 12:00 to 13:00 local."""
    return [noon_kw if 48 <= q < 52 else rest_kw for q in range(96)]


async def test_an_uploaded_profile_sets_controls_limit_and_bad_uploads_are_refused(
    community_file: Path, tmp_path: Path
) -> None:
    state = tmp_path / "api"
    app = create_app(ApiSettings(community=community_file, token=TOKEN, state_dir=state))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    controller = OnlineController(
        ControlSettings(community=community_file, day_ahead_dir=state / "day_ahead")
    )
    noon = datetime(2026, 6, 10, 12, 15, tzinfo=AMS)
    other_day = datetime(2026, 6, 11, 12, 15, tzinfo=AMS)
    assert controller.book.limit_at("c-001", noon).import_w == 170_000  # not announced: the full right

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        stored = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": DAY, "import_kw": profile(10)}, headers=auth
        )
        assert stored.status_code == 201, stored.text
        assert controller.refresh_day_ahead()
        assert controller.book.limit_at("c-001", noon).import_w == 130_000  # firm 120 + announced 10
        assert controller.book.limit_at("c-001", other_day).import_w == 170_000
        assert not controller.refresh_day_ahead(), "nothing changed, nothing to do"

        # A new announcement for the same day replaces the first; control picks it up without a restart.
        again = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": DAY, "import_kw": profile(30)}, headers=auth
        )
        assert again.status_code == 201
        assert controller.refresh_day_ahead()
        assert controller.book.limit_at("c-001", noon).import_w == 150_000
        _imp_rest, _exp_rest, imp, _exp = controller._limits_now(noon)
        c1 = controller.network.node_ids.index("c-001")
        assert imp[c1] == pytest.approx(150 * (1 - controller.settings.margin))

        over = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": DAY, "import_kw": profile(80)}, headers=auth
        )
        assert over.status_code == 422
        assert "announces 80 kW, above the contracted non-firm 50 kW" in over.json()["detail"]
        no_right = await client.put(
            "/api/limits/c-002/day-ahead", json={"date": DAY, "import_kw": profile(10)}, headers=auth
        )
        assert no_right.status_code == 409
        assert "c-002: its contract has no day-ahead right" in no_right.json()["detail"]
        unauthorised = await client.put(
            "/api/limits/c-001/day-ahead", json={"date": DAY, "import_kw": profile(5)}
        )
        assert unauthorised.status_code in (401, 403)

    # A file that is not a profile is named and left out; the good one still holds.
    broken = state / "day_ahead" / "c-001" / "2026-06-11.json"
    broken.write_text('{"date": "2026-06-11", "import_kw": [1, 2]}')
    assert controller.refresh_day_ahead()
    assert controller.book.limit_at("c-001", noon).import_w == 150_000
    assert controller.book.limit_at("c-001", other_day).import_w == 170_000
    assert any(str(broken) in p and "expected 96" in p for p in controller.day_ahead_problems), (
        controller.day_ahead_problems
    )
