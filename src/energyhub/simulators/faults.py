"""Faults a simulated device can be switched into at run time, for tests and demos."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Faults"]


@dataclass
class Faults:
    """What is wrong with a device now. All off by default; set fields to switch a fault on."""

    offline: bool = False  # answers like an RTU-to-TCP gateway whose device is silent (exception 0x0B)
    delay_s: float = 0.0  # answers only after this long
    exception_code: int | None = None  # answers every request with this Modbus exception code
    nan: bool = False  # float values read as NaN; SunSpec integers as "not implemented"
    frozen: bool = False  # registers keep their last values

    def clear(self) -> None:
        self.offline = self.nan = self.frozen = False
        self.delay_s = 0.0
        self.exception_code = None
