"""What `cdc doctor` asks the broker: is it there, may we create topics, is the schema topic compacted.

With the client the connector would use (``--producer``) and the settings it
would pass (its `ClientConfig`, plus ``--producer-config``), so a broker that
needs SASL or TLS is checked as the connector will meet it. Read-only: topic creation is asked
with ``validate_only``, which the broker checks (authorization included)
without creating anything; a broker that ignores it (Tansu 0.6 does) has the
probe topic deleted again at once.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from typing import Any

from cdc.errors import CdcError
from cdc.kafka.clientconfig import ClientConfig, as_client, kafka_python_producer_settings
from cdc.kafka.connection import LIBRDKAFKA_LOGGER, check_connection
from cdc.kafka.producer import resolve_producer_kind

log = logging.getLogger(__name__)


@dataclass(slots=True)
class BrokerReport:
    """What the broker said; an empty ``*_error`` means that step passed (None: not asked)."""

    reachable_error: str = ""
    brokers: int = 0
    create_error: str | None = None
    schema_topic_exists: bool = False
    schema_topic_policy: str | None = None  # cleanup.policy, None when it could not be read
    schema_topic_error: str = ""


def inspect_broker(
    kind: str,
    client: ClientConfig | str,
    client_configs: dict[str, str],
    schema_topic: str,
    timeout: float = 10.0,
) -> BrokerReport:
    """Ask the broker the doctor's questions with the ``kind`` of client (auto, confluent, kafka-python).

    ``client`` is the shared client configuration (the brokers, security); ``client_configs``
    the connector's producer-only settings (which may carry security too, as before).
    """
    client = as_client(client)
    report = BrokerReport()
    try:
        # the address, then (secured) the TLS handshake and the login: each with its cause
        check_connection(client, timeout=min(timeout, 15.0))
    except CdcError as exc:  # SinkError with the reason; nothing else to ask then
        report.reachable_error = str(exc)
        return report
    probe = f"{schema_topic.rpartition('.')[0] or 'cdc'}.cdc-doctor-{secrets.token_hex(3)}"
    if resolve_producer_kind(kind) == "confluent":
        _ask_confluent(report, client, client_configs, schema_topic, probe, timeout)
    else:
        _ask_kafka_python(report, client, client_configs, schema_topic, probe, timeout)
    return report


def _ask_confluent(
    report: BrokerReport,
    client: ClientConfig,
    configs: dict[str, str],
    schema_topic: str,
    probe: str,
    timeout: float,
) -> None:
    import confluent_kafka  # noqa: PLC0415
    from confluent_kafka.admin import (  # type: ignore[attr-defined]  # noqa: PLC0415
        AdminClient,
        ConfigResource,
        NewTopic,
    )

    config: dict[str, Any] = {**client.confluent(), **configs, "logger": LIBRDKAFKA_LOGGER}
    try:
        admin = AdminClient(config)
        metadata = admin.list_topics(timeout=timeout)
    except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
        report.reachable_error = _first(exc)
        return
    report.brokers = len(metadata.brokers)
    try:
        futures = admin.create_topics([NewTopic(probe, 1, -1)], validate_only=True, request_timeout=timeout)
        futures[probe].result(timeout=timeout)
        report.create_error = ""
    except confluent_kafka.KafkaException as exc:
        report.create_error = _first(exc)
    if report.create_error == "" and probe in admin.list_topics(timeout=timeout).topics:
        # a broker that ignores validate_only (Tansu 0.6) created it: take it back
        admin.delete_topics([probe], request_timeout=timeout)[probe].result(timeout)
    report.schema_topic_exists = schema_topic in metadata.topics
    if report.schema_topic_exists:
        try:
            resource = ConfigResource("topic", schema_topic)
            entries = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
            entry = entries.get("cleanup.policy")
            report.schema_topic_policy = None if entry is None else str(entry.value)
        except confluent_kafka.KafkaException as exc:
            report.schema_topic_error = _first(exc)


def _ask_kafka_python(
    report: BrokerReport,
    client: ClientConfig,
    configs: dict[str, str],
    schema_topic: str,
    probe: str,
    timeout: float,
) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic  # noqa: PLC0415
    from kafka.errors import KafkaError  # noqa: PLC0415

    try:
        # the admin client refuses producer-only settings: keep those it knows (security among them)
        producer = kafka_python_producer_settings(configs)
        known = {k: v for k, v in producer.items() if k in KafkaAdminClient.DEFAULT_CONFIG}
        admin = KafkaAdminClient(
            **{**client.kafka_python(), "request_timeout_ms": int(timeout * 1000), **known}
        )
    except (CdcError, KafkaError, ValueError, TypeError, AssertionError) as exc:
        report.reachable_error = _first(exc)
        return
    try:
        topics = set(admin.list_topics())
        report.brokers = len(admin.describe_cluster().get("brokers", []))
        try:
            admin.create_topics([NewTopic(probe, 1, -1)], validate_only=True, timeout_ms=int(timeout * 1000))
            report.create_error = ""
        except KafkaError as exc:
            report.create_error = _first(exc)
        if report.create_error == "" and probe in set(admin.list_topics()):
            admin.delete_topics([probe])  # a broker that ignores validate_only (Tansu 0.6) created it
        report.schema_topic_exists = schema_topic in topics
        if report.schema_topic_exists:
            try:
                resource = ConfigResource(ConfigResourceType.TOPIC, schema_topic)
                try:  # kafka-python 3 lists only non-default values unless asked for all
                    answer = admin.describe_configs([resource], config_filter="all")
                except TypeError:  # kafka-python 2
                    answer = admin.describe_configs([resource])
                report.schema_topic_policy = _kafka_python_policy(answer, schema_topic)
            except KafkaError as exc:
                report.schema_topic_error = _first(exc)
    except KafkaError as exc:
        report.reachable_error = _first(exc)
    finally:
        admin.close()


def _kafka_python_policy(answer: Any, topic: str) -> str | None:
    """cleanup.policy out of kafka-python's describe_configs: a dict (3.x) or responses (2.x)."""
    if isinstance(answer, dict):
        entry = answer.get("topic", {}).get(topic, {}).get("cleanup.policy")
        return None if entry is None else str(entry.get("value"))
    for response in answer if isinstance(answer, list) else [answer]:
        resources = getattr(response, "resources", None) or []
        for resource in resources:
            entries = resource[4] if isinstance(resource, tuple) else getattr(resource, "configs", [])
            for entry in entries:
                name = entry[0] if isinstance(entry, tuple) else getattr(entry, "name", None)
                if name == "cleanup.policy":
                    return str(entry[1] if isinstance(entry, tuple) else getattr(entry, "value", None))
    return None


def _first(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
