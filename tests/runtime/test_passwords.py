"""energyhub.runtime.passwords against the real mosquitto_passwd (Mosquitto's own logins are in test_broker_live.py)."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from energyhub.runtime.passwords import SALT_BYTES, DynsecPassword, hash_password, verify_password
from energyhub.runtime.supervisor import find_binary

PBKDF2_FORMAT = re.compile(r"^\$7\$101\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")


def mosquitto_passwd(tmp_path: Path, password: str, *options: str) -> str:
    """The hash the real mosquitto_passwd writes for ``password``."""
    path = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), *options, "-c", "-b", str(path), "someone", password],
        check=True,
        capture_output=True,
    )
    username, _, hashed = path.read_text().strip().partition(":")
    assert username == "someone"
    return hashed


@pytest.mark.parametrize("password", ["secret", "wachtwoord met spaties en ü€", "x" * 200])
def test_we_verify_what_mosquitto_passwd_writes(tmp_path: Path, password: str) -> None:
    hashed = mosquitto_passwd(tmp_path, password)
    assert PBKDF2_FORMAT.match(hashed), hashed
    assert verify_password(password, hashed)
    assert not verify_password(password + "!", hashed)
    assert not verify_password("", hashed)


def test_we_hash_exactly_as_mosquitto_passwd_does(tmp_path: Path) -> None:
    hashed = mosquitto_passwd(tmp_path, "same-salt-same-hash")
    salt = base64.b64decode(hashed.split("$")[3])
    assert len(salt) == SALT_BYTES
    assert hash_password("same-salt-same-hash", salt=salt) == hashed


def test_legacy_sha512_hashes_verify(tmp_path: Path) -> None:
    hashed = mosquitto_passwd(tmp_path, "old-style", "-H", "sha512")
    assert hashed.startswith("$6$")
    assert verify_password("old-style", hashed)
    assert not verify_password("new-style", hashed)


def test_our_hashes_have_mosquittos_format_and_fresh_salts() -> None:
    first, second = hash_password("pw"), hash_password("pw")
    assert PBKDF2_FORMAT.match(first), first
    assert first != second  # a random salt each time
    assert verify_password("pw", first)
    assert verify_password("pw", second)
    assert verify_password("pw", hash_password("pw", iterations=1000))
    assert hash_password("pw", iterations=1000).startswith("$7$1000$")


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "plain",
        "$7$101$",
        "$7$abc$AAAAAAAAAAAAAAAA$AAAA",
        "$7$0$AAAAAAAAAAAAAAAA$AAAA",
        "$7$101$!!$AAAA",
        "$5$x$y",
    ],
)
def test_malformed_hashes_never_match(hashed: str) -> None:
    assert not verify_password("pw", hashed)


def test_bad_salt_and_iterations_are_refused() -> None:
    with pytest.raises(ValueError, match="12 bytes"):
        hash_password("pw", salt=b"short")
    with pytest.raises(ValueError, match="at least 1"):
        hash_password("pw", iterations=0)


def test_dynsec_fields_are_the_same_hash_split(tmp_path: Path) -> None:
    hashed = mosquitto_passwd(tmp_path, "one-hash-two-forms")
    entry = DynsecPassword.from_hash(hashed)
    assert entry is not None
    _, _, iterations, salt, derived = hashed.split("$")
    assert entry.to_json() == {"password": derived, "salt": salt, "iterations": int(iterations)}
    assert entry.to_hash() == hashed
    assert entry.verify("one-hash-two-forms")
    assert not entry.verify("another")
    assert DynsecPassword.from_json(entry.to_json()) == entry


def test_dynsec_entries_the_plugin_would_skip_are_refused() -> None:
    good = DynsecPassword.make("pw")
    assert good.is_loadable()
    assert (
        len(base64.b64decode(good.salt)) == SALT_BYTES
    )  # the plugin skips a client with another salt length
    assert DynsecPassword.from_json({**good.to_json(), "salt": base64.b64encode(b"x" * 16).decode()}) is None
    assert DynsecPassword.from_json({**good.to_json(), "password": "AAAA"}) is None
    assert DynsecPassword.from_json({**good.to_json(), "iterations": 0}) is None
    assert DynsecPassword.from_json({"password": good.password}) is None
    assert DynsecPassword.from_hash("$6$c2FsdA==$aGFzaA==") is None  # no dynsec form of the old SHA-512 hash
