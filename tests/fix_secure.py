"""A secured Apache Kafka for the tests, and the client settings of each of its listeners.

One broker for the session (`cdc.devservers.KafkaServer`) with every kind of
listener a managed cluster offers: ``SASL`` (SASL_PLAINTEXT, SCRAM-SHA-512),
``SSL`` (a test CA, a certificate for ``localhost`` only, so hostname
verification has something to refuse), ``SASL_SSL``, and ``MTLS`` (SSL that
requires a client certificate, whose key is encrypted). The SCRAM password
holds a comma and ``=``, as passwords do. Tests skip, saying why, on a
machine without Java, Maven or openssl.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cdc.devservers import Certificate, KafkaServer, KafkaUnavailable
from cdc.errors import ServerError

SCRAM_USER = "cdc"

#: The listeners and what a client must configure for each.
LISTENERS = ("SASL", "SSL", "SASL_SSL", "MTLS")


@dataclass
class SecureKafka:
    server: KafkaServer
    password: str  # SCRAM-SHA-512 password of SCRAM_USER
    client: Certificate  # for MTLS; its key is encrypted with client.key_password

    def bootstrap(self, listener: str) -> str:
        return self.server.bootstrap(listener)

    def config(self, listener: str) -> dict[str, str]:
        """The ``--kafka-config`` pairs (librdkafka / Java names) a client of ``listener`` needs."""
        security = self.server.client_security(listener)
        pairs = {"security.protocol": security.security_protocol}
        if security.ca_path is not None:
            pairs["ssl.ca.location"] = str(security.ca_path)
        if security.sasl_mechanism:
            pairs |= {
                "sasl.mechanism": security.sasl_mechanism,
                "sasl.username": SCRAM_USER,
                "sasl.password": self.password,
            }
        if listener == "MTLS":
            assert self.client.key_password is not None
            pairs |= {
                "ssl.certificate.location": str(self.client.cert_path),
                "ssl.key.location": str(self.client.key_path),
                "ssl.key.password": self.client.key_password,
            }
        return pairs

    @property
    def secrets(self) -> list[str]:
        """Every secret a client of this broker is given."""
        assert self.client.key_password is not None
        return [self.password, self.client.key_password]


def _set_scram_password(server: KafkaServer, user: str, password: str) -> None:
    """Through the admin API: the launcher's format-time users cannot have commas in passwords."""
    admin = AdminClient({"bootstrap.servers": server.bootstrap_servers})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    futures = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, password.encode())]
    )
    for future in futures.values():
        future.result(timeout=30)


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecureKafka]:
    try:
        server = KafkaServer.create(
            scram_users={SCRAM_USER: "initial-" + secrets.token_hex(4)}, tls=True, tls_client_auth=True
        )
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    error = ""
    try:
        server.start()
        password = f"s3c,r=t-{secrets.token_hex(6)}"
        _set_scram_password(server, SCRAM_USER, password)
        assert server.tls is not None and server.tls.ca is not None
        client = server.tls.ca.issue("client", client=True, key_password=f"k3y,p=w-{secrets.token_hex(6)}")
    except ServerError as exc:
        error = str(exc)
    if error:
        server.destroy()
        pytest.fail(error, pytrace=False)
    yield SecureKafka(server, password, client)
    server.destroy()
