"""What the roofs yield in a year: the simulators' PV model (pvlib clear sky and the seeded cloud model) summed
per connection, at the same one-minute resolution as the simulators' export.

Used by the area passport (installed and potential PV in kWh a year) and to check the reference community
against the published figures (2.7 MWp gives about 2.4 GWh a year).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd  # type: ignore[import-untyped]

from energyhub.domain.topology import Community, DeviceRole
from energyhub.synthetic.solar import pv_power_kw

__all__ = ["annual_pv_kwh"]

_SAMPLE_S = 60
_CHUNK = timedelta(days=31)  # times x roofs per call stays small (a month of minutes x 200 roofs: 70 MB)


def annual_pv_kwh(community: Community, *, year: int, seed: int) -> dict[str, float]:
    """kWh AC per connection with PV over the local calendar ``year``."""
    roofs = [
        (connection.id, device.kwp or 0.0, device.ac_kw or device.kwp or 0.0)
        for _l, _m, connection in community.connections()
        for device in connection.devices
        if device.role is DeviceRole.PV
    ]
    if not roofs:
        return {}
    kwp = np.array([r[1] for r in roofs])
    ac = np.array([r[2] for r in roofs])
    tz = ZoneInfo(community.community.timezone)
    start = datetime(year, 1, 1, tzinfo=tz).astimezone(ZoneInfo("UTC"))
    end = datetime(year + 1, 1, 1, tzinfo=tz).astimezone(ZoneInfo("UTC"))
    energy = np.zeros(len(roofs))
    chunk_start = start
    while chunk_start < end:
        chunk_end = min(chunk_start + _CHUNK, end)
        times = pd.date_range(
            chunk_start + timedelta(seconds=_SAMPLE_S / 2), chunk_end, freq=f"{_SAMPLE_S}s", inclusive="left"
        )
        power = pv_power_kw(times, kwp, seed=seed, ac_kw=ac).reshape(len(times), -1)
        energy += power.sum(axis=0) * _SAMPLE_S / 3600.0
        chunk_start = chunk_end
    out: dict[str, float] = {}
    for (connection, _kwp, _ac), kwh in zip(roofs, energy, strict=True):
        out[connection] = out.get(connection, 0.0) + float(kwh)
    return out
