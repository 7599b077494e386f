"""Refuse to start on a TCP port that is taken, and say what holds it.

A service that only checks "does the port answer?" after starting is fooled by another process already listening
there: it reports ready and serves nothing. So every service checks its ports first, the way a server would bind
them (``SO_REUSEADDR``, so a port in TIME_WAIT counts as free), and names the holder: on Linux by matching the
listening socket's inode in ``/proc/net/tcp{,6}`` to a ``socket:[inode]`` link under ``/proc/PID/fd``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from energyhub.runtime.supervisor import ServiceError

__all__ = ["PortInUse", "PortUse", "TakenPort", "check_all_free", "check_free", "holder"]

PortUse = tuple[str, int, str]
"""``(host, port, what)``: where a service will listen and a few words saying which service it is."""

_PROC = Path("/proc")
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's `st` column
_WILDCARDS = ("", "0.0.0.0", "::")
_MAX_CMDLINE = 200  # the demo's own command lines run to a screenful; the start says enough


@dataclass(frozen=True, kw_only=True)
class TakenPort:
    """One port that could not be bound, and who holds it (``None``: not visible to this user)."""

    host: str
    port: int
    what: str
    holder: str | None

    @property
    def address(self) -> str:
        return _address(self.host, self.port)

    @property
    def by(self) -> str:
        return f"by {self.holder}" if self.holder else "by another process (not visible to this user)"


class PortInUse(ServiceError):
    """One or more ports a service needs are taken. A ``ServiceError``, so the CLI's ``error: ...`` and exit code 1
    handle it like any other start-up failure."""

    def __init__(self, taken: Iterable[TakenPort]) -> None:
        self.taken = tuple(taken)
        if len(self.taken) == 1:
            t = self.taken[0]
            message = f"{t.address} ({t.what}) is already in use {t.by}: stop it or choose another port"
        else:
            lines = [f"  {t.address} ({t.what}) {t.by}" for t in self.taken]
            message = "\n".join(
                [f"{len(self.taken)} ports are already in use:", *lines, "stop them or choose other ports"]
            )
        super().__init__(message)


def check_free(host: str, port: int, what: str) -> None:
    """Raise ``PortInUse`` (naming the holder) if a server could not listen on ``host:port`` now."""
    check_all_free([(host, port, what)])


def check_all_free(uses: Iterable[PortUse]) -> None:
    """Check every ``(host, port, what)`` and raise one ``PortInUse`` listing all that are taken, so a user sees
    them at once. Port 0 (the OS picks) is skipped. Raises ``ServiceError`` if two uses name one port (both would
    look free, and the second service would fail at start) or a port cannot be bound for another reason."""
    wanted = [(h, p, w) for h, p, w in uses if p != 0]
    _refuse_duplicates(wanted)
    taken: list[TakenPort] = []
    for host, port, what in wanted:
        error = _bind_error(host, port)
        if error is None:
            continue
        if error.errno != errno.EADDRINUSE:
            raise ServiceError(f"cannot listen on {_address(host, port)} ({what}): {error.strerror or error}")
        taken.append(TakenPort(host=host, port=port, what=what, holder=holder(host, port)))
    if taken:
        raise PortInUse(taken)


def holder(host: str, port: int) -> str | None:
    """``"pid 1234 (mosquitto -c /x/mosquitto.conf)"`` for the process listening on ``host:port``, or ``None``
    when it cannot be found (another user's process, no ``/proc``, or the socket is bound but not listening)."""
    inodes = _listening_inodes(host, port)
    if not inodes:
        return None
    pids = _pids_with_socket(inodes)
    if not pids:
        return None
    # Forked workers share the socket; the lowest pid is most often the parent that opened it.
    text = f"pid {pids[0]} ({_command_line(pids[0])})"
    return text + (f" and {len(pids) - 1} more" if len(pids) > 1 else "")


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _overlaps(a: str, b: str) -> bool:
    return a == b or a in _WILDCARDS or b in _WILDCARDS


def _refuse_duplicates(uses: list[PortUse]) -> None:
    for i, (host, port, what) in enumerate(uses):
        for other_host, other_port, other_what in uses[i + 1 :]:
            if port == other_port and _overlaps(host, other_host):
                raise ServiceError(
                    f"port {port} is configured for both {what} ({_address(host, port)}) and {other_what} "
                    f"({_address(other_host, other_port)}): give each its own port"
                )


def _bind_error(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As servers do (Mosquitto, influxd, asyncio, uvicorn): a port in TIME_WAIT can be bound, a listener not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc
    return None


def _ip_addresses(host: str) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address] | None:
    """The addresses ``host`` stands for; ``None`` if it cannot be resolved (then any listener on the port fits)."""
    try:
        infos = socket.getaddrinfo(host or None, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError:
        return None
    return {_unmapped(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos}


def _unmapped(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # A dual-stack socket shows an IPv4 peer as ::ffff:a.b.c.d in /proc/net/tcp6.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    # /proc/net/tcp{,6} prints addresses as 32-bit words in the kernel's (host) byte order.
    raw = bytes.fromhex(hex_address)
    words = struct.unpack(f"={len(raw) // 4}I", raw)
    packed = b"".join(struct.pack(">I", w) for w in words)
    return _unmapped(ipaddress.ip_address(packed))


def _listening_inodes(host: str, port: int) -> set[int]:
    targets = _ip_addresses(host)
    inodes: set[int] = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = (_PROC / "net" / table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != _LISTEN:
                continue
            hex_address, hex_port = fields[1].split(":")
            if int(hex_port, 16) != port:
                continue
            ip = _proc_address(hex_address)
            if targets is None or ip.is_unspecified or any(t.is_unspecified or t == ip for t in targets):
                inodes.add(int(fields[9]))
    inodes.discard(0)
    return inodes


_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]")


def _pids_with_socket(inodes: set[int]) -> list[int]:
    pids: list[int] = []
    try:
        entries = [e for e in os.listdir(_PROC) if e.isdigit()]
    except OSError:
        return []
    for entry in entries:
        fd_dir = _PROC / entry / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:  # another user's process, or it just exited
            continue
        for fd in fds:
            try:
                match = _SOCKET_LINK.fullmatch(os.readlink(fd_dir / fd))
            except OSError:
                continue
            if match and int(match.group(1)) in inodes:
                pids.append(int(entry))
                break
    return sorted(pids)


def _command_line(pid: int) -> str:
    try:
        args = (_PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
        # One line: an argument may hold newlines (python -c), and the message is read on one line.
        text = " ".join(" ".join(a.decode(errors="replace").split()) for a in args if a)
        if not text:  # kernel threads and zombies have no command line, only a name
            text = "[" + (_PROC / str(pid) / "comm").read_text().strip() + "]"
    except OSError:
        return "?"
    return text if len(text) <= _MAX_CMDLINE else text[: _MAX_CMDLINE - 1] + "…"
