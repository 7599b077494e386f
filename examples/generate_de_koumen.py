#!/usr/bin/env python3
"""Generate the reference community files of De Koumen (Heerlen, NL): today, the 2026 scenario, and 2026 with
sharing in the estate.

    python examples/generate_de_koumen.py            # write examples/de-koumen.yaml, de-koumen-2026.yaml and
                                                     # de-koumen-2026-sharing.yaml
    python examples/generate_de_koumen.py --check    # exit 1 naming each file that differs from a fresh run
    python examples/generate_de_koumen.py --seed 7 --out-dir /tmp/other-estate

The published figures are fixed (about 100 companies, 6 DSO cable loops behind the Huskensweg substation, 2,700 kWp
of PV on 20 companies, 8,000 kWp planned on 40 more, no feed-in at the substation). Everything per company is
invented from the seed: names, EANs, connection sizes, contracts, yearly use and devices. The same seed gives the
same bytes on every run; the three files come from one draw, so the 2026 file is today's file plus the planned PV,
and the sharing file is the 2026 file with the estate as one group agreement whose members may feed in.

Standard library and PyYAML only, so it runs without the project installed.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml

HERE = Path(__file__).resolve().parent
TODAY_FILE = "de-koumen.yaml"
SCENARIO_FILE = "de-koumen-2026.yaml"
SHARING_FILE = "de-koumen-2026-sharing.yaml"
ESTATE_GROUP = "de-koumen"  # the group agreement of the estate in SHARING_FILE
DEFAULT_SEED = 2026
TZ = ZoneInfo("Europe/Amsterdam")
WIDTH = 150  # YAML lines: every device on one line, day-ahead profiles wrapped

# -- published figures ----------------------------------------------------------------------------------------------
PV_TODAY_KWP = 2700  # on 20 companies
PV_TODAY_COMPANIES = 20
PV_PLANNED_KWP = 8000  # on 40 more roofs
PV_PLANNED_COMPANIES = 40
LOOPS = 6

# -- estimates ------------------------------------------------------------------------------------------------------
# Connection sizes of the ~100 companies (98 plus the collective battery and the EV charging plaza).
SIZE_MIX = {111: 30, 173: 38, 630: 24, 1750: 6}  # kVA: 3x160 A, 3x250 A, 630 kVA, 1,750 kVA
SIZE_NAME = {111: "3x160 A", 173: "3x250 A", 630: "630 kVA", 1750: "1,750 kVA"}
ANNUAL_USE_MWH = {111: (40, 150), 173: (100, 350), 630: (600, 2000), 1750: (2000, 5000)}
# Contracted offtake (GTV): the company's estimated own peak (below) times a drawn headroom, at least half the
# connection, at most all of it. The estimate is a planning figure, deliberately on the safe side: the simulated loads
# (src/energyhub/synthetic/loads.py) reach their 99.9th-percentile quarter hour at yearly use / 3,500-5,900 h, not the 2,500-4,500
# h of FULL_LOAD_HOURS (measured over 2026, seed 0), so a contract is at least about 1.35 x the simulated normal peak.
# Where the capacity caps it, the yearly-use ranges keep that peak x 1.1 inside the connection (worst: a 630 kVA
# business using 2 GWh, about 560 kW). So a company's load alone stays inside its own contract; the special contracts
# are the ones that bind.
CONTRACT_SHARE = (0.50, 1.00)  # of the connection capacity
CONTRACT_HEADROOM = (1.1, 1.5)  # times the estimated own peak
FULL_LOAD_HOURS = {  # yearly use / peak ("benuttingsduur") per load profile, for the peak estimate
    "business": 2500,
    "business_evening": 3200,
    "retail": 3000,
    "logistics_24h": 4500,
    "night_weekend": 4000,
    "ev_plaza": 1800,
    "none": math.inf,
}
# The special contracts bind on purpose: the day-ahead company's estimated peak is this share of its firm + non-firm
# offtake, the CBC window's cap this share of the company's estimated peak; both restrictions last up to 3 hours.
DAY_AHEAD_PEAK_SHARE = 0.75
CBC_PEAK_SHARE = 0.65
WINDOW_HOURS = 3
DIVERSITY = 0.8  # simultaneity of the companies' own peaks
HUB_MARGIN = 1.05  # the substation's offtake limit sits about 5 % above the estimated simultaneous peak
LOOP_MARGIN = 1.25
LOOP_CABLES_KVA = (6000, 7000, 8000, 10000)  # 10 kV cable loops, by conductor
PV_KWP_RANGE = {111: (45, 100), 173: (60, 170), 630: (120, 450), 1750: (250, 600)}  # roof sizes
PV_KWP_MAX = {111: 100, 173: 180, 630: 600, 1750: 600}  # at most 4 inverters of 150 kWp
INVERTER_TYPICAL_KWP = 100
DC_AC_RATIO = 1.15
SUBMETERS = {111: (1, 2), 173: (1, 3), 630: (2, 3), 1750: (3, 3)}  # sub-metered big loads

# Sectors: (name word, load profile, connection sizes it comes in, sub-metered loads).
SECTORS: list[tuple[str, str, tuple[int, ...], tuple[str, ...]]] = [
    (
        "Logistiek",
        "logistics_24h",
        (173, 630, 1750),
        ("load-cooling", "load-forklift-charging", "load-docks"),
    ),
    ("Metaalbewerking", "business", (173, 630, 1750), ("load-cnc", "load-welding", "load-compressed-air")),
    ("Bakkerij", "logistics_24h", (111, 173, 630), ("load-ovens", "load-cooling", "load-dough-mixers")),
    ("Groothandel", "business", (111, 173, 630), ("load-cooling", "load-warehouse", "load-hvac")),
    ("Drukkerij", "business_evening", (173, 630), ("load-presses", "load-dryers", "load-hvac")),
    ("Autobedrijf", "retail", (111, 173), ("load-workshop", "load-car-wash", "load-showroom")),
    ("Installatietechniek", "business", (111, 173), ("load-workshop", "load-hvac")),
    ("Koeltechniek", "logistics_24h", (173, 630, 1750), ("load-cold-store", "load-compressors", "load-hvac")),
    ("Bouwbedrijf", "business", (111, 173), ("load-workshop", "load-site-huts")),
    (
        "Kunststofverwerking",
        "business_evening",
        (630, 1750),
        ("load-extruders", "load-chillers", "load-dryers"),
    ),
    ("Houtbewerking", "business", (111, 173, 630), ("load-saws", "load-dust-extraction", "load-kilns")),
    ("Elektrotechniek", "business", (111, 173), ("load-workshop", "load-test-bench")),
    ("Transport", "logistics_24h", (173, 630), ("load-truck-charging", "load-workshop", "load-cooling")),
    ("Verpakkingen", "business_evening", (173, 630, 1750), ("load-packaging-lines", "load-compressed-air")),
    ("Bandenservice", "retail", (111, 173), ("load-workshop", "load-compressed-air")),
    ("Tegelhandel", "retail", (111, 173), ("load-warehouse", "load-showroom")),
    ("Voedingsmiddelen", "logistics_24h", (630, 1750), ("load-process-lines", "load-cooling", "load-steam")),
    ("Schoonmaakdiensten", "business", (111,), ("load-laundry", "load-hvac")),
    ("Sportcentrum", "business_evening", (111, 173), ("load-hvac", "load-lighting", "load-pool")),
    ("Recycling", "business", (173, 630), ("load-shredders", "load-conveyors", "load-balers")),
]
GENERIC_LOADS = ("load-hvac", "load-lighting", "load-compressed-air", "load-heat-pump")

# Made-up family and place names, Limburg-sounding; combined with a sector word they name no real company.
NAME_HEADS = (
    "Brou", "Geul", "Hees", "Kerk", "Mee", "Vaal", "Wijl", "Rans", "Schin", "Bek", "Vroe", "Lem", "Kaal", "Voer",
    "Mer", "Ors", "Pey", "Sim", "Hoens", "Ast", "Bor", "Dries", "Gulp", "Jab", "Kop", "Lin", "Mul", "Neer", "Pal",
    "Roo", "Sef", "Tuls", "Vel", "Wit", "Zwan", "Kem", "Eys", "Oel", "Graa", "Heu",
)  # fmt: skip
NAME_TAILS = (
    "raedt", "straeten", "dael", "gaard", "rath", "horst", "kens", "beek", "enaar", "bosch", "meulen", "hoven",
    "broek", "velt", "ier", "acker",
)  # fmt: skip

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri"]


class Clock(str):
    """A time of day, always quoted (unquoted, YAML 1.1 reads 22:00 as the number 1320)."""


# -- the estate, drawn once ----------------------------------------------------------------------------------------


@dataclass
class Company:
    key: int  # draw order, stable for a seed
    name: str
    sector: str
    size_kva: int
    load_profile: str
    annual_use_kwh: int | None
    import_kw: int
    export_kw: int = 0
    loads: list[str] = field(default_factory=list)
    pv_today: list[int] = field(default_factory=list)  # kWp per inverter
    pv_planned: list[int] = field(default_factory=list)
    battery: tuple[int, int] | None = None  # kW, kWh
    chargers: list[tuple[str, int]] = field(default_factory=list)  # (vehicle, kW)
    limits_extra: dict[str, Any] = field(default_factory=dict)
    extra_kw: int = 0  # offtake on top of the firm contract (time blocks, non-firm)
    role: str = ""  # special contract or function, for comments
    comment: str = ""
    id: str = ""  # c-001 ..., set by the layout
    ean: str = ""

    @property
    def peak_kw(self) -> float:
        """Own yearly peak, estimated from yearly use and the profile's full-load hours."""
        if not self.annual_use_kwh:
            return 0.0
        return min(
            self.annual_use_kwh / FULL_LOAD_HOURS[self.load_profile], float(self.import_kw + self.extra_kw)
        )


