"""Plaza bookings: what a vehicle on a charger needs, said by its driver or fleet through the API.

An ISO 15118 vehicle tells its charger the energy it wants and when it leaves (OCPP 2.0.1); most cars and every
OCPP 1.6 charger say nothing. A booking (``PUT /api/plaza/bookings/{connection}/{device}``) says it instead: the
energy wanted and the departure of the vehicle on that charger now or next. The API keeps it as
``<folder>/<connection>/<device>.json``; control reads the folder, as it does the day-ahead profiles, and uses a
booking for the charger's session while the charger's own session says nothing and the departure is ahead.
Plain files, shared by a volume: a booking survives restarts of both services.
"""

from __future__ import annotations

import contextlib
import os
from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Booking", "BookingStore"]


class Booking(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    energy_kwh: float = Field(gt=0, le=2000, description="Energy the vehicle wants from this session, kWh.")
    departure: AwareDatetime = Field(description="When it leaves (with a time zone).")
    created: AwareDatetime | None = None


class BookingStore:
    """Bookings by (connection, device), one file each."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, connection: str, device: str) -> Path:
        return self.folder / connection / f"{device}.json"

    def save(self, connection: str, device: str, booking: Booking) -> Path:
        """Write atomically (a reader never sees half a file); a charger's new booking replaces its old one."""
        target = self._path(connection, device)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(".json.partial")
        partial.write_text(booking.model_dump_json(indent=2))
        os.replace(partial, target)
        return target

    def delete(self, connection: str, device: str) -> bool:
        try:
            self._path(connection, device).unlink()
        except FileNotFoundError:
            return False
        return True

    def stamp(self) -> tuple[int, int]:
        """Number of bookings and the newest change: a cheap test whether anything changed."""
        count, newest = 0, 0
        if self.folder.is_dir():
            for path in self.folder.glob("*/*.json"):
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, path.stat().st_mtime_ns)
                    count += 1
        return count, newest

    def load(self) -> tuple[dict[tuple[str, str], Booking], list[str]]:
        """Every booking, and what could not be read (file: why): a bad file is named, not fatal."""
        found: dict[tuple[str, str], Booking] = {}
        problems: list[str] = []
        if not self.folder.is_dir():
            return found, problems
        for path in sorted(self.folder.glob("*/*.json")):
            try:
                found[(path.parent.name, path.stem)] = Booking.model_validate_json(path.read_text())
            except (OSError, ValidationError) as exc:
                problems.append(
                    f"{path}: {str(exc).splitlines()[-1 if isinstance(exc, OSError) else 1].strip()}"
                )
        return found, problems

    def ahead(self, now: datetime) -> dict[tuple[str, str], Booking]:
        """The bookings whose departure is still ahead of ``now``."""
        return {key: b for key, b in self.load()[0].items() if b.departure > now}
