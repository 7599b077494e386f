"""A small process supervisor: start real services, wait until they answer, stop them cleanly.

Used by ``energyhub demo``/``energyhub services`` and by the test fixtures, so tests run against exactly the processes
a user runs. Children get their own process group (a terminal's Ctrl-C reaches only the supervisor, which then stops
them in order: SIGTERM, then SIGKILL after a timeout) and, on Linux, die with the supervisor if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["ManagedProcess", "ProcessSpec", "ServiceError", "Supervisor", "find_binary", "wait_for"]

log = logging.getLogger(__name__)

_EXTRA_BIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


class ServiceError(RuntimeError):
    """A service could not be started, did not become ready, or died."""


def find_binary(name: str) -> str:
    """Locate an executable on PATH or in the sbin folders Debian installs daemons into (not on a user's PATH)."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(_EXTRA_BIN_DIRS))
    if found is None:
        raise ServiceError(
            f"'{name}' was not found on PATH or in {', '.join(_EXTRA_BIN_DIRS)}: install it "
            "(Debian/Ubuntu: sudo apt-get install mosquitto influxdb), or run `make setup`"
        )
    return found


def wait_for(condition: Callable[[], bool], *, timeout_s: float, interval_s: float = 0.05, what: str) -> None:
    """Poll ``condition`` until it is true; raise ``TimeoutError`` naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:.1f} s waiting for {what}")
        time.sleep(interval_s)


def _die_with_parent() -> None:
    # Runs in the child between fork and exec. PR_SET_PDEATHSIG = 1: the kernel sends SIGTERM to the child when
    # the parent thread exits, so a killed supervisor (even by SIGKILL) leaves no orphaned broker or database.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


@dataclass(frozen=True, kw_only=True)
class ProcessSpec:
    """How to run one service and how to tell that it answers."""

    name: str
    argv: list[str]
    log_path: Path
    ready: Callable[[], bool]
    ready_timeout_s: float = 30.0
    stop_timeout_s: float = 10.0
    env: dict[str, str] | None = None
    cwd: Path | None = None


@dataclass
class ManagedProcess:
    """One running child process."""

    spec: ProcessSpec
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as logfile:
            self.popen = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=logfile,
                stderr=subprocess.STDOUT,
                env=self.spec.env,
                cwd=self.spec.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        log.info("started %s (pid %s): %s", self.spec.name, self.popen.pid, " ".join(self.spec.argv))

    def wait_ready(self) -> None:
        def answered() -> bool:
            if not self.running:
                raise ServiceError(
                    f"{self.spec.name} exited with code {self.popen.returncode if self.popen else '?'} "
                    f"before it answered; its log {self.spec.log_path} ends with:\n{self.log_tail()}"
                )
            return self.spec.ready()

        try:
            wait_for(answered, timeout_s=self.spec.ready_timeout_s, what=f"{self.spec.name} to answer")
        except TimeoutError as exc:
            raise ServiceError(f"{exc}; its log {self.spec.log_path} ends with:\n{self.log_tail()}") from None

    def signal(self, signum: int) -> None:
        if self.running and self.popen is not None:
            self.popen.send_signal(signum)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited after ``stop_timeout_s``. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=self.spec.stop_timeout_s)
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0f s of SIGTERM: killing it",
                    self.spec.name,
                    self.spec.stop_timeout_s,
                )
                self.popen.kill()
                self.popen.wait()
        log.info("stopped %s (exit code %s)", self.spec.name, self.popen.returncode)
        return self.popen.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.spec.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


class Supervisor:
    """Starts services in order and stops them in reverse order; a context manager."""

    def __init__(self) -> None:
        self._processes: list[ManagedProcess] = []
        self._stop_requested = False
        self._previous_handlers: dict[int, Any] = {}

    @property
    def processes(self) -> list[ManagedProcess]:
        return list(self._processes)

    def start(self, spec: ProcessSpec) -> ManagedProcess:
        """Start one service and wait until it answers; on failure stop it and raise ``ServiceError``."""
        process = ManagedProcess(spec)
        process.start()
        self._processes.append(process)
        try:
            process.wait_ready()
        except BaseException:
            process.stop()
            self._processes.remove(process)
            raise
        return process

    def restart(self, process: ManagedProcess) -> None:
        """Stop and start one service again (tests use this to kill and revive the broker or database)."""
        process.stop()
        process.start()
        process.wait_ready()

    def stop_all(self) -> None:
        while self._processes:
            self._processes.pop().stop()

    def catch_stop_signals(self) -> None:
        """From now on SIGINT/SIGTERM only ask ``wait`` to return (call before printing "press Ctrl-C", so a
        signal that comes at once is not lost); the previous handlers come back when ``wait`` returns."""
        if self._previous_handlers:
            return

        def request_stop(signum: int, _frame: object) -> None:
            self._stop_requested = True
            log.info("received %s: stopping", signal.Signals(signum).name)

        self._previous_handlers = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}

    def wait(self, *, poll_s: float = 0.5) -> None:
        """Block until SIGINT/SIGTERM, or until a child dies on its own (then raise ``ServiceError``)."""
        self.catch_stop_signals()
        try:
            while not self._stop_requested:
                for process in self._processes:
                    if not process.running:
                        raise ServiceError(
                            f"{process.spec.name} exited unexpectedly; its log {process.spec.log_path} ends with:"
                            f"\n{process.log_tail()}"
                        )
                time.sleep(poll_s)
        finally:
            for signum, handler in self._previous_handlers.items():
                signal.signal(signum, handler)
            self._previous_handlers = {}

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def __iter__(self) -> Iterator[ManagedProcess]:
        return iter(self._processes)