@dataclass
class Estate:
    companies: list[Company]
    loops: list[dict[str, Any]]  # id, name, capacity_kva, limits, micro (list of Company), connections
    groups: list[dict[str, Any]]
    hub_import_kw: int
    hub_capacity_kva: int
    peak_kw: int


def ean_check_digit(first_17: str) -> int:
    """GS1 mod-10: weights 3,1,3,... from the right (the same rule as energyhub.domain.ean)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(first_17)))
    return (10 - total % 10) % 10


def _round_to(value: float, step: int) -> int:
    return int(round(value / step) * step)


def _ceil_to(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def fit_total(
    rng: random.Random, wishes: list[float], lows: list[int], highs: list[int], total: int, step: int = 5
) -> list[int]:
    """Integers near ``wishes`` (scaled), multiples of ``step`` within [low, high], summing exactly to ``total``."""
    if not sum(lows) <= total <= sum(highs):
        raise ValueError(f"cannot fit {total} between {sum(lows)} and {sum(highs)}")
    scale = total / sum(wishes)
    out = [
        min(max(_round_to(w * scale, step), lo), hi) for w, lo, hi in zip(wishes, lows, highs, strict=True)
    ]
    order = list(range(len(out)))
    rng.shuffle(order)
    while (gap := total - sum(out)) != 0:
        moved = False
        for i in order:
            if gap > 0 and out[i] + step <= highs[i]:
                out[i] += step
                gap -= step
                moved = True
            elif gap < 0 and out[i] - step >= lows[i]:
                out[i] -= step
                gap += step
                moved = True
            if gap == 0:
                break
        if not moved:
            raise ValueError("no room left to fit the total")
    return out


def split_inverters(kwp: int) -> list[int]:
    """A roof's kWp over 1-4 inverters of about 100 kWp (at most 150), in whole kWp."""
    count = min(4, max(1, math.ceil(kwp / INVERTER_TYPICAL_KWP)))
    base = kwp // count
    return [base + (1 if i < kwp - base * count else 0) for i in range(count)]


