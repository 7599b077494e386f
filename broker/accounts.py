"""Broker accounts: one per gateway plus one per central service, and the files Mosquitto reads.

The broker directory holds::

    accounts.json                 username -> role: the source of truth for who exists
    credentials/<username>.json   the plaintext password (0600), to copy to the gateway or service once
    passwd                        Mosquitto password file (PBKDF2 hashes), generated
    acl                           Mosquitto ACL file, generated (see broker/acl.py)

``passwd`` and ``acl`` are derived files: every change rewrites both atomically (temp file + ``os.replace``),
so a broker reloading at any moment reads either the old or the new version, never half a file. A lock file
serialises concurrent ``energyhub broker`` commands on the same directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from broker.acl import DEV_MODE_MARKER, Role, render_acl
from broker.passwords import hash_password, verify_password
from hub.topics import TopicError, Topics, check_id

__all__ = ["SERVICE_ACCOUNTS", "AccountError", "BrokerAccounts", "Credentials", "Role"]

RESERVED_PREFIX = "ehub-"
SERVICE_ACCOUNTS: dict[str, Role] = {
    "ehub-control": Role.CONTROL,
    "ehub-ingest": Role.INGEST,
    "ehub-api": Role.API,
}
_PASSWORD_BYTES = 24  # 32 URL-safe characters: long enough that hashing speed does not matter


class AccountError(ValueError):
    """An account operation that cannot be done as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Credentials:
    """What a client needs to log in to the broker."""

    username: str
    password: str
    role: Role


