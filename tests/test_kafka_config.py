"""The Kafka client configuration and secrets, without servers.

Every way of giving the settings (flag, ``CDC_KAFKA_CONFIG``, ``[kafka]``,
a properties file, ``sasl.jaas.config``) ends in the same `ClientConfig`; both
client libraries get the same security from it; a bad setting is a
`ConfigError` naming the key and never a secret's value; values keep commas
and ``=``; secret values are redacted wherever text leaves the process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from cdc import config, redact
from cdc.config import Settings
from cdc.devservers import TestCA, TlsUnavailable
from cdc.errors import ConfigError
from cdc.kafka import ClientConfig, client_config
from cdc.kafka.clientconfig import SHARED, kafka_python_producer_settings
from cdc.pg import connect_error
from tests.support import cdc, error_line

PASSWORD = "p,a=ss word"  # a comma, an equals sign, a blank


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def scram(ca: Path, **extra: str) -> dict[str, str]:
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "cdc",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
        **extra,
    }


# -- every way in gives the same settings ----------------------------------------------------


def test_flag_environment_toml_and_file_agree(ca: Path, tmp_path: Path) -> None:
    pairs = scram(ca)
    from_flags = config.build({"kafka_config": [f"{k}={v}" for k, v in pairs.items()]}, environ={})
    escaped = ",".join(f"{k}={v}" for k, v in pairs.items())  # "p,a=ss word": its comma is no "key="
    from_env = config.build({}, environ={"CDC_KAFKA_CONFIG": escaped.replace("p,a=", "p\\,a=")})
    toml = tmp_path / "cdc.toml"
    toml.write_text(
        "[kafka]\n"
        'security.protocol = "SASL_SSL"\n'  # TOML's dotted keys are nested tables: flattened back
        'sasl.mechanism = "SCRAM-SHA-512"\n'
        'sasl.username = "cdc"\n'
        f'sasl.password = "{PASSWORD}"\n'
        f'"ssl.ca.location" = "{ca}"\n'
    )
    from_toml = config.build({}, toml, environ={})
    properties = tmp_path / "kafka.properties"
    properties.write_text(
        "# a librdkafka / Java client properties file\n"
        "security.protocol=SASL_SSL\n"
        "sasl.mechanism: SCRAM-SHA-512\n"
        "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\\n"
        f'    username="cdc" password="{PASSWORD}";\n'
        f"ssl.ca.location={ca}\n"
    )
    from_file = config.build({"kafka_config_file": str(properties)}, environ={})
    expected = ClientConfig("localhost:9092", pairs)
    for settings in (from_flags, from_env, from_toml, from_file):
        assert client_config(settings).options == expected.options


def test_the_flag_wins_over_the_file(ca: Path, tmp_path: Path) -> None:
    properties = tmp_path / "kafka.properties"
    properties.write_text("security.protocol=SSL\nrequest.timeout.ms=1000\n")
    settings = config.build(
        {"kafka_config_file": str(properties), "kafka_config": ["request.timeout.ms=2000"]}, environ={}
    )
    assert client_config(settings).options == {"security.protocol": "SSL", "request.timeout.ms": "2000"}


def test_commas_in_environment_values() -> None:
    pairs = config.build({}, environ={"CDC_TOPIC_CONFIG": "cleanup.policy=compact,delete,a=1"}).topic_configs
    assert pairs == {"cleanup.policy": "compact,delete", "a": "1"}
    escaped = config.build({}, environ={"CDC_KAFKA_CONFIG": r"sasl.password=x\,y=z,client.id=c"})
    assert escaped.kafka_config == {"sasl.password": "x,y=z", "client.id": "c"}


def test_properties_syntax() -> None:
    text = (
        "! comment\n  # comment\n\n"
        "a = 1\nb:2\nc 3\n"
        "d=x\\\\y\n"  # an escaped backslash
        "e=\\u00e9t\\u00e9\n"
        "f=one \\\n   two\n"
        "key\\=with\\:separators=v=w\n"
        "empty=\n"
    )
    assert config.parse_properties(text) == {
        "a": "1", "b": "2", "c": "3", "d": "x\\y", "e": "été", "f": "one two",
        "key=with:separators": "v=w", "empty": "",
    }  # fmt: skip


# -- both client libraries get the same security ----------------------------------------------


def test_both_libraries_get_every_shared_setting(ca: Path, tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "c.key"
    cert.write_text("x")
    key.write_text("x")
    client = ClientConfig(
        "a:1,b:2",
        scram(
            ca,
            **{
                "ssl.certificate.location": str(cert),
                "ssl.key.location": str(key),
                "ssl.key.password": "kp",
                "ssl.endpoint.identification.algorithm": "https",
                "request.timeout.ms": "5000",
            },
        ),
    )
    librdkafka = client.confluent()
    python = client.kafka_python()
    assert librdkafka["bootstrap.servers"] == "a:1,b:2" and python["bootstrap_servers"] == ["a:1", "b:2"]
    for key_name, value in client.options.items():
        assert librdkafka[key_name] == value
        assert SHARED[key_name].kafka_python in python
    assert python["sasl_plain_password"] == PASSWORD and python["ssl_password"] == "kp"
    assert python["ssl_cafile"] == str(ca) and python["ssl_check_hostname"] is True
    assert python["request_timeout_ms"] == 5000
    unchecked = ClientConfig("a:1", {**scram(ca), "ssl.endpoint.identification.algorithm": ""})
    assert unchecked.confluent()["ssl.endpoint.identification.algorithm"] == "none"
    assert unchecked.kafka_python()["ssl_check_hostname"] is False


def test_kafka_python_and_librdkafka_accept_the_mapped_settings(tmp_path: Path) -> None:
    """The mapped keyword arguments are ones kafka-python's three clients know, and librdkafka takes
    every shared key: a new key in SHARED that either library lacks fails here."""
    from confluent_kafka.admin import AdminClient
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient

    try:
        ca = TestCA.create(tmp_path).cert_path  # librdkafka reads it at once
    except TlsUnavailable as exc:
        pytest.skip(str(exc))

    for name, spec in SHARED.items():
        if spec.kafka_python:
            for client in (KafkaProducer, KafkaConsumer, KafkaAdminClient):
                assert spec.kafka_python in client.DEFAULT_CONFIG, (name, client)
    settings = {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
        "sasl.password": "p", "sasl.kerberos.service.name": "kafka", "ssl.ca.location": str(ca),
        "ssl.endpoint.identification.algorithm": "https",
        "client.id": "c", "request.timeout.ms": "1", "metadata.max.age.ms": "1",
        "connections.max.idle.ms": "1", "reconnect.backoff.ms": "1", "reconnect.backoff.max.ms": "1",
        "retry.backoff.ms": "1", "socket.send.buffer.bytes": "0", "socket.receive.buffer.bytes": "0",
    }  # fmt: skip
    untested = set(SHARED) - set(settings) - {
        "ssl.certificate.location", "ssl.key.location", "ssl.key.password", "ssl.crl.location",
    }  # fmt: skip
    assert all(k.startswith("sasl.oauthbearer.") for k in untested), untested
    AdminClient({"bootstrap.servers": "localhost:1", **settings})  # raises on an unknown property


def test_jaas_logins(ca: Path) -> None:
    plain = ClientConfig(
        "a:1",
        {
            "security.protocol": "SASL_SSL",
            "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule required "
            'username="key" password="se\\"cret;=,";',
        },
    )
    assert plain.options == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "key",
        "sasl.password": 'se"cret;=,',
    }
    oauth = ClientConfig(
        "a:1",
        {
            "security.protocol": "SASL_SSL",
            "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
            "sasl.jaas.config": "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
            'required clientId="id" clientSecret="oauth-secret" scope="kafka";',
        },
    )
    assert oauth.options["sasl.oauthbearer.client.secret"] == "oauth-secret"
    assert oauth.options["sasl.oauthbearer.method"] == "oidc"
    assert type(oauth.kafka_python()["sasl_oauth_token_provider"]).__name__ == "OidcTokenProvider"


# -- bad settings: the key named, never the value --------------------------------------------------

SASL_SSL = {"security.protocol": "SASL_SSL"}
BAD: list[tuple[dict[str, str], str]] = [
    ({"sasl.pasword": PASSWORD}, "unknown kafka setting 'sasl.pasword'"),
    ({"linger.ms": "5"}, "producer-only settings go in --producer-config"),
    ({**SASL_SSL, "sasl.username": "u", "sasl.password": PASSWORD}, "sasl.mechanism is missing"),
    ({**SASL_SSL, "sasl.mechanism": "SCRAM-SHA-512", "sasl.password": PASSWORD}, "sasl.username is missing"),
    ({"sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": PASSWORD},
     "security.protocol is PLAINTEXT: set security.protocol=SASL_SSL"),
    ({"security.protocol": "SASL", "sasl.password": PASSWORD}, "expected one of PLAINTEXT, SSL"),
    ({"security.protocol": "SSL", "ssl.ca.location": "/nonexistent/ca.pem"},
     "file /nonexistent/ca.pem does not exist"),
    ({"security.protocol": "SSL", "ssl.keystore.location": "k.p12", "ssl.keystore.password": PASSWORD},
     "not supported: Python clients read PEM files"),
    ({"security.protocol": "SSL", "ssl.key.location": "/k.pem", "ssl.key.password": PASSWORD}, "go together"),
    ({**SASL_SSL, "sasl.jaas.config": f'com.example.Login required password="{PASSWORD}";'},
     "login module com.example.Login is not one cdc can use"),
    ({"request.timeout.ms": "soon"}, "expected a number of milliseconds"),
    ({"bootstrap.servers": "x:1"}, "give the brokers with --bootstrap-servers"),
]  # fmt: skip


@pytest.mark.parametrize(("pairs", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_setting_names_the_key(pairs: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as error:
        ClientConfig("a:1", pairs)
    assert message in str(error.value)
    assert PASSWORD not in str(error.value)


def test_producer_only_settings() -> None:
    assert kafka_python_producer_settings({"linger.ms": "7", "compression_type": "gzip"}) == {
        "linger_ms": 7,
        "compression_type": "gzip",
    }
    with pytest.raises(ConfigError, match="unknown kafka-python producer setting 'sasl_pasword'") as error:
        kafka_python_producer_settings({"sasl_pasword": PASSWORD})
    assert PASSWORD not in str(error.value)


@pytest.mark.parametrize("variable", ["CDC_PRODUCER_CONFIGS", "CDC_PRODUCER_CONFIG", "CDC_KAFKA_CONFIG"])
def test_a_malformed_secret_pair_is_not_printed(variable: str, tmp_path: Path) -> None:
    """The issue's case: a password split at its comma used to be printed as the bad pair."""
    secret = "hunter2secret"
    proc = cdc("start", "--state-dir", str(tmp_path), env={variable: f"{secret},sasl.username=u"})
    line = error_line(proc)
    assert variable in line and "is not key=value" in line and "***" in line
    assert secret not in proc.stdout + proc.stderr