def _company_names(rng: random.Random, sectors: list[str]) -> list[str]:
    seen: set[str] = set()
    families: set[str] = set()
    names = []
    for sector in sectors:
        while True:
            family = rng.choice(NAME_HEADS) + rng.choice(NAME_TAILS)
            name = f"{sector} {family} B.V." if rng.random() < 0.7 else f"{family} {sector} B.V."
            if family not in families and name not in seen:
                break
        families.add(family)
        seen.add(name)
        names.append(name)
    return names


def draw_estate(seed: int) -> Estate:
    rng = random.Random(seed)

    # Companies: sizes fixed by the mix, a sector that comes in that size, yearly use and contract to fit.
    sizes = [size for size, count in SIZE_MIX.items() for _ in range(count)]
    rng.shuffle(sizes)
    sectors = [rng.choice([s for s in SECTORS if size in s[2]]) for size in sizes]
    names = _company_names(rng, [s[0] for s in sectors])
    companies: list[Company] = []
    for key, (size, sector, name) in enumerate(zip(sizes, sectors, names, strict=True)):
        low, high = ANNUAL_USE_MWH[size]
        annual = _round_to(rng.uniform(low, high) * 1000, 1000)
        # The contract covers the company's own peak with headroom (see CONTRACT_SHARE), within the connection.
        own_peak = annual / FULL_LOAD_HOURS[sector[1]]
        low_share, high_share = CONTRACT_SHARE
        wanted = _ceil_to(own_peak * rng.uniform(*CONTRACT_HEADROOM), 5)
        import_kw = min(max(wanted, _round_to(size * low_share, 5)), int(size * high_share))
        lo_sub, hi_sub = SUBMETERS[size]
        n_loads = rng.randint(lo_sub, hi_sub)
        pool = list(dict.fromkeys(sector[3] + GENERIC_LOADS))
        loads = pool[:n_loads] if rng.random() < 0.5 else rng.sample(pool, n_loads)
        companies.append(
            Company(
                key, name, sector[0], size, sector[1], annual, import_kw, loads=sorted(loads, key=pool.index)
            )
        )

    # PV today: 20 roofs, bigger buildings more likely, summing exactly to 2,700 kWp.
    def pick(pool: list[Company], count: int, weight: dict[int, float]) -> list[Company]:
        chosen: list[Company] = []
        pool = list(pool)
        for _ in range(count):
            c = rng.choices(pool, weights=[weight[p.size_kva] for p in pool])[0]
            pool.remove(c)
            chosen.append(c)
        return sorted(chosen, key=lambda c: c.key)

    pv_today = pick(companies, PV_TODAY_COMPANIES, {111: 1.0, 173: 1.5, 630: 2.0, 1750: 2.5})
    wishes = [rng.uniform(*PV_KWP_RANGE[c.size_kva]) for c in pv_today]
    kwps = fit_total(
        rng, wishes, [40] * len(pv_today), [PV_KWP_MAX[c.size_kva] for c in pv_today], PV_TODAY_KWP
    )
    for c, kwp in zip(pv_today, kwps, strict=True):
        c.pv_today = split_inverters(kwp)
    # A few PV companies still hold a small feed-in right from before the congestion.
    for c in rng.sample(pv_today, 6):
        c.export_kw = min(_round_to(sum(c.pv_today) * rng.uniform(0.15, 0.3), 5), c.size_kva)
        c.comment = "holds a small feed-in right granted before the substation closed for feed-in"

    # PV planned for 2026: 40 more roofs, summing exactly to 8,000 kWp.
    without_pv = [c for c in companies if not c.pv_today]
    planned = pick(without_pv, PV_PLANNED_COMPANIES, {111: 0.5, 173: 1.5, 630: 4.0, 1750: 6.0})
    wishes = [rng.uniform(*PV_KWP_RANGE[c.size_kva]) for c in planned]
    kwps = fit_total(
        rng, wishes, [50] * len(planned), [PV_KWP_MAX[c.size_kva] for c in planned], PV_PLANNED_KWP
    )
    for c, kwp in zip(planned, kwps, strict=True):
        c.pv_planned = split_inverters(kwp)

    # Special contracts, each on its own company.
    free = [c for c in companies if not c.comment]
    blocks = rng.choice([c for c in free if c.size_kva == 630])
    blocks.role = "time_blocks"
    blocks.import_kw = 100
    blocks.extra_kw = 400
    blocks.load_profile = "night_weekend"
    blocks.annual_use_kwh = _round_to(rng.uniform(900, 1400) * 1000, 1000)
    night = {"import_kw": 400, "export_kw": 0}
    blocks.limits_extra["time_blocks"] = [
        Flow(days=WEEKDAYS, start=Clock("22:00"), end=Clock("06:00"), **night),
        Flow(days=["sat"], start=Clock("06:00"), end=Clock("24:00"), **night),
        Flow(days=["sun"], start=Clock("00:00"), end=Clock("24:00"), **night),
        Flow(days=["mon"], start=Clock("00:00"), end=Clock("06:00"), **night),
    ]
    # Its load runs at a quarter of the night level by day (the night_weekend shape), about 55-85 kW for this yearly
    # use: inside the firm 100 kW, as the night peak (about 210-330 kW) is inside the 500 kW of a block.
    blocks.comment = (
        "blokstroom: firm 100 kW, plus 400 kW in the working-day nights (22:00-06:00) and from Friday 22:00 "
        "to Monday 06:00"
    )

    free = [c for c in free if not c.role and not c.comment]
    nonfirm = rng.choice([c for c in free if c.size_kva == 630])
    nonfirm.role = "day_ahead"
    nonfirm.import_kw = 200
    nonfirm.extra_kw = 300
    nonfirm.limits_extra["day_ahead"] = {
        "import_kw": 300,
        "export_kw": 0,
        "unannounced": "full",
        "profiles": [
            {"date": date(2026, 1, 15), "import_kw": evening_restriction(date(2026, 1, 15), 300)},
            {"date": date(2026, 10, 25), "import_kw": evening_restriction(date(2026, 10, 25), 300)},
        ],
    }
    # The restriction is meant to bind: the yearly use is set so that the estimated peak needs the non-firm part
    # (DAY_AHEAD_PEAK_SHARE of firm + non-firm), so a working-day evening runs above the firm 200 kW. Its own battery,
    # sized on that estimate, can carry a restricted evening if it is charged in time.
    nonfirm.annual_use_kwh = _round_to(
        DAY_AHEAD_PEAK_SHARE * 500 * FULL_LOAD_HOURS[nonfirm.load_profile], 1000
    )
    nonfirm.battery = battery_to_keep(nonfirm.peak_kw, nonfirm.import_kw, WINDOW_HOURS)
    nonfirm.comment = (
        "non-firm: firm 200 kW plus up to 300 kW that the DSO may restrict day-ahead; two announced days, "
        "restricted in the evening peak (2026-10-25 has 100 quarter hours: daylight saving ends); its evening "
        f"load needs the non-firm part, and its own battery ({nonfirm.battery[0]} kW / {nonfirm.battery[1]} kWh) "
        "can carry a restricted evening"
    )

    free = [c for c in free if c is not nonfirm]
    cbc = rng.choice([c for c in free if c.size_kva == 1750])
    cbc.role = "capacity_limitation"
    # The window is meant to bind: its cap is below the company's estimated peak (CBC_PEAK_SHARE of it), so winter
    # evenings run above it; its own battery, sized on that estimate, can carry the window if it is charged in time.
    cbc_cap = _round_to(cbc.peak_kw * CBC_PEAK_SHARE, 50)
    cbc.battery = battery_to_keep(cbc.peak_kw, cbc_cap, WINDOW_HOURS)
    cbc.limits_extra["capacity_limitation"] = {
        "windows": [
            Flow(
                months=[11, 12, 1, 2],
                days=WEEKDAYS,
                start=Clock("17:00"),
                end=Clock("20:00"),
                import_kw=cbc_cap,
            )
        ]
    }
    cbc.comment = (
        f"CBC: paid to stay below {cbc_cap} kW on winter working days 17:00-20:00, the substation's peak; its "
        f"winter evenings run above that, and its own battery ({cbc.battery[0]} kW / {cbc.battery[1]} kWh) can "
        "carry the window"
    )

    # A few companies run their own battery.
    free = [c for c in free if c is not cbc and c.size_kva >= 173]
    for c in sorted(rng.sample(free, 3), key=lambda c: c.key):
        kw = rng.choice((50, 100, 150, 250)) if c.size_kva >= 630 else rng.choice((30, 50))
        c.battery = (kw, kw * 2)

    # The community's own connections.
    battery = Company(
        len(companies),
        "Energiecoöperatie De Koumen — collectieve batterij",
        "Energiecoöperatie",
        1000,
        "none",
        None,
        1000,
        1000,
        battery=(1000, 2000),
        role="battery",
        comment=(
            "the collective battery (1 MW / 2 MWh): charges from the estate's PV surplus, discharges to "
            "neighbours; its feed-in right serves the loops, the substation still takes no feed-in"
        ),
    )
    plaza = Company(
        len(companies) + 1,
        "Laadplein De Koumen",
        "Laadplein",
        1750,
        "ev_plaza",
        _round_to(rng.uniform(900, 1300) * 1000, 1000),
        1000,
        0,
        chargers=[("truck", 350)] * 6 + [("car", 22)] * 12,
        role="plaza",
        comment="EV charging plaza: 6 x 350 kW truck and 12 x 22 kW car chargers, 2.36 MW on a 1,000 kW contract",
    )
    everyone = [*companies, battery, plaza]

    return _lay_out(rng, everyone, battery, plaza)


