"""Mosquitto 2.x password-file hashes, made and checked in pure Python.

Mosquitto's default (``mosquitto_passwd -H sha512-pbkdf2``) stores ``$7$<iterations>$<salt>$<hash>``:
PBKDF2-HMAC-SHA512 over the UTF-8 password, a 12-byte random salt and a 64-byte derived key, both in standard
base64 with padding. The older ``-H sha512`` form ``$6$<salt>$<hash>`` (one SHA-512 over password + salt) is
only verified.

The dynamic-security plugin (src/energyhub/broker/dynsec.py) keeps the very same PBKDF2-HMAC-SHA512 hash, only split into three
JSON fields per client: ``"password"`` (the 64-byte derived key, base64), ``"salt"`` (exactly 12 bytes, base64: the
plugin silently skips a client whose salt or hash has another length) and ``"iterations"`` (101 by default).
``DynsecPassword`` converts between the two forms, so one hash serves both.

Why not call ``mosquitto_passwd``: provisioning (``energyhub broker add-gateway``) must work where the broker
binary is not installed, e.g. in a slim Docker image or on an operator's laptop that only writes the files the
broker container mounts. hashlib gives the identical result without a subprocess.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

__all__ = ["DEFAULT_ITERATIONS", "SALT_BYTES", "DynsecPassword", "hash_password", "verify_password"]

DEFAULT_ITERATIONS = 101  # what mosquitto_passwd 2.0 writes (PW_DEFAULT_ITERATIONS in mosquitto's source)
SALT_BYTES = 12  # mosquitto's SALT_LEN
_HASH_BYTES = 64  # SHA-512 output: mosquitto derives exactly one block


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """Hash ``password`` the way ``mosquitto_passwd`` 2.x does (``$7$``, PBKDF2-HMAC-SHA512).

    ``salt`` is for reproducible tests only; by default 12 random bytes are drawn.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be at least 1, got {iterations}")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif len(salt) != SALT_BYTES:
        # Mosquitto decodes the salt into a fixed 12-byte buffer; another length would not verify there.
        raise ValueError(f"salt must be {SALT_BYTES} bytes (mosquitto's salt length), got {len(salt)}")
    derived = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _HASH_BYTES)
    return f"$7${iterations}${_b64(salt)}${_b64(derived)}"


def verify_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a mosquitto ``$7$`` (PBKDF2) or ``$6$`` (salted SHA-512) hash.

    A malformed hash is simply not a match: the caller asks "may this password log in", and the answer is no.
    """
    parts = hashed.split("$")
    try:
        if len(parts) == 5 and parts[:2] == ["", "7"]:
            iterations = int(parts[2])
            if iterations < 1:
                return False
            salt = base64.b64decode(parts[3], validate=True)
            expected = base64.b64decode(parts[4], validate=True)
            derived = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, len(expected))
        elif len(parts) == 4 and parts[:2] == ["", "6"]:
            salt = base64.b64decode(parts[2], validate=True)
            expected = base64.b64decode(parts[3], validate=True)
            derived = hashlib.sha512(password.encode("utf-8") + salt).digest()
        else:
            return False
    except ValueError:  # a non-numeric iteration count, or bad base64 (binascii.Error is a ValueError)
        return False
    return bool(expected) and hmac.compare_digest(derived, expected)


@dataclass(frozen=True, slots=True)
class DynsecPassword:
    """A ``$7$`` hash as the dynamic-security plugin stores it: base64 hash, base64 salt, iteration count."""

    password: str
    salt: str
    iterations: int

    @classmethod
    def make(cls, password: str) -> DynsecPassword:
        """A fresh hash of ``password`` (random salt)."""
        parsed = cls.from_hash(hash_password(password))
        assert parsed is not None  # hash_password always writes the $7$ form
        return parsed

    @classmethod
    def from_hash(cls, hashed: str) -> DynsecPassword | None:
        """The dynsec fields of a ``$7$`` hash; None for any other form (``$6$`` has no dynsec equivalent)."""
        parts = hashed.split("$")
        if len(parts) != 5 or parts[:2] != ["", "7"] or not parts[2].isdigit():
            return None
        entry = cls(password=parts[4], salt=parts[3], iterations=int(parts[2]))
        return entry if entry.is_loadable() else None

    @classmethod
    def from_json(cls, client: object) -> DynsecPassword | None:
        """The password fields of one client object of a dynsec config file, None if absent or unusable."""
        if not isinstance(client, dict):
            return None
        password, salt, iterations = client.get("password"), client.get("salt"), client.get("iterations")
        if not (isinstance(password, str) and isinstance(salt, str) and isinstance(iterations, int)):
            return None
        entry = cls(password=password, salt=salt, iterations=iterations)
        return entry if entry.is_loadable() else None

    def to_hash(self) -> str:
        return f"$7${self.iterations}${self.salt}${self.password}"

    def to_json(self) -> dict[str, str | int]:
        return {"password": self.password, "salt": self.salt, "iterations": self.iterations}

    def is_loadable(self) -> bool:
        """True if the plugin would load it: 12-byte salt, 64-byte hash, at least one iteration."""
        try:
            salt = base64.b64decode(self.salt, validate=True)
            derived = base64.b64decode(self.password, validate=True)
        except ValueError:
            return False
        return self.iterations >= 1 and len(salt) == SALT_BYTES and len(derived) == _HASH_BYTES

    def verify(self, password: str) -> bool:
        return verify_password(password, self.to_hash())
