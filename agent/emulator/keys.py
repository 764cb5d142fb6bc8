"""Key material of the emulator: a signing key (RS256) and a small private CA with a server certificate.

Reuses what a state directory already holds (so statements and the CA survive restarts) and creates
what is missing. The CA and server keys are ECDSA P-256 (fast to generate, so start-up stays well
under a second); the JWT signing key is RSA 2048 because RS256 needs it. Private keys are written
0600. Must never: overwrite an existing CA or signing key, or write a key world-readable.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_FILE = "ca.pem"
CA_KEY_FILE = "ca-key.pem"
CERT_FILE = "server.pem"
KEY_FILE = "server-key.pem"
SIGNING_KEY_FILE = "signing-key.pem"
DEFAULT_NAMES = ("127.0.0.1", "::1", "localhost")


def _write(path: str, data: bytes, private: bool) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _pem_key(key: Any) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_key(path: str) -> Any:
    with open(path, "rb") as f:
        try:
            return serialization.load_pem_private_key(f.read(), password=None)
        except ValueError as e:
            raise ValueError("%s: not a PEM private key (%s); delete it to let the emulator make a new one"
                             % (path, e))


def load_or_create_signing_key(state_dir: str) -> rsa.RSAPrivateKey:
    path = os.path.join(state_dir, SIGNING_KEY_FILE)
    if os.path.exists(path):
        key = _load_key(path)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("%s: the signing key must be RSA (RS256); delete it to make a new one" % path)
        return key
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(path, _pem_key(key), private=True)
    return key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pass-agent emulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _san(names: tuple[str, ...]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return out


def load_or_create_tls(state_dir: str, extra_names: tuple[str, ...] = ()) -> dict[str, str]:
    """Make sure ca.pem exists and issue a fresh server certificate for the names; return the paths."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_path, ca_key_path = os.path.join(state_dir, CA_FILE), os.path.join(state_dir, CA_KEY_FILE)
    if os.path.exists(ca_path) and os.path.exists(ca_key_path):
        ca_key = _load_key(ca_key_path)
        with open(ca_path, "rb") as f:
            ca_cert = x509.load_pem_x509_certificate(f.read())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = _name("pass-agent emulator CA")
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name).issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        _write(ca_key_path, _pem_key(ca_key), private=True)
        _write(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    # The server certificate is cheap (P-256): issue a new one each start so its names always match.
    names = tuple(dict.fromkeys(DEFAULT_NAMES + tuple(n for n in extra_names if n and n not in ("0.0.0.0", "::"))))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(_san(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(state_dir, CERT_FILE), os.path.join(state_dir, KEY_FILE)
    _write(key_path, _pem_key(key), private=True)
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM), private=False)
    return {"ca_file": ca_path, "cert_file": cert_path, "key_file": key_path}
