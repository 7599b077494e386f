"""The broker's CA and server certificate (the TLS handshake itself is proven in test_broker_live.py)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

import energyhub.broker.certs
from energyhub.broker.certs import CertificateError, CertificatePaths, ensure_certificates


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def names(paths: CertificatePaths) -> tuple[set[str], set[str]]:
    san = load(paths.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {
        str(a) for a in san.get_values_for_type(x509.IPAddress)
    }


def test_ca_and_server_certificate(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hosts=["broker.example.org", "10.1.2.3", "[fd00::5]"])
    dns, ips = names(paths)
    assert dns == {"localhost", "broker.example.org"}
    assert ips == {"127.0.0.1", "::1", "10.1.2.3", "fd00::5"}
    for key in (paths.server_key, tmp_path / "ca.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    ca, server = load(paths.ca_cert), load(paths.server_cert)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject
    public_key = ca.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))
    lifetime = server.not_valid_after_utc - server.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=825, minutes=10)


def test_certificates_are_kept_while_they_fit(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hosts=["broker.example.org"])
    before = {p: p.read_bytes() for p in (paths.ca_cert, paths.server_cert, paths.server_key)}
    again = ensure_certificates(tmp_path, hosts=["127.0.0.1", "BROKER.example.org."])  # both covered already
    assert again == paths
    assert {p: p.read_bytes() for p in before} == before


def test_a_new_host_reissues_the_server_certificate_only(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hosts=["first.example.org"])
    ca_before, server_before = paths.ca_cert.read_bytes(), paths.server_cert.read_bytes()
    ensure_certificates(tmp_path, hosts=["192.168.10.2"])
    assert paths.ca_cert.read_bytes() == ca_before  # gateways keep trusting the same CA
    assert paths.server_cert.read_bytes() != server_before
    dns, ips = names(paths)
    assert "first.example.org" in dns  # earlier names stay, so clients using them keep working
    assert "192.168.10.2" in ips


def test_an_expiring_server_certificate_is_renewed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = ensure_certificates(tmp_path, hosts=[])
    ca_before, server_before = paths.ca_cert.read_bytes(), paths.server_cert.read_bytes()
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=800)  # 25 days before the server certificate ends
    monkeypatch.setattr(energyhub.broker.certs, "_now", lambda: later)
    ensure_certificates(tmp_path, hosts=[])
    assert paths.server_cert.read_bytes() != server_before
    assert paths.ca_cert.read_bytes() == ca_before  # the CA has years left
    assert load(paths.server_cert).not_valid_after_utc > later + dt.timedelta(days=800)


def test_a_certificate_from_another_ca_is_replaced(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hosts=[])
    (tmp_path / "ca.key").unlink()  # a new CA is made; the old server certificate no longer chains to it
    ensure_certificates(tmp_path, hosts=[])
    assert load(paths.server_cert).issuer == load(paths.ca_cert).subject
    ca_key = load(paths.ca_cert).public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    server = load(paths.server_cert)
    ca_key.verify(server.signature, server.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256()))


def test_wildcard_listen_address_means_this_machine(tmp_path: Path) -> None:
    paths = ensure_certificates(tmp_path, hosts=["0.0.0.0"])
    dns, ips = names(paths)
    assert "0.0.0.0" not in ips
    assert len(dns | ips) >= 3
    assert all(ipaddress.ip_address(ip) for ip in ips)


@pytest.mark.parametrize("host", ["bad host", "under_score.example", "-x.example", "a..b"])
def test_bad_hosts_are_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(CertificateError, match="neither an IP address nor a DNS name"):
        ensure_certificates(tmp_path, hosts=[host])


def test_unreadable_files_name_the_fix(tmp_path: Path) -> None:
    ensure_certificates(tmp_path, hosts=[])
    (tmp_path / "server.crt").write_text("garbage")
    with pytest.raises(CertificateError, match="delete them"):
        ensure_certificates(tmp_path, hosts=[])
