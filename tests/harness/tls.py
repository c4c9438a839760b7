"""A self-signed certificate for a test node's address, made by the real openssl."""

from __future__ import annotations

import subprocess
from pathlib import Path


def self_signed(ip: str, directory: Path) -> tuple[str, str]:
    """(certificate PEM, key PEM) for `ip`, valid for two days; the files stay in `directory`."""
    key, cert = directory / "key.pem", directory / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={ip}",
                    "-addext", f"subjectAltName=IP:{ip}", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert.read_text(), key.read_text()
