"""One Kafka client configuration for every client the process makes.

Users write the settings of a secured cluster once, with the names librdkafka
and the Java client share (``security.protocol``, ``sasl.mechanism``,
``sasl.username``, ``ssl.ca.location``, ...): ``--kafka-config KEY=VALUE``, the
``[kafka]`` table of the config file, or a properties file
(``--kafka-config-file``). `ClientConfig` checks them once and gives each client
library its own spelling: `ClientConfig.confluent` for librdkafka (the
confluent producer and its admin client), `ClientConfig.kafka_python` for
kafka-python (its producer and admin client, the topic and schema-topic
readers). Both get the same security, so both producers connect the same way.

A new Kafka client takes a `ClientConfig` (`client_config(settings)` makes it)
and adds only its own role's settings on top; it never reads ``settings``'
Kafka fields itself.

Only keys every client understands are accepted here; a producer-only setting
(``linger.ms``) belongs in ``--producer-config``. An unknown key, a value of the
wrong kind or a missing companion (SASL without a mechanism) is a
`ConfigError` naming the key, never a secret's value.
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from cdc import redact
from cdc.config import KafkaSettings, kafka_pairs
from cdc.errors import ConfigError, SinkError

PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI")

_WHERE = "--kafka-config"


def _text(key: str, value: str) -> str:
    return value


def _milliseconds(key: str, value: str) -> int:
    if not value.strip().isdigit():
        raise ConfigError(f"kafka setting {key} = {value!r} ({_WHERE}): expected a number of milliseconds")
    return int(value)


def _bytes(key: str, value: str) -> int:
    if not value.strip().lstrip("-").isdigit():
        raise ConfigError(f"kafka setting {key} = {value!r} ({_WHERE}): expected a number of bytes")
    return int(value)


def _file(key: str, value: str) -> str:
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"kafka setting {key}: file {value} does not exist ({_WHERE})")
    return str(path)


def _hostname_check(key: str, value: str) -> bool:
    return value == "https"


@dataclass(frozen=True, slots=True)
class _Key:
    """A setting every client gets: kafka-python's name for it and how its value converts."""

    kafka_python: str
    convert: Callable[[str, str], Any] = _text


#: The settings passed to every client, by their librdkafka / Java name.
SHARED: Final[dict[str, _Key]] = {
    "security.protocol": _Key("security_protocol"),
    "sasl.mechanism": _Key("sasl_mechanism"),
    "sasl.username": _Key("sasl_plain_username"),
    "sasl.password": _Key("sasl_plain_password"),
    "sasl.kerberos.service.name": _Key("sasl_kerberos_service_name"),
    # OAUTHBEARER with an OIDC token endpoint (client credentials): librdkafka fetches the token
    # itself; kafka-python gets a token provider made from these (`_oidc_provider`)
    "sasl.oauthbearer.method": _Key(""),
    "sasl.oauthbearer.client.id": _Key(""),
    "sasl.oauthbearer.client.secret": _Key(""),
    "sasl.oauthbearer.token.endpoint.url": _Key(""),
    "sasl.oauthbearer.scope": _Key(""),
    "ssl.ca.location": _Key("ssl_cafile", _file),
    "ssl.certificate.location": _Key("ssl_certfile", _file),
    "ssl.key.location": _Key("ssl_keyfile", _file),
    "ssl.key.password": _Key("ssl_password"),
    "ssl.crl.location": _Key("ssl_crlfile", _file),
    "ssl.endpoint.identification.algorithm": _Key("ssl_check_hostname", _hostname_check),
    "client.id": _Key("client_id"),
    "request.timeout.ms": _Key("request_timeout_ms", _milliseconds),
    "metadata.max.age.ms": _Key("metadata_max_age_ms", _milliseconds),
    "connections.max.idle.ms": _Key("connections_max_idle_ms", _milliseconds),
    "reconnect.backoff.ms": _Key("reconnect_backoff_ms", _milliseconds),
    "reconnect.backoff.max.ms": _Key("reconnect_backoff_max_ms", _milliseconds),
    "retry.backoff.ms": _Key("retry_backoff_ms", _milliseconds),
    "socket.send.buffer.bytes": _Key("send_buffer_bytes", _bytes),
    "socket.receive.buffer.bytes": _Key("receive_buffer_bytes", _bytes),
}