def write_atomic(path: Path, text: str, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` in one step: readers see the old or the new file, never part of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)  # before any byte is written, so a secret is never briefly world-readable
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


class BrokerAccounts:
    """The accounts of one broker, kept as files in ``directory``."""

    def __init__(self, directory: Path, topics: Topics) -> None:
        self.directory = Path(directory)
        self.topics = topics

    # -- paths ---------------------------------------------------------------------------------------------
    @property
    def accounts_path(self) -> Path:
        return self.directory / "accounts.json"

    @property
    def passwd_path(self) -> Path:
        return self.directory / "passwd"

    @property
    def acl_path(self) -> Path:
        return self.directory / "acl"

    @property
    def credentials_dir(self) -> Path:
        return self.directory / "credentials"

    @property
    def pid_path(self) -> Path:
        """Where mosquitto.conf (broker/config.py) tells Mosquitto to write its pid."""
        return self.directory / "mosquitto.pid"

    def credentials_path(self, username: str) -> Path:
        return self.credentials_dir / f"{username}.json"

    # -- queries -------------------------------------------------------------------------------------------
    def accounts(self) -> dict[str, Role]:
        """Username -> role of every account (empty before the first one is made)."""
        try:
            raw = json.loads(self.accounts_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except json.JSONDecodeError as exc:
            raise AccountError(
                f"{self.accounts_path} is not valid JSON ({exc}): fix it or restore it from a backup"
            ) from None
        if not isinstance(raw, dict):
            raise AccountError(f"{self.accounts_path} must hold a JSON object of username -> role")
        result: dict[str, Role] = {}
        for username, role in raw.items():
            try:
                result[check_id(username, what="username")] = Role(role)
            except (TopicError, ValueError) as exc:
                raise AccountError(
                    f"{self.accounts_path}: account {username!r}: {exc} (roles: {', '.join(Role)})"
                ) from None
        return result

    def credentials(self, name: str) -> Credentials:
        """The stored plaintext credentials of account ``name``."""
        path = self.credentials_path(name)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return Credentials(
                username=str(raw["username"]), password=str(raw["password"]), role=Role(raw["role"])
            )
        except FileNotFoundError:
            known = self.accounts()
            if name in known:
                raise AccountError(
                    f"the credentials file of {name!r} ({path}) is missing: {_renew_hint(name)}"
                ) from None
            raise AccountError(f"no broker account {name!r} in {self.directory}") from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AccountError(
                f"{path} is not a valid credentials file ({exc!r}): delete it, then {_renew_hint(name)}"
            ) from None

    # -- changes -------------------------------------------------------------------------------------------
    def ensure_service_accounts(self) -> list[Credentials]:
        """Create the control, ingest and api accounts that are missing; return only the new ones."""
        created: list[Credentials] = []
        with self._locked():
            accounts = self.accounts()
            for username, role in SERVICE_ACCOUNTS.items():
                if accounts.get(username) == role and self.credentials_path(username).exists():
                    continue
                created.append(self._create(username, role))
                accounts[username] = role
            if created:
                self._save_accounts(accounts)
            self._write_files(accounts)
        return created

    def add_gateway(self, name: str, *, rotate: bool = False) -> Credentials:
        """Create the account of gateway ``name`` (its gateway id); ``rotate`` gives it a new password."""
        try:
            check_id(name, what="gateway id")
        except TopicError as exc:
            raise AccountError(str(exc)) from None
        if name.startswith(RESERVED_PREFIX):
            raise AccountError(
                f"gateway id {name!r}: names starting with {RESERVED_PREFIX!r} are reserved for the service "
                f"accounts ({', '.join(SERVICE_ACCOUNTS)}): choose another gateway id"
            )
        with self._locked():
            accounts = self.accounts()
            if name in accounts and not rotate:
                raise AccountError(
                    f"gateway {name!r} already has a broker account in {self.directory}: to give it a new "
                    f"password (the old one then stops working) use `energyhub broker add-gateway {name} --rotate` "
                    "(in Python: rotate=True)"
                )
            credentials = self._create(name, Role.GATEWAY)
            accounts[name] = Role.GATEWAY
            self._save_accounts(accounts)
            self._write_files(accounts)
        return credentials

    def remove(self, name: str) -> None:
        """Delete account ``name``: it can no longer log in once the broker reloads."""
        with self._locked():
            accounts = self.accounts()
            if name not in accounts:
                raise AccountError(
                    f"no broker account {name!r} in {self.directory} (see `energyhub broker list`)"
                )
            del accounts[name]
            self._save_accounts(accounts)
            self._write_files(accounts)
            self.credentials_path(name).unlink(missing_ok=True)

    def write_files(self, *, dev_mode: bool | None = None) -> None:
        """(Re)write ``passwd`` and ``acl`` from the accounts.

        ``dev_mode`` adds the ACL's anonymous section; None keeps what the current ACL file has, so adding a
        gateway to a broker started in dev mode does not take anonymous access away at the next reload.
        """
        with self._locked():
            self._write_files(self.accounts(), dev_mode=dev_mode)

    def reload_broker(self) -> bool:
        """SIGHUP this directory's running Mosquitto so it re-reads passwd and acl; False if none runs."""
        try:
            pid = int(self.pid_path.read_text(encoding="ascii").strip())
        except FileNotFoundError:
            return False
        except ValueError:
            return False  # an empty or half-written pid file: no broker we can name
        if pid <= 1 or not _is_mosquitto(pid):
            return False  # a stale pid file whose number now belongs to another process (or none)
        try:
            os.kill(pid, signal.SIGHUP)
        except ProcessLookupError:
            return False
        except PermissionError:
            raise AccountError(
                f"Mosquitto (pid {pid}, from {self.pid_path}) runs as another user: reload it as that user "
                f"with `kill -HUP {pid}`"
            ) from None
        return True

    # -- internals -----------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _create(self, username: str, role: Role) -> Credentials:
        credentials = Credentials(
            username=username, password=secrets.token_urlsafe(_PASSWORD_BYTES), role=role
        )
        self.credentials_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        document = {
            "username": credentials.username,
            "password": credentials.password,
            "role": str(credentials.role),
            # The address the client should use is not known here; the installer fills it in when copying.
            "host": None,
        }
        write_atomic(self.credentials_path(username), json.dumps(document, indent=2) + "\n", mode=0o600)
        return credentials

    def _save_accounts(self, accounts: dict[str, Role]) -> None:
        document = {name: str(role) for name, role in sorted(accounts.items())}
        write_atomic(self.accounts_path, json.dumps(document, indent=2) + "\n")

    def _read_passwd(self) -> dict[str, str]:
        try:
            text = self.passwd_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        entries: dict[str, str] = {}
        for line in text.splitlines():
            username, sep, hashed = line.partition(":")
            if sep:
                entries[username] = hashed
        return entries

    def _acl_dev_mode(self) -> bool:
        try:
            return DEV_MODE_MARKER in self.acl_path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return False

    def _write_files(self, accounts: dict[str, Role], *, dev_mode: bool | None = None) -> None:
        # Keep a user's hash while it still matches the stored password: the file then changes only for the
        # accounts that changed, and a lost credentials file does not lock out a gateway that still knows it.
        previous = self._read_passwd()
        lines: list[str] = []
        for username in sorted(accounts):
            path = self.credentials_path(username)
            old_hash = previous.get(username)
            if path.exists():
                password = self.credentials(username).password
                hashed = (
                    old_hash if old_hash and verify_password(password, old_hash) else hash_password(password)
                )
            elif old_hash:
                hashed = old_hash
            else:
                raise AccountError(
                    f"account {username!r} has neither a credentials file ({path}) nor a hash in "
                    f"{self.passwd_path}: {_renew_hint(username)}"
                )
            lines.append(f"{username}:{hashed}\n")
        write_atomic(self.passwd_path, "".join(lines), mode=0o600)
        if dev_mode is None:
            dev_mode = self._acl_dev_mode()
        write_atomic(self.acl_path, render_acl(accounts, self.topics, dev_mode=dev_mode), mode=0o600)


def _renew_hint(username: str) -> str:
    if username in SERVICE_ACCOUNTS:
        return "run `energyhub broker init` to give it a new password"
    return f"give it a new password with `energyhub broker add-gateway {username} --rotate`"


def _is_mosquitto(pid: int) -> bool:
    """True if process ``pid`` exists and (where /proc tells) is a mosquitto process."""
    comm = Path(f"/proc/{pid}/comm")
    if Path("/proc/self/comm").exists():
        try:
            return comm.read_text(encoding="utf-8", errors="replace").strip() == "mosquitto"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)  # no /proc (macOS): existence is all we can check
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