# -- the dsn on disk --------------------------------------------------------------------------------


def test_dsn_file(tmp_path: Path) -> None:
    path = tmp_path / "dsn"
    path.write_text("host=db dbname=shop password='se,cr=et'\n")
    path.chmod(0o600)
    settings = config.build({}, environ={"CDC_DSN_FILE": str(path)})
    assert settings.dsn == ""  # read where it is needed: `cdc status` never opens it
    config.require_dsn(settings, environ={})
    assert settings.dsn == "host=db dbname=shop password='se,cr=et'"
    assert "se,cr=et" not in repr(settings) and "se,cr=et" not in redact.redact(settings.dsn)


def test_dsn_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="both dsn and dsn_file are given"):
        config.build({"dsn": "host=a", "dsn_file": str(tmp_path / "x")}, environ={})
    missing = config.build({"dsn_file": str(tmp_path / "missing")}, environ={})
    with pytest.raises(ConfigError, match=r"dsn_file .*missing does not exist: fix --dsn-file"):
        config.require_dsn(missing, environ={})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        config.require_dsn(config.build({"dsn_file": str(tmp_path / "empty")}, environ={}), environ={})


# -- redaction ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "password"),
    [
        ("host=db password=simple", "simple"),
        ("host=db password = 'with space\\'s' user=x", "with space's"),
        ("password=a\\ b host=db", "a b"),
        ("postgresql://u:p%40ss%2Cw@db/shop", "p@ss,w"),
        ("postgres://db/shop?user=u&password=q%3Dw", "q=w"),
        ("host=db", None),
    ],
)
def test_dsn_password(dsn: str, password: str | None) -> None:
    assert redact.dsn_password(dsn) == password


