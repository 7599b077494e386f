"""Small communities for tests, built as plain dicts so each test can break exactly one thing."""

from __future__ import annotations

from typing import Any

import yaml

from energyhub.domain.ean import ean_check_digit


def ean(n: int) -> str:
    """A valid EAN whose 17-digit body ends in ``n``."""
    body = f"87160000{n:09d}"
    return body + str(ean_check_digit(body))


def connection(n: int, *, gateway: bool = True, **extra: Any) -> dict[str, Any]:
    conn: dict[str, Any] = {
        "id": f"c-{n:03d}",
        "ean": ean(n),
        "company": f"Bedrijf {n} B.V.",
        "capacity_kva": 173,
        "limits": {"import_kw": 120, "export_kw": 0},
    }
    if gateway:
        conn["gateways"] = [{"id": f"gw-{n:03d}"}]
        conn["devices"] = [
            {
                "id": "meter",
                "role": "meter",
                "profile": "eastron_sdm630",
                "modbus": {"host": "127.0.0.1", "port": 20000 + n, "unit_id": 1},
            },
            {
                "id": "pv1",
                "role": "pv",
                "profile": "sunspec",
                "kwp": 50,
                "modbus": {"host": "127.0.0.1", "port": 20000 + n, "unit_id": 2},
            },
        ]
    conn.update(extra)
    return conn


def base() -> dict[str, Any]:
    return {
        "version": 1,
        "community": {"id": "test", "name": "Test estate", "timezone": "Europe/Amsterdam"},
        "hub": {
            "id": "hub",
            "name": "Substation",
            "capacity_kva": 10000,
            "limits": {"import_kw": 5000, "export_kw": 0},
        },
        "loops": [
            {
                "id": "loop-1",
                "capacity_kva": 6000,
                "limits": {"import_kw": 3000, "export_kw": 500},
                "connections": [connection(1), connection(2)],
            },
            {
                "id": "loop-2",
                "micro_groups": [
                    {
                        "id": "micro-1",
                        "limits": {"import_kw": 300},
                        "connections": [connection(3), connection(4)],
                    }
                ],
                "connections": [connection(5, gateway=False)],
            },
        ],
        "group_agreements": [
            {
                "id": "group-1",
                "connections": ["c-001", "c-002"],
                "limits": {"import_kw": 200, "export_kw": 0},
            },
        ],
    }


def dump(doc: dict[str, Any]) -> str:
    return yaml.safe_dump(doc, sort_keys=False)