#: Other spellings of a shared key (librdkafka's plural, which it also reads as the singular).
ALIASES: Final = {"sasl.mechanisms": "sasl.mechanism"}

_PEM_FILES = (
    "Python clients read PEM files: convert the store (openssl pkcs12 -in STORE -nokeys -out cert.pem; "
    "-nocerts -out key.pem) and set ssl.certificate.location and ssl.key.location"
)
_PEM_CA = (
    "Python clients read a PEM CA file: export it (keytool -exportcert -rfc -keystore STORE) "
    "and set ssl.ca.location"
)
_PEM_TEXT = "kafka-python reads PEM files, not PEM text: write it to a file and set the .location key"

#: Java or librdkafka settings cdc cannot pass on to both client libraries, and what to do instead.
UNSUPPORTED: Final = {
    "ssl.truststore.location": _PEM_CA,
    "ssl.truststore.password": _PEM_CA,
    "ssl.keystore.location": _PEM_FILES,
    "ssl.keystore.password": _PEM_FILES,
    "ssl.keystore.type": _PEM_FILES,
    "ssl.ca.pem": _PEM_TEXT,
    "ssl.certificate.pem": _PEM_TEXT,
    "ssl.key.pem": _PEM_TEXT,
    "sasl.login.callback.handler.class": (
        "Java classes cannot be loaded: for OAuth set sasl.oauthbearer.method=oidc and "
        "sasl.oauthbearer.client.id, .client.secret and .token.endpoint.url"
    ),
    "bootstrap.servers": "give the brokers with --bootstrap-servers",
}

#: What a Kafka setting's name looks like: lowercase words joined by dots.
_SETTING_NAME = re.compile(r"[a-z][a-z0-9_-]*(\.[a-z0-9_-]+)+")

_JAAS = re.compile(r"\s*([\w.$]+)\s+(?:required|requisite|sufficient|optional)\s*(.*?)\s*;?\s*", re.S)
_JAAS_OPTION = re.compile(r'\s*(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]+))')

#: JAAS login modules -> the mechanism they imply (None: SCRAM, whose hash the JAAS line does not name)
_LOGIN_MODULES: Final[dict[str, str | None]] = {
    "org.apache.kafka.common.security.plain.PlainLoginModule": "PLAIN",
    "org.apache.kafka.common.security.scram.ScramLoginModule": None,
    "org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule": "OAUTHBEARER",
}
#: JAAS options -> the shared keys they stand for
_JAAS_KEYS: Final = {
    "username": "sasl.username",
    "password": "sasl.password",
    "clientId": "sasl.oauthbearer.client.id",
    "clientSecret": "sasl.oauthbearer.client.secret",
    "scope": "sasl.oauthbearer.scope",
}


def _from_jaas(text: str) -> dict[str, str]:
    """The shared keys a ``sasl.jaas.config`` line stands for (Java's way of giving a login)."""
    match = _JAAS.fullmatch(text)
    if match is None or match.group(1) not in _LOGIN_MODULES:
        module = match.group(1) if match else "?"
        raise ConfigError(
            f"kafka setting sasl.jaas.config: login module {module} is not one cdc can use "
            f"(PlainLoginModule, ScramLoginModule, OAuthBearerLoginModule); "
            "or give sasl.username and sasl.password"
        )
    module, rest = match.groups()
    found: dict[str, str] = {}
    position = 0
    while option := _JAAS_OPTION.match(rest, position):
        position = option.end()
        name, quoted, bare = option.groups()
        value = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        if name in _JAAS_KEYS:
            found[_JAAS_KEYS[name]] = value
    if rest[position:].strip():
        raise ConfigError(
            'kafka setting sasl.jaas.config: cannot read its options (write them as name="value")'
        )
    mechanism = _LOGIN_MODULES[module]
    if mechanism is not None:
        found["sasl.mechanism"] = mechanism
    if mechanism == "OAUTHBEARER":
        found["sasl.oauthbearer.method"] = "oidc"
    return found