def test_secret_keys() -> None:
    secret = [
        "password", "sasl.password", "ssl.key.password", "sasl.jaas.config",
        "sasl.oauthbearer.client.secret", "ssl.keystore.password", "ssl.truststore.password",
        "ssl.key.pem", "sasl_plain_password", "ssl_password",
    ]  # fmt: skip
    plain = ["sasl.username", "ssl.ca.location", "ssl.key.location", "security.protocol", "linger.ms"]
    assert all(redact.is_secret_key(k) for k in secret)
    assert not any(redact.is_secret_key(k) for k in plain)


def test_settings_and_client_config_show_no_secret(ca: Path) -> None:
    settings = Settings(
        dsn="host=db password=dsn-secret",
        kafka_config=scram(ca),
        producer_configs={"sasl.password": "producer-secret", "linger.ms": "5"},
    )
    shown = repr(settings)
    for secret in ("dsn-secret", PASSWORD, "producer-secret"):
        assert secret not in shown
    assert "'linger.ms': '5'" in shown and "'sasl.username': 'cdc'" in shown
    assert PASSWORD not in repr(ClientConfig("a:1", scram(ca)))


def test_log_lines_and_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    redact.remember("a-logged-secret")
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    logger = logging.getLogger("tests.redact")
    logger.addHandler(handler)
    handler.addFilter(redact.RedactingFilter())
    try:
        logger.warning("login with %s failed", "a-logged-secret")
        try:
            raise ValueError("bad a-logged-secret")
        except ValueError:
            logger.exception("oops")
    finally:
        logger.removeHandler(handler)
    assert records and all("a-logged-secret" not in text for text in records)
    assert "login with *** failed" in records[0] and "ValueError: bad ***" in records[1]


def test_redact_tree() -> None:
    redact.remember("tree-secret")
    tree: dict[str, Any] = {"last_error": "x tree-secret y", "n": 1, "list": ["tree-secret"]}
    assert redact.redact_tree(tree) == {"last_error": "x *** y", "n": 1, "list": ["***"]}


def test_short_values_are_not_remembered() -> None:
    redact.remember("kafka")  # a password that is a common word would hide it everywhere
    assert redact.redact("kafka at b:9092 refused the login") == "kafka at b:9092 refused the login"


# -- Postgres: the attempt that reached the server ----------------------------------------------


def test_a_refused_address_does_not_hide_the_real_cause() -> None:
    message = (
        'connection failed: connection to server at "localhost" (::1), port 5432 failed: Connection refused\n'
        "\tIs the server running on that host and accepting TCP/IP connections?\n"
        'connection to server at "localhost" (127.0.0.1), port 5432 failed: '
        "SSL error: certificate verify failed"
    )
    error = connect_error(Exception(message), "host=localhost sslmode=verify-full")
    assert "certificate verify failed" in str(error) and "sslrootcert" in str(error)
    assert type(error).__name__ == "SourceError"  # a setting to fix: not retried
