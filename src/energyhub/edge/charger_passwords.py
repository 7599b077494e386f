"""The chargers' OCPP passwords: one JSON file of salted hashes per plaza gateway, read at every connect.

OCPP's security profiles 1 and 2 authenticate a charge point by HTTP Basic auth: its identity and a password the
operator configures on the charger (``AuthorizationKey`` in 1.6, ``BasicAuthPassword`` in 2.0.1). The gateway
keeps only the hash, in the same PBKDF2-SHA512 format Mosquitto uses for gateway accounts, so one hashing routine
serves both. The file is read again when it changes: a charger added, or its password rotated, needs no restart.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from energyhub.runtime.passwords import hash_password, verify_password

__all__ = ["ChargerPasswords", "add_charger"]


class ChargerPasswords:
    """``{"chargers": {charge_point_id: hash}}`` at ``path``, reloaded when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._hashes: dict[str, str] = {}

    def _load(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}  # no file: no charger gets in
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._stamp:
            try:
                raw = json.loads(self.path.read_text())
                hashes = raw["chargers"]
                if not isinstance(hashes, dict) or not all(isinstance(v, str) for v in hashes.values()):
                    raise TypeError("chargers is not a map of identity to hash")
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{self.path}: not a charger password file: {exc}") from None
            self._hashes, self._stamp = hashes, stamp
        return self._hashes

    def check(self, charge_point_id: str, password: str) -> bool:
        hashed = self._load().get(charge_point_id)
        return hashed is not None and verify_password(password, hashed)


def add_charger(path: Path, charge_point_id: str, password: str | None = None) -> str:
    """Add (or replace) a charger's password in the file; the password, generated when not given, is returned
    once, for the charger's configuration."""
    password = password or secrets.token_urlsafe(24)
    if not 16 <= len(password) <= 40:  # OCPP 2.0.1 BasicAuthPassword: 16 to 40 characters
        raise ValueError("an OCPP Basic auth password has 16 to 40 characters")
    hashes: dict[str, str] = {}
    if path.exists():
        hashes = dict(json.loads(path.read_text()).get("chargers", {}))
    hashes[charge_point_id] = hash_password(password)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"chargers": hashes}, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o600)
    tmp.replace(path)
    return password
