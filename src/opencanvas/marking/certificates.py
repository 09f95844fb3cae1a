"""Signing credentials for C2PA: load and check a user's certificate and key, or make a local test pair.

C2PA (and c2pa-rs) refuse a self-signed signing certificate, so the test pair is a tiny chain: a
throwaway CA and a leaf with digitalSignature + emailProtection, the profile the C2PA spec asks of a
claim signer. It verifies as "valid, signer not on a trust list", which is what a local key can be.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from opencanvas.storage import atomic_write_bytes


@dataclass(frozen=True)
class SigningCredentials:
    """A checked certificate chain (leaf first, PEM) and its private key (PEM), with the C2PA algorithm."""

    cert_chain_pem: bytes
    private_key_pem: bytes
    alg: str  # c2pa-rs name: es256, es384, es512, ps256, ed25519
    signer: str  # the leaf's subject, for messages


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def load_credentials(cert_path: Path, key_path: Path) -> SigningCredentials:
    """Read and check a PEM certificate chain and key; ValueError with what to do when they cannot sign."""
    cert_path, key_path = Path(cert_path), Path(key_path)
    for what, path in (("certificate", cert_path), ("key", key_path)):
        if not path.is_file():
            raise ValueError(f"C2PA {what} {path} not found: pass --c2pa-cert/--c2pa-key, or make a local pair "
                             "with `opencanvas c2pa make-test-cert`")
    chain_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
    try:
        chain = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise ValueError(f"C2PA certificate {cert_path} is not a PEM certificate (chain): give the PEM file "
                         "that starts with -----BEGIN CERTIFICATE-----") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValueError(f"C2PA key {key_path} is not an unencrypted PEM private key: export it with "
                         "`openssl pkcs8 -topk8 -nocrypt`") from None
    leaf, now = chain[0], _utc_now()
    if leaf.not_valid_after_utc < now:
        raise ValueError(f"C2PA certificate {cert_path} expired on {leaf.not_valid_after_utc:%Y-%m-%d}: "
                         "renew it (or make a local one with `opencanvas c2pa make-test-cert`)")
    if leaf.not_valid_before_utc > now:
        raise ValueError(f"C2PA certificate {cert_path} is not valid before {leaf.not_valid_before_utc:%Y-%m-%d}")
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    if (key.public_key().public_bytes(serialization.Encoding.DER, pub)
            != leaf.public_key().public_bytes(serialization.Encoding.DER, pub)):
        raise ValueError(f"C2PA key {key_path} does not match the certificate {cert_path}: give the key the "
                         "certificate was issued for")
    return SigningCredentials(chain_pem, key_pem, _algorithm(key, key_path), leaf.subject.rfc4514_string())


def _algorithm(key: object, key_path: Path) -> str:
    if isinstance(key, ec.EllipticCurvePrivateKey):
        curves = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}
        if key.curve.name in curves:
            return curves[key.curve.name]
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        return "ps256"
    raise ValueError(f"C2PA key {key_path} has a type C2PA cannot sign with: use EC P-256/384/521, Ed25519 or RSA")


def make_test_cert(out_dir: Path, name: str = "OpenCanvas local test signer",
                   days: int = 365, start: dt.datetime | None = None) -> tuple[Path, Path]:
    """Write `c2pa-cert.pem` (leaf + CA) and `c2pa-key.pem` to `out_dir`, valid `days` from `start` (default
    now); for local use, not on any trust list."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    now = start or _utc_now()
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    leaf_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name),
                           x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenCanvas (local test)")])
    usage = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
                 encipher_only=False, decipher_only=False)

    def base(subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public_key)
                .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False))

    ca = (base(ca_name, ca_key.public_key())
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **usage),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (base(leaf_name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
                           critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = out_dir / "c2pa-cert.pem", out_dir / "c2pa-key.pem"
    pem = serialization.Encoding.PEM
    atomic_write_bytes(cert_path, leaf.public_bytes(pem) + ca.public_bytes(pem))
    atomic_write_bytes(key_path, key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                   serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path
