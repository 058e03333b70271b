"""A secured Apache Kafka for the tests, and the client settings of each of its listeners.

One broker for the session (`cdc.devservers.KafkaServer`) with every kind of
listener a managed cluster offers: ``SASL`` (SASL_PLAINTEXT, SCRAM-SHA-512),
``SSL`` (a test CA, a certificate for ``localhost`` only, so hostname
verification has something to refuse), ``SASL_SSL``, ``MTLS`` (SSL that
requires a client certificate, whose key is encrypted), and ``OAUTH``
(SASL_PLAINTEXT, OAUTHBEARER with tokens from an OIDC token endpoint served
here: client credentials in, an unsigned JWT out, which the broker's default,
unsecured validator accepts). The SCRAM password, the key's password and the
OAuth client secret hold a comma and ``=``, as passwords do. Tests skip, saying
why, on a machine without Java, Maven or openssl.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from cdc.devservers import Certificate, KafkaServer, KafkaUnavailable, Listener
from cdc.errors import ServerError

SCRAM_USER = "cdc"
OAUTH_CLIENT = "cdc-client"

#: The listeners and what a client must configure for each.
LISTENERS = ("SASL", "SSL", "SASL_SSL", "MTLS", "OAUTH")

OAUTH_LISTENER = Listener(
    "OAUTH",
    "SASL_PLAINTEXT",
    {
        "sasl.enabled.mechanisms": "OAUTHBEARER",
        "oauthbearer.sasl.jaas.config": (
            "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;"
        ),
    },
)


class TokenEndpoint:
    """An OIDC token endpoint for one client: HTTP basic login, an unsigned JWT for ``sub`` cdc."""

    def __init__(self, client_id: str, client_secret: str) -> None:
        expected = "Basic " + base64.b64encode(f"{client_id}:{client_secret}".encode()).decode()
        self.requests = 0

        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                endpoint.requests += 1
                if self.headers.get("Authorization") != expected:
                    self._answer(401, {"error": "invalid_client"})
                    return
                now = int(time.time())
                claims = {"sub": SCRAM_USER, "iat": now, "exp": now + 3600, "scope": "kafka"}
                token = f"{_segment({'alg': 'none'})}.{_segment(claims)}."
                self._answer(200, {"access_token": token, "token_type": "bearer", "expires_in": 3600})

            def _answer(self, status: int, body: dict[str, object]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}/token"
        self.thread = threading.Thread(target=self.http.serve_forever, name="token-endpoint", daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()


def _segment(value: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@dataclass
class SecureKafka:
    server: KafkaServer
    password: str  # SCRAM-SHA-512 password of SCRAM_USER
    client: Certificate  # for MTLS; its key is encrypted with client.key_password
    oauth_secret: str
    tokens: TokenEndpoint

    def bootstrap(self, listener: str) -> str:
        return self.server.bootstrap(listener)

    def config(self, listener: str) -> dict[str, str]:
        """The ``--kafka-config`` pairs (librdkafka / Java names) a client of ``listener`` needs."""
        if listener == "OAUTH":
            return {
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "OAUTHBEARER",
                "sasl.oauthbearer.method": "oidc",
                "sasl.oauthbearer.client.id": OAUTH_CLIENT,
                "sasl.oauthbearer.client.secret": self.oauth_secret,
                "sasl.oauthbearer.token.endpoint.url": self.tokens.url,
                "sasl.oauthbearer.scope": "kafka",
            }
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
        return [self.password, self.client.key_password, self.oauth_secret]


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
            scram_users={SCRAM_USER: "initial-" + secrets.token_hex(4)},
            tls=True,
            tls_client_auth=True,
            listeners=[OAUTH_LISTENER],
        )
    except KafkaUnavailable as exc:
        pytest.skip(f"no Apache Kafka on this machine: {exc}")
    oauth_secret = f"oa,u=th-{secrets.token_hex(6)}"
    tokens = TokenEndpoint(OAUTH_CLIENT, oauth_secret)
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
        tokens.close()
        pytest.fail(error, pytrace=False)
    yield SecureKafka(server, password, client, oauth_secret, tokens)
    server.destroy()
    tokens.close()