def battery_to_keep(peak_kw: float, cap_kw: float, hours: int) -> tuple[int, int]:
    """A battery (kW, kWh) that can hold a company's load at ``cap_kw`` for ``hours``: power for three quarters of
    the estimated excess ``peak_kw - cap_kw``, since the estimate runs about 30 % above the simulated peak."""
    kw = _ceil_to((peak_kw - cap_kw) * 0.75, 50)
    return kw, kw * hours


def evening_restriction(day: date, full_kw: int) -> list[int]:
    """An announced non-firm profile for one local day: full, except in the evening peak (one value per ISP)."""
    start = datetime(day.year, day.month, day.day, tzinfo=TZ).astimezone(UTC)
    following = day + timedelta(days=1)
    end = datetime(following.year, following.month, following.day, tzinfo=TZ).astimezone(UTC)
    values = []
    t = start
    while t < end:
        hour = t.astimezone(TZ).hour
        if 17 <= hour < 20:
            values.append(0)
        elif hour in (16, 20):
            values.append(full_kw // 2)
        else:
            values.append(full_kw)
        t += timedelta(minutes=15)
    return values


def _lay_out(rng: random.Random, everyone: list[Company], battery: Company, plaza: Company) -> Estate:
    """Deal the companies over six loops, number them in file order, add the micro group and group agreements."""
    regular = [c for c in everyone if c not in (battery, plaza)]
    rng.shuffle(regular)
    regular.sort(key=lambda c: -c.size_kva)  # deal the big ones first, so every loop gets its share of them
    loops: list[list[Company]] = [[] for _ in range(LOOPS)]
    for i, c in enumerate(regular):
        lap, seat = divmod(i, LOOPS)
        loops[seat if lap % 2 == 0 else LOOPS - 1 - seat].append(c)
    for members in loops:
        rng.shuffle(members)  # along the cable, big and small mixed
    loops[2].insert(rng.randrange(len(loops[2]) + 1), battery)  # loop-3: the most central loop
    loops[0].append(plaza)  # loop-1: along the access road

    # Micro group on loop-4: three small neighbours behind one private cable, one of them with PV today.
    loop4 = loops[3]
    small = [c for c in loop4 if c.size_kva <= 173 and not c.role]
    with_pv = [c for c in small if c.pv_today] or small
    first = rng.choice(with_pv)
    others = rng.sample([c for c in small if c is not first], 2)
    micro = sorted([first, *others], key=loop4.index)
    for c in micro:
        loop4.remove(c)

    # Number every connection in the order it appears in the file; EANs in the same order.
    ordered: list[Company] = []
    for i, members in enumerate(loops):
        if i == 3:
            ordered.extend(micro)
        ordered.extend(members)
    eans: set[str] = set()
    for n, c in enumerate(ordered, start=1):
        c.id = f"c-{n:03d}"
        while True:
            body = "8716" + "".join(rng.choice("0123456789") for _ in range(13))
            ean = body + str(ean_check_digit(body))
            if ean not in eans:
                break
        eans.add(ean)
        c.ean = ean

    # Group agreements (groeps-ATO): neighbours on one loop sharing a cap below the sum of their contracts.
    groups = []
    for g, (loop_index, size) in enumerate(((1, 3), (4, 2)), start=1):
        members = loops[loop_index]
        candidates = [
            i
            for i in range(len(members) - size + 1)
            if all(not m.role and not m.comment for m in members[i : i + size])
        ]
        start = rng.choice(candidates)
        group = members[start : start + size]
        total = sum(m.import_kw for m in group)
        cap = _round_to(total * rng.uniform(0.65, 0.8), 10)
        for m in group:
            m.comment = f"in group agreement group-{g} with {', '.join(o.id for o in group if o is not m)}"
        groups.append(
            {
                "id": f"group-{g}",
                "name": f"Groeps-ATO {g}: {', '.join(m.id for m in group)}",
                "connections": [m.id for m in group],
                "limits": {"import_kw": cap, "export_kw": sum(m.export_kw for m in group)},
                "_sum": total,
            }
        )

    # Loop limits from each loop's estimated peak; the export caps are modest: between loops only.
    loop_docs = []
    for i, members in enumerate(loops):
        everyone_on_loop = members + (micro if i == 3 else [])
        peak = DIVERSITY * sum(c.peak_kw for c in everyone_on_loop)
        import_kw = _ceil_to(peak * LOOP_MARGIN, 250)
        cables = [k for k in LOOP_CABLES_KVA if k * 0.8 >= import_kw] or [LOOP_CABLES_KVA[-1]]
        capacity = rng.choice(cables[:2])
        export_kw = rng.choice((500, 750, 1000))
        loop_docs.append(
            {
                "id": f"loop-{i + 1}",
                "name": f"MS-lus {i + 1}",
                "capacity_kva": capacity,
                "limits": {"import_kw": import_kw, "export_kw": export_kw},
                "micro": micro if i == 3 else [],
                "connections": members,
                "_peak": round(peak),
            }
        )

    peak_kw = round(DIVERSITY * sum(c.peak_kw for c in ordered))
    hub_import = _ceil_to(peak_kw * HUB_MARGIN, 100)
    hub_capacity = _ceil_to(hub_import / 0.8, 5000)
    return Estate(ordered, loop_docs, groups, hub_import, hub_capacity, peak_kw)


# -- rendering -----------------------------------------------------------------------------------------------------


class Flow(dict[str, Any]):
    """A mapping written on one line."""


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


_Dumper.add_representer(
    Flow, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)
_Dumper.add_representer(
    Clock, lambda dumper, data: dumper.represent_scalar("tag:yaml.org,2002:str", str(data), style='"')
)


def _devices(c: Company, port: int, *, planned: bool) -> list[Flow]:
    devices: list[Flow] = []

    def add(device_id: str, role: str, profile: str, **ratings: Any) -> None:
        address = Flow(host="127.0.0.1", port=port, unit_id=1 + sum("modbus" in d for d in devices))
        devices.append(Flow(id=device_id, role=role, profile=profile, **ratings, modbus=address))

    add("meter", "meter", "eastron_sdm630")
    for load in c.loads:
        add(load, "load", "eastron_sdm630")
    for i, kwp in enumerate(c.pv_today, start=1):
        add(f"pv-{i}", "pv", "sunspec_inverter", kwp=kwp, ac_kw=round(kwp / DC_AC_RATIO))
    if c.battery:
        add("battery", "battery", "sunspec_battery", power_kw=c.battery[0], capacity_kwh=c.battery[1])
    counts = {"truck": 0, "car": 0}
    for vehicle, kw in c.chargers:
        counts[vehicle] += 1
        n = counts[vehicle]
        if c.role == "plaza":
            # The plaza's chargers speak OCPP to its gateway: each DC truck charger a 2.0.1 station of its own,
            # the AC car chargers 1.6J stations of two sockets each.
            point = (
                Flow(charge_point_id=f"PLAZA-DC-{n}", connector_id=1, version="2.0.1")
                if vehicle == "truck"
                else Flow(
                    charge_point_id=f"PLAZA-AC-{(n + 1) // 2}", connector_id=(n - 1) % 2 + 1, version="1.6"
                )
            )
            devices.append(
                Flow(
                    id=f"ev-{vehicle}-{n}",
                    role="ev",
                    profile="ocpp",
                    power_kw=kw,
                    vehicle=vehicle,
                    ocpp=point,
                )
            )
        else:
            add(f"ev-{vehicle}-{n}", "ev", "ev_charger", power_kw=kw, vehicle=vehicle)
    number = port - 20000
    if number % 4 == 2 and not c.role:
        # A quarter of the companies have their gas and water meters read too ("meten is weten"): wired M-Bus
        # behind a TCP level converter of their own.
        line = Flow(host="127.0.0.1", port=21000 + number)
        devices.append(Flow(id="gas", role="gas", profile="elster_bk_g4_mbus", mbus=Flow(**line, address=1)))
        devices.append(
            Flow(id="water", role="water", profile="kamstrup_flowiq_2101", mbus=Flow(**line, address=2))
        )
    if planned:  # last: the planned estate is today's devices plus these
        for i, kwp in enumerate(c.pv_planned, start=len(c.pv_today) + 1):
            add(f"pv-{i}", "pv", "sunspec_inverter", kwp=kwp, ac_kw=round(kwp / DC_AC_RATIO))
    return devices


def _connection(c: Company, *, planned: bool, sharing: set[str]) -> dict[str, Any]:
    """One connection's document; a member of the estate's agreement (``sharing``) may feed in up to its size."""
    number = int(c.id.removeprefix("c-"))
    export_kw = c.size_kva if c.id in sharing else c.export_kw
    limits: dict[str, Any] = {"import_kw": c.import_kw, "export_kw": export_kw, **c.limits_extra}
    doc: dict[str, Any] = {
        "id": c.id,
        "ean": c.ean,
        "company": c.name,
        "capacity_kva": c.size_kva,
        "limits": limits,
    }
    if c.annual_use_kwh is not None:
        doc["annual_use_kwh"] = c.annual_use_kwh
    doc["load_profile"] = c.load_profile
    doc["gateways"] = [
        {"id": f"gw-{number:03d}", "ocpp": Flow(host="127.0.0.1", port=19000 + number)}
        if c.role == "plaza"
        else {"id": f"gw-{number:03d}"}
    ]
    doc["devices"] = _devices(c, 20000 + number, planned=planned)
    return doc


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(
        doc, Dumper=_Dumper, sort_keys=False, allow_unicode=True, default_flow_style=None, width=WIDTH
    )


def _comment(text: str, indent: int = 0) -> str:
    pad = " " * indent + "# "
    return (
        "\n".join(
            textwrap.wrap(
                text, 118 - len(pad), initial_indent=pad, subsequent_indent=pad, break_on_hyphens=False
            )
        )
        + "\n"
    )


def _annotate(text: str, notes: dict[str, str]) -> str:
    """Put a comment above the ``- id: <node>`` line of each noted node."""
    lines = text.splitlines(keepends=True)
    out = []
    for line in lines:
        stripped = line.lstrip(" ")
        if stripped.startswith("- id: "):
            node = stripped.removeprefix("- id: ").strip()
            if node in notes:
                out.append(_comment(notes[node], len(line) - len(stripped)))
        out.append(line)
    return "".join(out)


def sharing_members(estate: Estate) -> list[str]:
    """The connections in the estate's group agreement: all but those in a group agreement of their own (a
    connection can be in one agreement only)."""
    grouped = {m for g in estate.groups for m in g["connections"]}
    return [c.id for c in estate.companies if c.id not in grouped]


def _sharing_header(estate: Estate, members: list[str]) -> str:
    grouped = ", ".join(f"{g['id']} ({', '.join(g['connections'])})" for g in estate.groups)
    return "#\n" + _comment(
        f"What differs from {SCENARIO_FILE}: the estate is one group agreement ({ESTATE_GROUP}, at the end) whose "
        f"members may exchange energy within it. Each of its {len(members)} connections may feed in up to its "
        "capacity_kva (export_kw raised from 0 or a small old right), so a company's surplus can reach its "
        "neighbours, the collective battery and the charging plaza instead of being curtailed at its own meter. "
        f"The agreement states the group's contract: offtake as the substation's ({estate.hub_import_kw:,} kW), "
        "feed-in 0. Unchanged: the substation still takes no feed-in (hub export_kw 0), the loops keep their "
        "offtake and export caps, and the time blocks, day-ahead right, CBC window, micro group and the "
        f"neighbours' group agreements stay as they are. {grouped} keep their own agreements and feed-in "
        "rights, since a connection is in one group agreement at most. Why: in "
        f"{SCENARIO_FILE} every connection but a few has a feed-in contract of 0, so each company's surplus is "
        "curtailed where it arises and no policy can do better than another; here sharing decides the outcome."
    )


def render(estate: Estate, *, planned: bool, seed: int, sharing: bool = False) -> str:
    """One community file: today, the 2026 scenario (``planned``), or 2026 with sharing in the estate."""
    in_estate = sharing_members(estate) if sharing else []
    shared = set(in_estate)
    pv_kwp = sum(sum(c.pv_today) + (sum(c.pv_planned) if planned else 0) for c in estate.companies)
    pv_companies = sum(1 for c in estate.companies if c.pv_today or (planned and c.pv_planned))
    scenario = (
        f"The 2026 scenario: today's estate plus the planned {PV_PLANNED_KWP:,} kWp of PV on "
        f"{PV_PLANNED_COMPANIES} more roofs, so {pv_companies} companies with {pv_kwp:,} kWp. Same companies, "
        f"EANs, ids and contracts as {TODAY_FILE}; the planned inverters come after each company's other devices."
        if planned
        else f"De Koumen today: {pv_companies} companies with {pv_kwp:,} kWp of PV. See {SCENARIO_FILE} for 2026."
    )
    if sharing:
        scenario = (
            f"The 2026 scenario with sharing in the estate: the companies, devices and PV of {SCENARIO_FILE} "
            f"({pv_companies} companies with {pv_kwp:,} kWp), the estate one group agreement."
        )
    header = (
        f"# GENERATED by examples/generate_de_koumen.py (seed {seed}): do not edit by hand; change the script and\n"
        "# regenerate with `python examples/generate_de_koumen.py` (`--check` tells whether this file is current).\n"
        "#\n"
        "# Bedrijventerrein De Koumen, Heerlen (NL): an industrial estate behind the Huskensweg substation (DSO\n"
        "# medium-voltage cable loops), the reference case of energyhub.\n" + _comment(scenario) + "#\n"
        "# Published figures (project descriptions of the De Koumen energy hub), used as given:\n"
        "#   - about 100 companies on the estate, behind one substation (Huskensweg);\n"
        f"#   - {PV_TODAY_KWP:,} kWp of rooftop PV on {PV_TODAY_COMPANIES} companies, about 2.4 GWh a year;\n"
        f"#   - {PV_PLANNED_KWP:,} kWp more PV planned;\n"
        "#   - the substation accepts no feed-in at all (hub export limit 0) and has a waiting list for offtake.\n"
        "# Estimates (invented from the seed, plausible but not measured): every company (names are fictitious),\n"
        "# EAN, connection size, contract, yearly use, load profile and device; the six cable loops, their\n"
        "# capacities and limits and who sits on which; the substation's offtake limit and capacity; the micro\n"
        "# group, the group agreements and the special contracts (time blocks, day-ahead, CBC); the collective\n"
        "# battery and the charging plaza; how the PV is split over inverters (DC/AC ratio 1.15).\n"
        "# Modbus addresses point at the simulators: 127.0.0.1, port 20000 + gateway number, unit ids 1..n.\n"
    ) + (_sharing_header(estate, in_estate) if sharing else "")
    head = {
        "version": 1,
        "community": {
            "id": "de-koumen",
            "name": "Bedrijventerrein De Koumen"
            + (" (scenario 2026, sharing)" if sharing else " (scenario 2026)" if planned else ""),
            "timezone": "Europe/Amsterdam",
        },
    }
    hub = {
        "hub": {
            "id": "huskensweg",
            "name": "Onderstation Huskensweg",
            "substation": "Huskensweg, Heerlen",
            "capacity_kva": estate.hub_capacity_kva,
            "limits": {"import_kw": estate.hub_import_kw, "export_kw": 0},
        }
    }
    hub_note = _comment(
        f"The substation boundary. export_kw 0: no feed-in past the substation at all (published). import_kw "
        f"{estate.hub_import_kw:,}: estimate, about {round((HUB_MARGIN - 1) * 100)} % above the estate's expected "
        f"simultaneous peak of {estate.peak_kw:,} kW (each company's yearly use over its profile's full-load hours, "
        f"times {DIVERSITY} for simultaneity); offtake has a waiting list, so there is no room beyond it. "
        f"capacity_kva: estimate of the transformer capacity that serves the estate."
        + (
            f" The estate's group agreement {ESTATE_GROUP} records the same offtake for its members."
            if sharing
            else ""
        )
    )
    loops = []
    notes: dict[str, str] = {}
    for loop in estate.loops:
        doc: dict[str, Any] = {
            "id": loop["id"],
            "name": loop["name"],
            "capacity_kva": loop["capacity_kva"],
            "limits": loop["limits"],
        }
        notes[loop["id"]] = (
            f"{loop['name']}: {loop['capacity_kva']:,} kVA cable; offtake cap {loop['limits']['import_kw']:,} kW "
            f"(estimated loop peak {loop['_peak']:,} kW x {LOOP_MARGIN}); export cap "
            f"{loop['limits']['export_kw']:,} kW: surplus may only reach the other loops over the substation's "
            "medium-voltage busbar"
        )
        if loop["micro"]:
            members = loop["micro"]
            cap = _round_to(sum(c.size_kva for c in members) * 0.8, 10)
            doc["micro_groups"] = [
                {
                    "id": "micro-1",
                    "name": "Gedeelde privékabel " + ", ".join(c.id for c in members),
                    "capacity_kva": cap,
                    "limits": {"import_kw": round(cap * 0.9), "export_kw": round(cap * 0.9)},
                    "connections": [_connection(c, planned=planned, sharing=shared) for c in members],
                }
            ]
            notes["micro-1"] = (
                f"micro group: three neighbours behind one private cable ({cap} kVA), less than their "
                "connections together; each keeps its own EAN"
            )
        doc["connections"] = [_connection(c, planned=planned, sharing=shared) for c in loop["connections"]]
        loops.append(doc)
    for c in estate.companies:
        size = SIZE_NAME.get(c.size_kva, f"{c.size_kva:,} kVA")
        if c.comment:
            notes[c.id] = f"{c.id} ({size}): {c.comment}"
            if c.id in shared and 0 < c.export_kw < c.size_kva:
                notes[c.id] += f" ({c.export_kw} kW; here, as every member of {ESTATE_GROUP}, up to its size)"
    groups = [{k: v for k, v in g.items() if not k.startswith("_")} for g in estate.groups]
    group_note = "".join(
        _comment(
            f"{g['id']}: {', '.join(g['connections'])} share {g['limits']['import_kw']} kW of offtake, "
            f"below the {g['_sum']} kW of their own contracts"
        )
        for g in estate.groups
    )
    if sharing:
        groups.append(
            {
                "id": ESTATE_GROUP,
                "name": "Groepscontract Bedrijventerrein De Koumen",
                "connections": in_estate,
                "limits": {"import_kw": estate.hub_import_kw, "export_kw": 0},
            }
        )
        group_note += _comment(
            f"{ESTATE_GROUP}: the estate's own agreement over every connection that is not in one of the above; "
            f"its members may exchange energy within the estate, together they take at most "
            f"{estate.hub_import_kw:,} kW (the substation's offtake) and feed in nothing past the substation."
        )
    feed_in = (
        "feed-in up to the size for the members of the estate's agreement, else 0 but for a few old rights"
        if sharing
        else "feed-in 0 but for a few old rights"
    )
    return (
        header
        + "\n"
        + _dump(head)
        + "\n"
        + hub_note
        + _dump(hub)
        + "\n"
        + _comment(
            "DSO medium-voltage cable loops. Connections: capacity_kva is the physical size (3x160 A = 111 kVA, "
            "3x250 A = 173 kVA, 630 kVA, 1,750 kVA); limits.import_kw / export_kw the contracted transport "
            "capacity (GTV), offtake covering the company's estimated peak with headroom (at least half the "
            f"size, at most all of it), {feed_in}."
        )
        + _annotate(_dump({"loops": loops}), notes)
        + "\n"
        + _comment("Group agreements (groeps-ATO): one cap shared by neighbouring connections.")
        + group_note
        + _dump({"group_agreements": groups})
    )


def generate(seed: int) -> dict[str, str]:
    """The three files' text by file name, from one draw."""
    estate = draw_estate(seed)
    return {
        TODAY_FILE: render(estate, planned=False, seed=seed),
        SCENARIO_FILE: render(estate, planned=True, seed=seed),
        SHARING_FILE: render(estate, planned=True, seed=seed, sharing=True),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})"
    )
    parser.add_argument(
        "--out-dir", type=Path, default=HERE, help="folder of the three files (default: this script's folder)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 naming each file that differs from what the script generates",
    )
    args = parser.parse_args(argv)
    files = generate(args.seed)
    if args.check:
        stale = []
        for name, text in files.items():
            path = args.out_dir / name
            try:
                current = path.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                why = "missing" if current is None else "differs from the generator's output"
                stale.append(name)
                print(
                    f"{path}: {why}; regenerate with python examples/generate_de_koumen.py", file=sys.stderr
                )
        if stale:
            return 1
        print(f"{', '.join(files)}: up to date (seed {args.seed})")
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = args.out_dir / name
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