def normalize(pairs: Mapping[str, str]) -> dict[str, str]:
    """The settings as `ClientConfig` keeps them: shared names only, checked. Raises `ConfigError`."""
    given: dict[str, str] = {}
    for raw_key, value in pairs.items():
        key = ALIASES.get(raw_key.strip(), raw_key.strip())
        if key in given and given[key] != value:
            raise ConfigError(f"kafka settings {key} and its other spelling are both given: keep one")
        given[key] = value
    if "sasl.jaas.config" in given:
        for key, value in _from_jaas(given.pop("sasl.jaas.config")).items():
            if given.setdefault(key, value) != value:
                raise ConfigError(
                    f"kafka setting {key} is given both alone and in sasl.jaas.config: keep one"
                )
    if given.pop("ssl.truststore.type", "PEM").upper() == "PEM" and "ssl.truststore.location" in given:
        # Java reads PEM trust stores too: that is a CA file
        given.setdefault("ssl.ca.location", given.pop("ssl.truststore.location"))
    for key in given:
        if key in UNSUPPORTED:
            raise ConfigError(f"kafka setting {key} is not supported: {UNSUPPORTED[key]}")
        if key not in SHARED:
            if not _SETTING_NAME.fullmatch(key):
                # "sasl.password=ab,c=d" in CDC_KAFKA_CONFIG splits into sasl.password=ab and c=d:
                # such a "key" is a piece of a value, maybe of a secret, and is not shown
                raise ConfigError(
                    f"an unknown kafka setting (not shown: it is no dotted name, so it may be part of a "
                    f"value): in CDC_KAFKA_CONFIG write a comma inside a value as \\, or use {_WHERE} "
                    "once per pair or --kafka-config-file"
                )
            raise ConfigError(
                f"unknown kafka setting {key!r}: {_WHERE} takes what every client understands "
                "(security.protocol, sasl.*, ssl.*, timeouts: see README 'Secured clusters'); "
                "producer-only settings go in --producer-config"
            )
    _check(given)
    return given


