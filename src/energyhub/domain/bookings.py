"""Plaza bookings: what a vehicle on a charger needs, said by its driver or fleet through the API.

An ISO 15118 vehicle tells its charger the energy it wants and when it leaves (OCPP 2.0.1); most cars and every
OCPP 1.6 charger say nothing. A booking (``PUT /api/plaza/bookings/{connection}/{device}``) says it instead: the
energy wanted and the departure of the vehicle on that charger now or next. The API keeps it as
``<folder>/<connection>/<device>.json``; control reads the folder, as it does the day-ahead profiles, and uses a
booking for the charger's session while the charger's own session says nothing and the departure is ahead.
Plain files, shared by a volume: a booking survives restarts of both services.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from energyhub.domain.stored_files import folder_stamp, write_atomic

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
        """A charger's new booking replaces its old one."""
        return write_atomic(self._path(connection, device), booking.model_dump_json(indent=2))

    def delete(self, connection: str, device: str) -> bool:
        try:
            self._path(connection, device).unlink()
        except FileNotFoundError:
            return False
        return True

    def stamp(self) -> tuple[int, int]:
        return folder_stamp(self.folder)

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
