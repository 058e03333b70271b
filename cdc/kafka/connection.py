"""Reaching the brokers: a TCP check, then the TLS handshake and the login, each failure one line.

kafka-python retries a refused login or an untrusted certificate until its
bootstrap timeout (30 s), then says only that it could not bootstrap, and a
client whose constructor failed leaves its I/O thread and sockets behind.
librdkafka reports the broker's refusal (``_AUTHENTICATION``, ``_SSL``) within
a fraction of a second. So before the first client of a secured
configuration is made, `check_connection` asks for metadata through
librdkafka with the same settings and turns a refusal into a `SinkError`
naming the cause and the setting to fix. The confluent producer waits for
its first metadata the same way (`await_metadata`).

Without confluent-kafka installed only the TCP check runs, and kafka-python's
own (slower, vaguer) errors remain.
"""

from __future__ import annotations

import logging
import re
import socket
import threading
import time
from typing import Any

from cdc import redact
from cdc.errors import ConfigError, SinkError
from cdc.kafka.clientconfig import ClientConfig

log = logging.getLogger(__name__)

#: librdkafka's own log lines go through Python logging, not raw stderr.
LIBRDKAFKA_LOGGER = logging.getLogger("cdc.kafka.librdkafka")
#: The check's client repeats every failed attempt: its cause becomes one error instead.
_CHECK_LOGGER = logging.getLogger("cdc.kafka.check")
_CHECK_LOGGER.propagate = False
_CHECK_LOGGER.addHandler(logging.NullHandler())

#: Configurations whose login and TLS handshake succeeded in this process: checked once.
_verified: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
_verified_lock = threading.Lock()


def check_reachable(bootstrap_servers: str, timeout: float = 5.0) -> None:
    """Fail fast, with a clear message, when no bootstrap server accepts a connection.

    kafka-python retries for 30 s before giving up (and then leaks the sockets
    of its attempts); a plain TCP connect answers in milliseconds.
    """
    reasons = []
    for server in (s.strip() for s in bootstrap_servers.split(",")):
        host, sep, port = server.rpartition(":")
        if not sep or not port.isdigit():
            host, port = server, "9092"
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
        except OSError as exc:
            reasons.append(f"{server}: {exc.strerror or exc}")
        else:
            return
    raise SinkError(
        f"cannot reach the broker at {bootstrap_servers} ({'; '.join(reasons)}): "
        "check --bootstrap-servers and that Kafka runs",
        retriable=True,
    )


def check_connection(client: ClientConfig, timeout: float = 15.0) -> None:
    """The brokers accept a connection, and with a secured configuration the TLS handshake and
    the login succeed. Raises `SinkError` (refusals are not retriable) or `ConfigError`."""
    check_reachable(client.bootstrap_servers)
    if not client.secured:
        return
    key = (client.bootstrap_servers, tuple(sorted(client.options.items())))
    with _verified_lock:
        if key in _verified:
            return
    try:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - the only importers are here
    except ImportError:
        return
    errors: list[Any] = []
    admin = make_librdkafka(AdminClient, client, {"error_cb": errors.append, "logger": _CHECK_LOGGER})
    await_metadata(admin, errors, client, timeout)
    with _verified_lock:
        _verified.add(key)


def make_librdkafka(kind: Any, client: ClientConfig, extra: dict[str, Any]) -> Any:
    """A confluent-kafka client (``kind``) with ``client``'s settings and ``extra`` on top; settings
    librdkafka refuses are a `ConfigError` (its message, redacted)."""
    import confluent_kafka  # noqa: PLC0415

    try:
        return kind({**client.confluent(), "logger": LIBRDKAFKA_LOGGER, **extra})
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        error = exc.args[0] if exc.args else exc
        text = _reason(error.str() if hasattr(error, "str") else str(error))
        fix = ""
        if "ssl.key.location failed" in text:
            fix = "; cannot read the client key: check ssl.key.location and ssl.key.password"
        elif "ssl.certificate.location failed" in text or "ssl.ca.location failed" in text:
            fix = "; check that the file is a PEM certificate"
        raise ConfigError(f"invalid kafka client setting: {redact.redact(text)}{fix}") from None


def await_metadata(handle: Any, errors: list[Any], client: ClientConfig, timeout: float = 15.0) -> None:
    """Ask ``handle`` (a librdkafka client whose ``error_cb`` appends to ``errors``) for metadata until
    it answers. A refused login or TLS handshake ends the wait at once with its cause."""
    import confluent_kafka  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    wait = 0.25  # a quick answer first; a broker holding 10,000 topics (the answer lists them all)
    while True:  # while busy took over 0.25 s every time: each try waits twice as long
        try:
            handle.list_topics(timeout=wait)
            return
        except confluent_kafka.KafkaException:
            wait = min(wait * 2, max(deadline - time.monotonic(), 0.25))
        handle.poll(0)  # serves error_cb
        for error in errors:
            refusal = refused(error.name(), error.str(), client)
            if refusal is not None:
                raise refusal
        if time.monotonic() > deadline:
            last = f": {_reason(errors[-1].str())}" if errors else ""
            raise SinkError(
                f"cannot reach the broker at {client.bootstrap_servers} ({client.describe()}) within "
                f"{timeout:.0f} s{redact.redact(last)}; check --bootstrap-servers, security.protocol "
                "and that Kafka runs",
                retriable=True,
            )


def _reason(text: str) -> str:
    """librdkafka's message without its ``sasl_ssl://host:port/bootstrap:`` head, OpenSSL's error
    codes, its generic advice and its timing tail."""
    text = re.sub(r"^\w+://\S+?/\S+?: ", "", text.strip())
    text = re.sub(r"error:[0-9A-Fa-f]+:SSL routines::", "", text)
    text = re.sub(r", verify that ssl\.ca\.location is correctly configured.*?(?= \(after|$)", "", text)
    return re.sub(r"\s*\(after \d+ms in state \w+\)$", "", text)


def refused(name: str, text: str, client: ClientConfig) -> SinkError | None:
    """The broker's refusal of the login or the TLS handshake as one line, or None for other errors."""
    reason = redact.redact(_reason(text))
    where = f"kafka at {client.bootstrap_servers}"
    if name == "_AUTHENTICATION":
        fix = "check sasl.username and sasl.password"
        if client.options.get("sasl.mechanism") == "OAUTHBEARER":
            fix = "check sasl.oauthbearer.client.id, .client.secret, .scope and .token.endpoint.url"
        if "mechanism" in reason and "handshake failed" in reason:
            fix = "check sasl.mechanism (and that the listener is the SASL one)"
        return SinkError(f"{where} refused the login ({client.describe()}): {reason}; {fix}")
    if "alert bad certificate" in reason or "certificate required" in reason:
        return SinkError(
            f"{where} refused the client certificate ({client.describe()}): {reason}; set "
            "ssl.certificate.location and ssl.key.location to a certificate of a CA the broker trusts"
        )
    if name == "_SSL" or "SSL handshake failed" in reason:
        if "certificate verify failed" in reason:
            fix = (
                "set ssl.ca.location to the CA that signed the broker's certificate, and name the "
                "broker as its certificate does (ssl.endpoint.identification.algorithm=https checks it)"
            )
        elif "PLAINTEXT" in reason or "closed by peer" in reason:
            fix = "check security.protocol against the listener (SSL, SASL_SSL) and the client certificate"
        else:
            fix = "check the ssl.* settings"
        return SinkError(f"the TLS handshake with {where} failed ({client.describe()}): {reason}; {fix}")
    return None