def _check(options: dict[str, str]) -> None:
    """Values of a fixed set, and the settings that need each other."""
    protocol = options.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise ConfigError(
            f"kafka setting security.protocol = {protocol!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    if "security.protocol" in options:
        options["security.protocol"] = protocol
    sasl = sorted(k for k in options if k.startswith("sasl."))
    if sasl and not protocol.startswith("SASL_"):
        raise ConfigError(
            f"kafka setting {sasl[0]} is given but security.protocol is {protocol}: "
            "set security.protocol=SASL_SSL (or SASL_PLAINTEXT)"
        )
    tls = sorted(k for k in options if k.startswith("ssl."))
    if tls and not protocol.endswith("SSL"):
        raise ConfigError(
            f"kafka setting {tls[0]} is given but security.protocol is {protocol}: "
            "set security.protocol=SSL (or SASL_SSL)"
        )
    if "ssl.endpoint.identification.algorithm" in options:
        algorithm = options["ssl.endpoint.identification.algorithm"].strip().lower() or "none"
        if algorithm not in ("https", "none"):
            raise ConfigError(
                f"kafka setting ssl.endpoint.identification.algorithm = {algorithm!r}: "
                "expected https (check the broker's name, the default) or none"
            )
        options["ssl.endpoint.identification.algorithm"] = algorithm
    if ("ssl.certificate.location" in options) != ("ssl.key.location" in options):
        raise ConfigError(
            "kafka settings ssl.certificate.location and ssl.key.location go together (a client certificate "
            "and its key): give both"
        )
    for key, spec in SHARED.items():
        if key in options and spec.convert is _file:
            options[key] = _file(key, options[key])  # librdkafka does not expand ~
        elif key in options and spec.convert is not _text:
            spec.convert(key, options[key])  # raises on a bad value
    if protocol.startswith("SASL_"):
        _check_sasl(options)


def _check_sasl(options: dict[str, str]) -> None:
    mechanism = options.get("sasl.mechanism", "").upper()
    if not mechanism:
        raise ConfigError(
            f"kafka setting sasl.mechanism is missing for security.protocol "
            f"{options['security.protocol']}: one of {', '.join(MECHANISMS)}"
        )
    if mechanism not in MECHANISMS:
        raise ConfigError(
            f"kafka setting sasl.mechanism = {mechanism!r}: expected one of {', '.join(MECHANISMS)}"
        )
    options["sasl.mechanism"] = mechanism
    if mechanism in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"):
        missing = [k for k in ("sasl.username", "sasl.password") if not options.get(k)]
        if missing:
            raise ConfigError(
                f"kafka setting {missing[0]} is missing: sasl.mechanism {mechanism} logs in with it"
            )
    if mechanism == "OAUTHBEARER":
        method = options.setdefault("sasl.oauthbearer.method", "oidc").lower()
        if method != "oidc":
            raise ConfigError(
                f"kafka setting sasl.oauthbearer.method = {method!r}: cdc supports oidc (client credentials)"
            )
        options["sasl.oauthbearer.method"] = method
        needed = (
            "sasl.oauthbearer.client.id",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.token.endpoint.url",
        )
        missing = [k for k in needed if not options.get(k)]
        if missing:
            raise ConfigError(
                f"kafka setting {missing[0]} is missing: OAUTHBEARER (oidc) needs {', '.join(needed)}"
            )


@dataclass(frozen=True, slots=True, repr=False)
class ClientConfig:
    """Where the brokers are and how to reach them, for every Kafka client of the process.

    ``options`` are given with librdkafka / Java names (``sasl.jaas.config`` and
    ``sasl.mechanisms`` are read too) and kept normalized; construction raises
    `ConfigError` for anything a client could not use, and remembers the
    secrets (`cdc.redact`).
    """

    bootstrap_servers: str
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        redact.remember_pairs(self.options)
        object.__setattr__(self, "options", normalize(self.options))
        redact.remember_pairs(self.options)

    @property
    def protocol(self) -> str:
        return self.options.get("security.protocol", "PLAINTEXT")

    @property
    def secured(self) -> bool:
        return self.protocol != "PLAINTEXT"

    @property
    def servers(self) -> list[str]:
        return [s.strip() for s in self.bootstrap_servers.split(",") if s.strip()]

    def describe(self) -> str:
        """How the clients connect, for messages: ``SASL_SSL, SCRAM-SHA-512 as user 'cdc'``."""
        text = self.protocol
        if self.protocol.startswith("SASL_"):
            text += f", {self.options['sasl.mechanism']}"
            if "sasl.username" in self.options:
                text += f" as user {self.options['sasl.username']!r}"
        return text

    def confluent(self) -> dict[str, Any]:
        """librdkafka's configuration: the brokers and the shared settings as they are named there."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.options}

    def kafka_python(self) -> dict[str, Any]:
        """kafka-python's keyword arguments (valid for its producer, consumer and admin client alike)."""
        config: dict[str, Any] = {"bootstrap_servers": self.servers}
        for key, value in self.options.items():
            spec = SHARED[key]
            if spec.kafka_python:
                config[spec.kafka_python] = spec.convert(key, value)
        if self.options.get("sasl.mechanism") == "OAUTHBEARER":
            config["sasl_oauth_token_provider"] = _oidc_provider(
                self.options["sasl.oauthbearer.token.endpoint.url"],
                self.options["sasl.oauthbearer.client.id"],
                self.options["sasl.oauthbearer.client.secret"],
                self.options.get("sasl.oauthbearer.scope", ""),
            )
        return config

    def __repr__(self) -> str:
        return f"ClientConfig({self.bootstrap_servers!r}, {redact.redact_pairs(self.options)!r})"


def client_config(settings: KafkaSettings) -> ClientConfig:
    """The configuration every Kafka client of a connector (or of `cdc consume`) starts from."""
    return ClientConfig(settings.bootstrap_servers, kafka_pairs(settings))


def as_client(client: ClientConfig | str) -> ClientConfig:
    """``client`` itself, or a plain-text configuration for a ``host:port,...`` string."""
    return client if isinstance(client, ClientConfig) else ClientConfig(client)


# -- producer-only settings (--producer-config) ------------------------------------------------


def kafka_python_producer_settings(overrides: Mapping[str, str]) -> dict[str, Any]:
    """``--producer-config`` for kafka-python's producer: its own names (``linger_ms``) or the
    dotted ones (``linger.ms``, the shared ones included), numbers and booleans typed.

    Raises `ConfigError` naming an unknown key (kafka-python's own error would print the values).
    """
    from kafka import KafkaProducer  # noqa: PLC0415 - the only importers are in this package

    hint = "see kafka.KafkaProducer's settings, or use --producer confluent for librdkafka's"
    return _kafka_python_settings(overrides, set(KafkaProducer.DEFAULT_CONFIG), "producer", hint)


def kafka_python_consumer_settings(overrides: Mapping[str, str]) -> dict[str, Any]:
    """``--consumer-config`` (the sink's) for kafka-python's consumer, as for the producer."""
    from kafka import KafkaConsumer  # noqa: PLC0415 - the only importers are in this package

    hint = "see kafka.KafkaConsumer's settings"
    return _kafka_python_settings(overrides, set(KafkaConsumer.DEFAULT_CONFIG), "consumer", hint)


def _kafka_python_settings(
    overrides: Mapping[str, str], known: set[str], role: str, hint: str
) -> dict[str, Any]:
    typed: dict[str, Any] = {}
    for key, value in overrides.items():
        if key in known:
            name = key
        elif key in SHARED and SHARED[key].kafka_python:
            typed[SHARED[key].kafka_python] = SHARED[key].convert(key, value)
            continue
        elif key.replace(".", "_") in known:
            name = key.replace(".", "_")
        else:
            raise ConfigError(f"unknown kafka-python {role} setting {key!r} (--{role}-config): {hint}")
        if value.isdigit():
            typed[name] = int(value)
        elif value.lower() in ("true", "false"):
            typed[name] = value.lower() == "true"
        else:
            typed[name] = value
    return typed


# -- OAUTHBEARER for kafka-python ------------------------------------------------------------


class _OidcTokens:
    """Client-credentials tokens from an OIDC token endpoint, as librdkafka's ``oidc`` method gets them:
    a form POST with HTTP basic authentication, the token reused until a minute before it expires."""

    def __init__(self, endpoint: str, client_id: str, client_secret: str, scope: str) -> None:
        self.endpoint = endpoint
        self.client_id = client_id
        self.client_secret = client_secret
        self.scope = scope
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()

    def token(self) -> str:
        with self._lock:
            if not self._token or time.time() > self._expires - 60:
                self._token, lifetime = self._fetch()
                self._expires = time.time() + lifetime
            return self._token

    def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        login = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        request = urllib.request.Request(  # noqa: S310 - the endpoint is the user's OIDC server
            self.endpoint,
            data=urllib.parse.urlencode(form).encode(),
            headers={"Authorization": f"Basic {login}", "Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                answer = json.loads(response.read())
            return str(answer["access_token"]), float(answer.get("expires_in", 300))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise SinkError(
                f"cannot get an OAuth token from {self.endpoint}: {redact.redact(str(reason))}; "
                "check sasl.oauthbearer.token.endpoint.url, .client.id and .client.secret",
                retriable=True,
            ) from None

    def extensions(self) -> dict[str, str]:
        return {}


@functools.cache
def _token_provider_class() -> type[Any]:
    """`_OidcTokens` as a kafka-python token provider (its base class moved in kafka-python 3)."""
    try:
        from kafka.net.sasl.oauth import AbstractTokenProvider  # noqa: PLC0415
    except ImportError:  # kafka-python 2.x
        from kafka.sasl.oauth import AbstractTokenProvider  # noqa: PLC0415
    return type("OidcTokenProvider", (_OidcTokens, AbstractTokenProvider), {})


def _oidc_provider(endpoint: str, client_id: str, client_secret: str, scope: str) -> Any:
    return _token_provider_class()(endpoint, client_id, client_secret, scope)
