"""Broker accounts: one per gateway plus one per central service, and the file Mosquitto reads.

The broker directory holds::

    accounts.json                       username -> role: the source of truth for who exists
    credentials/<username>.json         the plaintext password (0600), to copy to the gateway or service once
    dynsec/dynamic-security.json        the dynamic-security plugin's config (hashes, client ids, ACLs), generated
    listener.json                       where the broker listens, for ``reload_broker`` (written with mosquitto.conf)

``dynamic-security.json`` is derived (src/energyhub/broker/dynsec.py): every change rewrites it atomically (temp file +
``os.replace``), so a broker starting at any moment reads either the old or the new version, never half a file.
Its folder is 0700 because the broker saves the file there itself, with its own umask. A lock file serialises
concurrent ``energyhub broker`` commands and reloads on the same directory. The ``passwd`` and ``acl`` files of
earlier versions are read once for their hashes and then removed (Mosquitto no longer reads them).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from energyhub.broker.bridge import (
    BRIDGE_PREFIX,
    BridgeError,
    BridgeSettings,
    bridge_site,
    bridge_username,
    read_bridge,
    write_bridge,
)
from energyhub.broker.dynsec import ClientEntry, DynsecFile, Role, password_id, read_dynsec, render_dynsec
from energyhub.broker.dynsec_control import DynsecControl, DynsecControlError, sync
from energyhub.domain.ids import IdError
from energyhub.runtime.passwords import DynsecPassword
from energyhub.wire.topics import TopicError, Topics, check_id

__all__ = ["ADMIN_ACCOUNT", "SERVICE_ACCOUNTS", "AccountError", "BrokerAccounts", "Credentials", "Role"]

RESERVED_PREFIX = "ehub-"
ADMIN_ACCOUNT = "ehub-admin"
SERVICE_ACCOUNTS: dict[str, Role] = {
    "ehub-control": Role.CONTROL,
    "ehub-ingest": Role.INGEST,
    "ehub-api": Role.API,
    ADMIN_ACCOUNT: Role.ADMIN,
}
_PASSWORD_BYTES = 24  # 32 URL-safe characters: long enough that hashing speed does not matter
RELOAD_TIMEOUT_S = 10.0


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


@dataclass(frozen=True)
class _Wanted:
    """An account to create: its role, whether an existing one gets a new password, and the error if it exists."""

    role: Role
    rotate: bool
    taken: str


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
    def dynsec_path(self) -> Path:
        """The dynamic-security plugin's config (``plugin_opt_config_file``), in a folder of its own (0700)."""
        return self.directory / "dynsec" / "dynamic-security.json"

    @property
    def listener_path(self) -> Path:
        """Where the broker listens (written with mosquitto.conf), so ``reload_broker`` can reach it."""
        return self.directory / "listener.json"

    @property
    def legacy_paths(self) -> tuple[Path, Path]:
        """The password and ACL files of the acl_file setup, which Mosquitto no longer reads."""
        return self.directory / "passwd", self.directory / "acl"

    @property
    def bridge_path(self) -> Path:
        """This estate broker's bridge to a core broker (``energyhub broker bridge``); absent: no bridge."""
        return self.directory / "bridge.json"

    @property
    def credentials_dir(self) -> Path:
        return self.directory / "credentials"

    @property
    def pid_path(self) -> Path:
        """Where mosquitto.conf (src/energyhub/broker/config.py) tells Mosquitto to write its pid."""
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
        """Create the service accounts (control, ingest, api, admin) that are missing; return only the new ones."""
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
        return self.add_gateways([name], rotate={name} if rotate else set())[name]

    def add_gateways(
        self, names: Iterable[str], *, rotate: Collection[str] = frozenset()
    ) -> dict[str, Credentials]:
        """Create the accounts of gateways ``names`` (those in ``rotate`` get a new password) with one write of the
        broker's files: writing them per account costs a demo's hundred gateways seconds at start-up."""
        wanted = {}
        for name in names:
            try:
                check_id(name, what="gateway id")
            except IdError as exc:
                raise AccountError(str(exc)) from None
            if name.startswith(RESERVED_PREFIX):
                raise AccountError(
                    f"gateway id {name!r}: names starting with {RESERVED_PREFIX!r} are reserved for the service "
                    f"accounts ({', '.join(SERVICE_ACCOUNTS)}): choose another gateway id"
                )
            taken = (
                f"gateway {name!r} already has a broker account in {self.directory}: to give it a new "
                f"password (the old one then stops working) use `energyhub broker add-gateway {name} --rotate` "
                "(in Python: rotate=True)"
            )
            wanted[name] = _Wanted(Role.GATEWAY, rotate=name in rotate, taken=taken)
        return self._add(wanted)

    def _add(self, wanted: dict[str, _Wanted]) -> dict[str, Credentials]:
        """Create the accounts ``wanted`` (a new password where it says rotate), then write the files once."""
        with self._locked():
            accounts = self.accounts()
            for name, want in wanted.items():
                if name in accounts and not want.rotate:
                    raise AccountError(want.taken)
            created = {}
            for name, want in wanted.items():
                created[name] = self._create(name, want.role)
                accounts[name] = want.role
            self._save_accounts(accounts)
            self._write_files(accounts)
        return created

    def add_bridge(self, site: str, *, rotate: bool = False) -> Credentials:
        """On a core broker: create the account of estate ``site``'s bridge (``ehub-bridge-<site>``).

        Its role may publish only that estate's subtree and subscribe only to its confirmations; the ingest's role
        on this broker grows to read and confirm that estate too."""
        try:
            name = bridge_username(site)
        except BridgeError as exc:
            raise AccountError(str(exc)) from None
        if site == self.topics.site:
            raise AccountError(
                f"site {site!r} is this broker's own site: a bridge brings in another estate's site"
            )
        taken = (
            f"estate {site!r} already has a bridge account {name!r} in {self.directory}: to give it a new "
            f"password use `energyhub broker add-bridge {site} --rotate` (in Python: rotate=True), then "
            "copy the credentials file to the estate broker again and restart it"
        )
        return self._add({name: _Wanted(Role.BRIDGE, rotate=rotate, taken=taken)})[name]

    def bridge(self) -> BridgeSettings | None:
        """This broker's bridge to a core broker, None if it has none."""
        try:
            return read_bridge(self.bridge_path)
        except BridgeError as exc:
            raise AccountError(str(exc)) from None

    def set_bridge(self, settings: BridgeSettings | None) -> None:
        """On an estate broker: bridge it to a core broker (None: no longer). Mosquitto reads bridges only at start,
        so the ``connection`` section takes effect at the broker's next start; the ingest's role here (empty while
        bridged) changes at the next ``reload_broker``."""
        if settings is not None:
            try:
                # A wrong or missing credentials file fails now, not at the broker's start.
                settings.login(self.topics.site)
            except BridgeError as exc:
                raise AccountError(str(exc)) from None
        with self._locked():
            self.directory.mkdir(parents=True, exist_ok=True)
            write_bridge(self.bridge_path, settings)
            self._write_files(self.accounts())

    def remove(self, name: str) -> None:
        """Delete account ``name``: it can no longer log in, and is disconnected, once the broker reloads."""
        if name == ADMIN_ACCOUNT:
            raise AccountError(
                f"{ADMIN_ACCOUNT} cannot be removed: it is how account changes reach the running broker"
            )
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
        """(Re)write the dynamic-security config from the accounts.

        ``dev_mode`` gives anonymous clients the site; None keeps what the current file has, so adding a gateway
        to a broker started in dev mode does not take anonymous access away at the next reload.
        """
        with self._locked():
            self._write_files(self.accounts(), dev_mode=dev_mode)

    def write_listener(self, host: str, port: int) -> None:
        """Record where the broker listens (its plain listener), for ``reload_broker``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(self.listener_path, json.dumps({"host": host, "port": port}) + "\n")

    def reload_broker(self) -> bool:
        """Bring this directory's running Mosquitto in line with the accounts; False if none runs.

        Sent as dynamic-security commands by the admin account (the plugin does not re-read its file): only the
        differences, so accounts that did not change stay connected, while a removed account or one with a new
        password is disconnected and its old password refused from then on.
        """
        if self._running_pid() is None:
            return False
        with self._locked():
            host, port = self._listener()
            accounts = self.accounts()
            dev_mode = self._dev_mode()
            document = self._document(accounts, dev_mode=dev_mode)
            plaintexts = self._plaintexts(accounts)
            admin = plaintexts.get(ADMIN_ACCOUNT)
            if admin is None:
                raise AccountError(
                    f"the credentials of {ADMIN_ACCOUNT} ({self.credentials_path(ADMIN_ACCOUNT)}) are missing, "
                    "so the running broker cannot be told of changes: restart it (it reads the accounts at start)"
                )
            try:
                unreachable = self._sync(host, port, admin, document, plaintexts)
            except DynsecControlError as exc:
                if self._running_pid() is None:
                    return False  # it stopped meanwhile: the change takes effect when it starts
                raise AccountError(
                    f"could not update the running broker ({exc}); if it was started before the accounts moved "
                    "to the dynamic-security plugin, restart it"
                ) from None
            # The broker saved its own copy of the file with each change: write ours (the same accounts) again.
            self._write_files(accounts, dev_mode=dev_mode)
        if unreachable:
            raise AccountError(
                f"the running broker does not know {', '.join(unreachable)} and their plaintext passwords are "
                "lost, so it cannot be told them: restart the broker (it loads the kept hashes) or give them new "
                "passwords (`energyhub broker add-gateway <name> --rotate`)"
            )
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

    def _running_pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text(encoding="ascii").strip())
        except (FileNotFoundError, ValueError):
            return None  # no pid file, or an empty or half-written one: no broker we can name
        if pid <= 1 or not _is_mosquitto(pid):
            return None  # a stale pid file whose number now belongs to another process (or none)
        return pid

    def _listener(self) -> tuple[str, int]:
        try:
            raw = json.loads(self.listener_path.read_text(encoding="utf-8"))
            host, port = str(raw["host"]), int(raw["port"])
        except FileNotFoundError:
            raise AccountError(
                f"a broker runs from {self.directory} but {self.listener_path} is missing: restart it with "
                "`energyhub services` (or rewrite its config with `energyhub broker write-config`)"
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise AccountError(
                f"{self.listener_path} is not valid ({exc!r}): rewrite it with write-config"
            ) from None
        # A broker listening on every address is reached on loopback.
        return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host), port

    def _sync(
        self, host: str, port: int, admin: str, document: dict[str, object], plaintexts: dict[str, str]
    ) -> list[str]:
        with DynsecControl(
            host, port, username=ADMIN_ACCOUNT, password=admin, timeout_s=RELOAD_TIMEOUT_S
        ) as control:
            _, unreachable = sync(control, document, plaintexts, keep=ADMIN_ACCOUNT)
        return unreachable

    def _plaintexts(self, accounts: dict[str, Role]) -> dict[str, str]:
        return {u: self.credentials(u).password for u in accounts if self.credentials_path(u).exists()}

    def _previous(self) -> DynsecFile:
        """Hashes and password ids of the current file; hashes of a legacy passwd file where it has none."""
        current = read_dynsec(self.dynsec_path) or DynsecFile(passwords={}, password_ids={}, dev_mode=False)
        passwd, _ = self.legacy_paths
        try:
            lines = passwd.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        for line in lines:
            username, _, hashed = line.partition(":")
            legacy = DynsecPassword.from_hash(hashed)
            if legacy is not None:
                current.passwords.setdefault(username, legacy)
        return current

    def _dev_mode(self) -> bool:
        if self.dynsec_path.exists():
            previous = read_dynsec(self.dynsec_path)
            return previous is not None and previous.dev_mode
        _, acl = self.legacy_paths  # the acl_file setup marked dev mode with a comment line
        try:
            return "# dev mode: anonymous clients may use the whole site." in acl.read_text(encoding="utf-8")
        except FileNotFoundError:
            return False

    def _document(self, accounts: dict[str, Role], *, dev_mode: bool) -> dict[str, object]:
        # Keep an account's hash while it still matches the stored password: the file then changes only for the
        # accounts that changed, and a lost credentials file does not lock out a gateway that still knows it.
        previous = self._previous()
        clients: list[ClientEntry] = []
        for username in sorted(accounts):
            path = self.credentials_path(username)
            old_hash = previous.passwords.get(username)
            if path.exists():
                password = self.credentials(username).password
                hashed = old_hash if old_hash and old_hash.verify(password) else DynsecPassword.make(password)
                fingerprint = password_id(password)
            elif old_hash:
                hashed, fingerprint = old_hash, previous.password_ids.get(username, "")
            else:
                raise AccountError(
                    f"account {username!r} has neither a credentials file ({path}) nor a hash in "
                    f"{self.dynsec_path}: {_renew_hint(username)}"
                )
            clients.append(
                ClientEntry(
                    username=username, role=accounts[username], password=hashed, password_id=fingerprint
                )
            )
        return render_dynsec(
            clients, accounts, self.topics, dev_mode=dev_mode, bridged_estate=self.bridge_path.exists()
        )

    def _write_files(self, accounts: dict[str, Role], *, dev_mode: bool | None = None) -> None:
        if dev_mode is None:
            dev_mode = self._dev_mode()
        document = self._document(accounts, dev_mode=dev_mode)
        self.dynsec_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.dynsec_path.parent, 0o700)
        write_atomic(self.dynsec_path, json.dumps(document, indent=2) + "\n", mode=0o600)
        for legacy in self.legacy_paths:
            legacy.unlink(missing_ok=True)  # no longer read by Mosquitto: leave nothing that looks in force


def _renew_hint(username: str) -> str:
    if username.startswith(BRIDGE_PREFIX):
        return f"give it a new password with `energyhub broker add-bridge {bridge_site(username)} --rotate`"
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
