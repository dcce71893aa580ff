"""Certificates for the local broker's TLS listener, made with openssl (test-time only).

A throwaway CA signs one broker certificate for 127.0.0.1 and localhost; the
broker reads it from a PKCS#12 keystore, clients trust the CA's PEM file.
Elliptic-curve keys: made in milliseconds.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # PEM: what a client passes as KAFKA_SSL_CAFILE
    keystore: Path  # PKCS#12: the broker's key and certificate chain
    keystore_password: str


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("'openssl' not found: install OpenSSL to make test certificates")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_ca(folder: Path, name: str = "ca") -> Path:
    """A self-signed CA (`<name>.pem`, `<name>.key`); returns the certificate's path."""
    folder.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", *KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", "7", "-subj", f"/CN=cameleer test {name}", cwd=folder,
    )  # fmt: skip
    return folder / f"{name}.pem"


def make_broker_certificates(folder: Path) -> Certificates:
    """A CA and a broker certificate it signed, valid for 127.0.0.1 and localhost."""
    ca = make_ca(folder)
    _openssl(
        "req", *KEY, "-keyout", "broker.key", "-out", "broker.csr", "-subj", "/CN=localhost",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", cwd=folder,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "broker.csr", "-CA", ca.name, "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "broker.pem", "-days", "7", "-copy_extensions", "copy",
        cwd=folder,
    )  # fmt: skip
    password = secrets.token_hex(12)
    _openssl(
        "pkcs12", "-export", "-in", "broker.pem", "-inkey", "broker.key", "-certfile", ca.name,
        "-name", "broker", "-out", "broker.p12", "-passout", f"pass:{password}", cwd=folder,
    )  # fmt: skip
    return Certificates(ca_file=ca, keystore=folder / "broker.p12", keystore_password=password)
