"""TLS for the broker: a small private CA and a server certificate for the names clients connect to.

The CA is made once and kept (gateways pin it: ``ca.crt`` is what to copy to each gateway); the server
certificate is reissued whenever it no longer fits: a requested host it does not name, expiry within 30 days,
or a CA it was not signed by. A reissued certificate keeps the names of the old one, so a gateway that used a
name keeps working. Keys are ECDSA P-256 (fast to make, accepted by OpenSSL, Mosquitto and every MQTT client
we use) and mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from energyhub.broker.accounts import write_atomic

__all__ = ["ALWAYS_COVERED", "CertificateError", "CertificatePaths", "ensure_certificates"]

ALWAYS_COVERED = ("localhost", "127.0.0.1", "::1")
CA_DAYS = 3650
RENEW_BEFORE = dt.timedelta(days=30)
_DNS_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)

_Name = x509.DNSName | x509.IPAddress
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class CertificateError(ValueError):
    """A host name that cannot go into a certificate, or certificate files that cannot be used."""


@dataclass(frozen=True)
class CertificatePaths:
    """The files Mosquitto's TLS listener reads (``ca_cert`` is also what clients need)."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _san(host: str) -> _Name | None:
    """The SAN entry for ``host``; None for a wildcard listen address, which no client connects to."""
    text = host.strip().removeprefix("[").removesuffix("]")
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        name = text.lower().rstrip(".")
        if not _DNS_NAME.match(name) or len(name) > 253:
            raise CertificateError(
                f"host {host!r} is neither an IP address nor a DNS name (letters, digits, '-' and '.'): "
                "pass the name or address clients use to reach the broker"
            ) from None
        return x509.DNSName(name)
    return None if address.is_unspecified else x509.IPAddress(address)


def _wanted_names(hosts: list[str]) -> set[_Name]:
    names: set[_Name] = set()
    for host in [*ALWAYS_COVERED, *hosts]:
        san = _san(host)
        if san is None:
            # Listening on 0.0.0.0 / :: means clients come by this machine's name.
            san = _san(socket.gethostname())
        if san is not None:
            names.add(san)
    return names


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_atomic(path, pem.decode("ascii"), mode=0o600)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    write_atomic(path, cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), mode=0o644)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError(
            f"{path} is not an EC private key: delete it and its certificate to make new ones"
        )
    return key


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _make_ca(
    paths: CertificatePaths, ca_key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "energyhub MQTT CA")])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(ca_key_path, key)
    _write_cert(paths.ca_cert, cert)
    return cert, key


def _load_or_make_ca(
    paths: CertificatePaths, ca_key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if paths.ca_cert.exists() and ca_key_path.exists():
        cert = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
        if cert.not_valid_after_utc - _now() > RENEW_BEFORE:
            return cert, _load_key(ca_key_path)
        # An expiring CA is replaced; gateways then need the new ca.crt (the CLI prints where it is).
    return _make_ca(paths, ca_key_path)


def _current_names(
    paths: CertificatePaths, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey
) -> set[_Name] | None:
    """The names of the existing server certificate if it is still usable with this CA, else None."""
    if not (paths.server_cert.exists() and paths.server_key.exists()):
        return None
    cert = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    if cert.not_valid_after_utc - _now() <= RENEW_BEFORE or cert.issuer != ca_cert.subject:
        return None
    try:
        ca_key.public_key().verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return None
    if _load_key(paths.server_key).public_key() != cert.public_key():
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    return set(san)


def _make_server_cert(
    paths: CertificatePaths,
    names: set[_Name],
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> None:
    key = _new_key()
    dns = sorted(n.value for n in names if isinstance(n, x509.DNSName))
    ips: list[_IP] = sorted(
        (n.value for n in names if isinstance(n, x509.IPAddress) and isinstance(n.value, _IP)),
        key=lambda address: (address.version, int(address)),
    )
    common_name = dns[0] if dns else str(ips[0])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([*(x509.DNSName(d) for d in dns), *(x509.IPAddress(a) for a in ips)]),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(paths.server_key, key)
    _write_cert(paths.server_cert, cert)


def ensure_certificates(directory: Path, hosts: list[str], *, days: int = 825) -> CertificatePaths:
    """Make (or keep) the CA and a server certificate valid for ``hosts`` plus localhost, 127.0.0.1 and ::1.

    ``days`` is the server certificate's lifetime (825 days: the most that Apple's TLS clients accept).
    """
    if days <= RENEW_BEFORE.days:
        raise CertificateError(f"days must be more than {RENEW_BEFORE.days} (the renewal margin), got {days}")
    wanted = _wanted_names(hosts)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = CertificatePaths(
        ca_cert=directory / "ca.crt",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
    )
    try:
        ca_cert, ca_key = _load_or_make_ca(paths, directory / "ca.key")
        current = _current_names(paths, ca_cert, ca_key)
    except ValueError as exc:  # unparsable PEM
        raise CertificateError(
            f"the certificate files in {directory} cannot be read ({exc}): delete them to make new ones"
        ) from None
    if current is None or not wanted <= current:
        _make_server_cert(paths, wanted | (current or set()), ca_cert, ca_key, days)
    return paths
