"""A throwaway certificate authority for the test servers (Kafka, Postgres) and their clients.

Made with the ``openssl`` command: a CA, then server certificates for the
names a client will verify, and client certificates (optionally with an
encrypted key) for listeners that require one. Nothing here is fit for
production: the keys are small-lived, unprotected files in a temp dir.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cdc.errors import ServerError


class TlsUnavailable(ServerError):
    """No ``openssl`` command on this machine: nothing in the project is wrong."""


@dataclass(frozen=True, slots=True)
class Certificate:
    """A certificate and its key (PEM files); ``key_password`` when the key is encrypted."""

    cert_path: Path
    key_path: Path
    key_password: str | None = None


def _openssl(directory: Path, *args: object) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise TlsUnavailable("no openssl on the PATH to make TLS certificates: apt-get install openssl")
    proc = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True, timeout=60, check=False)
    if proc.returncode != 0:
        raise ServerError(
            f"openssl {args[0]} failed making the test certificates in {directory}: "
            f"{proc.stderr.strip().splitlines()[-1:]}"
        )


@dataclass(frozen=True, slots=True)
class TestCA:
    """A CA in ``directory`` (``ca.pem``, ``ca.key``) that issues certificates next to it."""

    directory: Path
    cert_path: Path
    key_path: Path

    __test__ = False  # not a test class

    @classmethod
    def create(cls, directory: Path, name: str = "cdc test CA") -> TestCA:
        """A new CA. Raises `TlsUnavailable` without openssl, `ServerError` when it fails."""
        directory.mkdir(parents=True, exist_ok=True)
        ca = cls(directory, directory / "ca.pem", directory / "ca.key")
        _openssl(
            directory, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca.key_path,
            "-out", ca.cert_path, "-days", "30", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        )  # fmt: skip
        ca.key_path.chmod(0o600)
        return ca

    def issue(
        self,
        name: str,
        hostnames: Sequence[str] = (),
        *,
        client: bool = False,
        key_password: str | None = None,
    ) -> Certificate:
        """A certificate for ``name`` (its subject CN) signed by this CA, as ``<name>.pem`` and
        ``<name>.key``. ``hostnames`` become its DNS (or IP) names: what a client verifying the
        server's name checks. ``client`` makes it a client certificate; ``key_password``
        encrypts its key (AES-256)."""
        base = self.directory / name
        key, csr, cert, ext = (base.with_suffix(s) for s in (".key", ".csr", ".pem", ".ext"))
        names = [f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hostnames]
        usage = "clientAuth" if client else "serverAuth"
        lines = ["basicConstraints=CA:FALSE", "keyUsage=digitalSignature,keyEncipherment"]
        lines.append(f"extendedKeyUsage={usage}")
        if names:
            lines.append(f"subjectAltName={','.join(names)}")
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            self.directory,
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            f"/CN={name}",
        )
        _openssl(
            self.directory, "x509", "-req", "-in", csr, "-CA", self.cert_path, "-CAkey", self.key_path,
            "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", ext,
        )  # fmt: skip
        if key_password is not None:
            plain = key.with_suffix(".plain.key")
            key.rename(plain)
            _openssl(
                self.directory,
                "pkey",
                "-in",
                plain,
                "-out",
                key,
                "-aes256",
                "-passout",
                f"pass:{key_password}",
            )
            plain.unlink()
        key.chmod(0o600)
        csr.unlink()
        return Certificate(cert, key, key_password)

    def keystore(self, certificate: Certificate, alias: str) -> tuple[Path, str]:
        """``certificate`` with its chain as a PKCS#12 keystore (for a Java server): path, password."""
        password = secrets.token_hex(12)
        keystore = certificate.cert_path.with_suffix(".p12")
        _openssl(
            self.directory, "pkcs12", "-export", "-in", certificate.cert_path, "-inkey", certificate.key_path,
            "-certfile", self.cert_path, "-name", alias, "-out", keystore, "-passout", f"pass:{password}",
            *(("-passin", f"pass:{certificate.key_password}") if certificate.key_password else ()),
        )  # fmt: skip
        keystore.chmod(0o600)
        return keystore, password
