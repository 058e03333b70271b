"""Producing to Kafka: an idempotent producer with delivery tracking, and topic creation.

With `cdc.kafka.consumer`, the only code importing a Kafka client. Two producers share one small
interface: confluent-kafka (librdkafka, several times faster, the default) and kafka-python
(pure Python, the fallback). Both start from the one `ClientConfig` of the process, so the same
security settings reach them and their admin clients; ``--producer-config`` adds settings of the
producer alone, in its client's own names.

Delivery reports carry the caller's token (the checkpoint's `InFlight`
entry) back to the main thread through a deque: `Producer.poll` drains it and
decrements each entry's count there, so the checkpoint needs no lock. A failed
delivery is kept and raised from `poll` as a `SinkError`; nothing after it is
confirmed.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from cdc import redact
from cdc.checkpoint import InFlight
from cdc.errors import ConfigError, DeliveryFailed, SinkError
from cdc.kafka.clientconfig import ClientConfig, as_client, kafka_python_producer_settings
from cdc.kafka.connection import await_metadata, check_connection, make_librdkafka
from cdc.kafka.consumer import consumer_error

log = logging.getLogger(__name__)


Headers = list[tuple[str, bytes]]


class Producer(Protocol):
    #: set when made with a transactional id (``--delivery exactly-once``): every send needs an open
    #: transaction
    transactional_id: str

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        token: InFlight,
        headers: Headers | None = None,
    ) -> None:
        """Queue one record; blocks while the buffer is full (that pauses the replication read)."""

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], token: InFlight) -> None:
        """`send` of each of ``records`` (key, value), no headers: a snapshot's batch of rows."""

    def send_and_wait(self, topic: str, key: bytes | None, value: bytes | None, timeout: float) -> None:
        """Produce one record and return only once the broker acknowledged it."""

    def poll(self) -> int:
        """Apply delivery reports to their tokens; raise `SinkError` on a failed delivery."""

    def flush(self, timeout: float) -> bool:
        """Wait until every queued record is delivered or failed; False on timeout."""

    def close(self) -> None: ...

    def backlog(self) -> tuple[int, int | None]:
        """Records queued or in flight, not acknowledged yet, and their bytes when the client counts
        them (read from any thread). librdkafka tells its bytes only in its statistics, a report
        that grows with every topic (5.6 MB at 3,000 topics, costing its producer 80 MB of
        memory), so the confluent producer says None and `cdc.status` estimates them."""

    def ensure_topic(self, topic: str, compact: bool = False) -> None:
        """Create ``topic`` unless it exists (once per process per topic)."""

    def ensure_topics(self, topics: Sequence[str], compact: bool = False) -> None:
        """`ensure_topic` for many at once: the missing ones in one CreateTopics request (an initial
        snapshot of thousands of tables; one call each grows slower as the broker holds more)."""

    def max_message_bytes(self, topic: str) -> int | None:
        """The topic's ``max.message.bytes`` (the largest record batch the broker takes); None when
        the broker does not say."""

    def keep_rejected(self) -> deque[Rejected]:
        """From now on, records the broker refuses for good on their own (too large) are handed back in
        the returned deque instead of failing `poll`; a producer that cannot go on after such a
        refusal (kafka-python's idempotent one) still fails."""

    # -- transactions (a producer made with a transactional id) ----------------------------

    def init_transactions(self, timeout: float) -> None:
        """Register the transactional id: an older producer with it is fenced, its open transaction
        aborted. Raises `SinkError` (not retriable when fenced)."""

    def begin_transaction(self) -> None: ...

    def commit_transaction(self, timeout: float) -> None:
        """Deliver everything sent since `begin_transaction` and commit it atomically; `SinkError` when
        Kafka did not commit (nothing of the transaction is visible to read_committed consumers)."""

    def abort_transaction(self, timeout: float) -> None: ...


#: What Kafka says when another producer with the same transactional id took over.
FENCED_CODES: Final = frozenset({"_FENCED", "PRODUCER_FENCED", "INVALID_PRODUCER_EPOCH"})
FENCED_ERRORS: Final = frozenset({"ProducerFencedError", "InvalidProducerEpochError"})


def fenced_error(transactional_id: str) -> SinkError:
    return SinkError(
        f"fenced: another process took over transactional id {transactional_id!r} (a connector started "
        "with the same name elsewhere); stop one of them",
        retriable=False,
    )


@dataclass(slots=True)
class Rejected:
    """A record the broker refused for good, with the token it was sent with."""

    token: InFlight
    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    error: str


#: librdkafka's errors that refuse one record for what it is (a new session would fail the same way)
_RECORD_CODES = frozenset({"MSG_SIZE_TOO_LARGE", "INVALID_MSG_SIZE", "INVALID_RECORD", "INVALID_MSG"})


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How new topics are created: the table topics' settings; the schema topic is compacted."""

    partitions: int = 1
    replication_factor: int = -1  # -1: the broker's default
    configs: dict[str, str] = field(default_factory=dict)

    def for_topic(self, compact: bool) -> tuple[int, int, dict[str, str]]:
        if compact:
            return 1, self.replication_factor, {**self.configs, "cleanup.policy": "compact"}
        return self.partitions, self.replication_factor, dict(self.configs)


class _Deliveries:
    """Acks from any thread, applied on the main thread."""

    def __init__(self) -> None:
        self.acked: deque[InFlight] = deque()
        # only the first failure is raised, so only the first is kept (`fail`)
        self.failures: deque[tuple[InFlight | None, BaseException | str]] = deque()

    def fail(self, token: InFlight | None, error: Callable[[], BaseException]) -> None:
        """Keep the first failure (``error()`` builds it): it ends the session. After a fatal error or a
        long outage every queued record fails, one callback each: keeping them all (150,000 exceptions
        after a 30 s outage) grew the process by 75 MB while the next session caught up."""
        if not self.failures:
            self.failures.append((token, error()))

    def apply(self) -> int:
        acked = self.acked
        n = 0
        now = time.time() if acked else 0.0
        while acked:
            entry = acked.popleft()
            entry.pending -= 1
            if not entry.pending and entry.end_lsn:
                entry.done_at = now
            n += 1
        if self.failures:
            _, error = self.failures[0]
            retriable = bool(getattr(error, "retriable", True))
            raise DeliveryFailed(f"kafka did not take a record: {error}", retriable=retriable)
        return n


#: kafka-python errors that a new session cannot cure: the record, the topic, the settings or the
#: credentials are wrong. Any other failure ends the session and the next one starts with a new
#: producer: after a broker lost the producer's state (UnknownProducerIdError, and a failed epoch
#: bump), kafka-python's idempotent producer stays failed, but a new one works.
_PERMANENT_ERRORS = frozenset({
    "MessageSizeTooLargeError", "RecordListTooLargeError", "InvalidRecordError", "CorruptRecordError",
    "InvalidTopicError", "TopicAuthorizationFailedError", "ClusterAuthorizationFailedError",
    "TransactionalIdAuthorizationFailedError", "SaslAuthenticationFailedError", "UnsupportedVersionError",
    "UnsupportedForMessageFormatError", "UnsupportedCompressionTypeError", "InvalidRequiredAcksError",
    "KafkaConfigurationError", "ProducerFencedError", "InvalidProducerEpochError",
})  # fmt: skip


class _KafkaPythonFailure(Exception):
    """A failed delivery; ``retriable`` says whether a new session (a new producer) may succeed."""

    def __init__(self, error: BaseException) -> None:
        text = str(error)
        if type(error).__name__ == "KafkaTimeoutError":  # as _MSG_TIMED_OUT for confluent
            text = _timed_out(text, "delivery.timeout.ms")
        super().__init__(text)
        self.retriable = _retriable(error)


def _timed_out(error: str, setting: str) -> str:
    """A record's delivery timeout, with the setting that bounds it: a slow broker, not a broken
    record (a broker making 10,000 new topics took minutes)."""
    return (
        f"{error}: the broker did not acknowledge it within {setting}; check the broker, "
        f"or give it longer with --producer-config {setting}=<ms>"
    )


def _retriable(error: BaseException) -> bool:
    return bool(getattr(error, "retriable", False)) or type(error).__name__ not in _PERMANENT_ERRORS


# What one buffered record costs beyond its key and value bytes, so that --max-buffer-mb bounds
# the process's memory rather than only the payload (measured with tests/chaos/memory.py):
# kafka-python keeps a future with two callback lists per record; librdkafka a message struct
# plus confluent-kafka's per-message callback state.
KAFKA_PYTHON_RECORD_OVERHEAD = 768
CONFLUENT_RECORD_OVERHEAD = 384


class KafkaPythonProducer:
    """kafka-python's KafkaProducer, acks=all and idempotent."""

    def __init__(
        self,
        client: ClientConfig | str,
        client_id: str,
        max_buffer_mb: int,
        topics: TopicSettings | None = None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        from kafka import KafkaProducer  # noqa: PLC0415 - kept local: this module is the only importer
        from kafka.errors import KafkaError  # noqa: PLC0415

        self.client = client = as_client(client)
        bootstrap_servers = client.bootstrap_servers
        config: dict[str, Any] = {
            "client_id": client_id,  # a shared client.id (in kafka_python() below) wins
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_block_ms": 60_000,
            "max_request_size": 16 * 1024 * 1024,
            "delivery_timeout_ms": 120_000,
            "request_timeout_ms": 30_000,
            "reconnect_backoff_max_ms": 2_000,
            **client.kafka_python(),
        }
        config.update(kafka_python_producer_settings(overrides or {}))
        check_connection(client)
        self.transactional_id = str(config.get("transactional_id") or "")
        self.in_transaction = False
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics or TopicSettings()
        self.known_topics: set[str] = set()
        self.deliveries = _Deliveries()
        # kafka-python 3 has no buffer_memory: bound the bytes in flight here
        self.max_buffer = max_buffer_mb * 1024 * 1024
        self.buffered = 0
        self.queued = 0  # records sent and not acknowledged
        self.sizes: deque[int] = deque()
        self._token: InFlight | None = None
        self._token_callbacks: tuple[Any, Any] = (None, None)
        self._kafka_error = KafkaError
        try:
            self.producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise consumer_error(exc, client) from None
        except (TypeError, ValueError, AssertionError) as exc:
            raise ConfigError(f"invalid producer setting: {redact.redact(str(exc))}") from None
        self.admin: Any = None

    def _callbacks(self, token: InFlight) -> tuple[Any, Any]:
        """Delivery callbacks for ``token``, made once per transaction rather than per record.

        They run on kafka-python's sender thread: deque appends only.
        """
        if token is not self._token:
            acked, sizes, fail = self.deliveries.acked.append, self.sizes.append, self.deliveries.fail

            def ok(metadata: Any) -> None:
                sizes(
                    max(metadata.serialized_key_size, 0)
                    + max(metadata.serialized_value_size, 0)
                    + KAFKA_PYTHON_RECORD_OVERHEAD
                )
                acked(token)

            spoil = self._spoil_transaction if self.transactional_id else None

            def failed(error: BaseException) -> None:
                if spoil is not None:
                    spoil(error)
                fail(token, lambda: _KafkaPythonFailure(error))

            self._token, self._token_callbacks = token, (ok, failed)
        return self._token_callbacks

    def _spoil_transaction(self, error: BaseException) -> None:
        """A record of the open transaction failed: the transaction must never commit.

        kafka-python (3.0.12) leaves the transaction committable when a record
        fails with a retriable error past its retries (a delivery timeout while
        the broker was away): the commit then goes through without it, and with
        it the position record, so a read_committed consumer saw part of a
        transaction and the next start sent that part again. The Java client
        moves the transaction into an abortable error (KAFKA-5385); so does
        this, on the sender thread, before it can send the commit.
        """
        manager = getattr(self.producer, "_transaction_manager", None)
        if manager is None:
            return
        try:
            if not manager.has_error():  # (it ignores an aborting transaction itself)
                manager.transition_to_abortable_error(error)
        except Exception as exc:  # another state, another layout: the commit's own checks remain
            log.debug("could not mark the transaction failed: %s", exc)

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        token: InFlight,
        headers: Headers | None = None,
    ) -> None:
        size = (len(key) if key else 0) + (len(value) if value else 0) + KAFKA_PYTHON_RECORD_OVERHEAD
        if self.buffered + size > self.max_buffer:
            self._wait_for_room(size)
        token.pending += 1
        try:
            future = self.producer.send(topic, value=value, key=key, headers=headers)
        except self._kafka_error as exc:
            token.pending -= 1
            raise SinkError(f"cannot produce to {topic}: {exc}", retriable=_retriable(exc)) from None
        self.buffered += size
        self.queued += 1
        ok, failed = self._callbacks(token)
        future.add_callback(ok)
        future.add_errback(failed)

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], token: InFlight) -> None:
        send = self.send
        for key, value in records:
            send(topic, key, value, token)

    def _wait_for_room(self, size: int) -> None:
        """Block (and so pause the replication read) until acknowledgements free the buffer."""
        deadline = time.monotonic() + 60
        while self.buffered + size > self.max_buffer and self.buffered:
            self.poll()
            if self.buffered + size <= self.max_buffer:
                return
            if time.monotonic() > deadline:
                raise SinkError("kafka acknowledged nothing for 60 s with the buffer full", retriable=True)
            time.sleep(0.002)

    def send_and_wait(self, topic: str, key: bytes | None, value: bytes | None, timeout: float) -> None:
        try:
            self.producer.send(topic, value=value, key=key).get(timeout=timeout)
        except self._kafka_error as exc:
            raise SinkError(f"cannot produce to {topic}: {exc}", retriable=_retriable(exc)) from None

    def poll(self) -> int:
        sizes = self.sizes
        acked = len(sizes)
        for _ in range(acked):
            self.buffered -= sizes.popleft()
        self.queued -= acked
        return self.deliveries.apply()

    def backlog(self) -> tuple[int, int]:
        return max(0, self.queued), max(0, self.buffered)

    def flush(self, timeout: float) -> bool:
        try:
            self.producer.flush(timeout=timeout)
        except self._kafka_error:
            return False
        return True

    def init_transactions(self, timeout: float) -> None:
        self._txn("registering the transactional id", self.producer.init_transactions)

    def begin_transaction(self) -> None:
        self._txn("beginning a transaction", self.producer.begin_transaction)
        self.in_transaction = True

    def commit_transaction(self, timeout: float) -> None:
        try:
            self._txn("committing a transaction", lambda: self._end_transaction(True, timeout))
        finally:
            self.in_transaction = False
        self.poll()

    def abort_transaction(self, timeout: float) -> None:
        try:
            self._txn("aborting a transaction", lambda: self._end_transaction(False, timeout))
        finally:
            self.in_transaction = False

    def _end_transaction(self, commit: bool, timeout: float) -> None:
        """What kafka-python's commit_transaction/abort_transaction do, with a timeout.

        Theirs wait without one: a broker gone while the request is due blocked
        the connector (and `cdc stop`) until it came back. Past ``timeout`` the
        session ends; the next one's producer settles the transaction either way.
        """
        manager = getattr(self.producer, "_transaction_manager", None)
        sender = getattr(self.producer, "_sender", None)
        if manager is None or sender is None:  # another kafka-python layout: its own call, unbounded
            (self.producer.commit_transaction if commit else self.producer.abort_transaction)()
            return
        result = manager.begin_commit() if commit else manager.begin_abort()
        sender.wakeup()
        deadline = time.monotonic() + timeout
        # in slices: a transaction that fails meanwhile (a record fenced) never sends its end, and
        # waiting the timeout out made a fenced connector take 30 s to say so
        while not result.wait(timeout_ms=100):
            if manager.has_error() or time.monotonic() >= deadline:
                break
        else:
            return
        error = getattr(manager, "_last_error", None)
        if type(error).__name__ in FENCED_ERRORS:
            raise fenced_error(self.transactional_id)  # a record sent after the fence found out
        ending = "commit" if commit else "abort"
        if manager.has_error():
            raise SinkError(f"kafka could not {ending} a transaction: {error}", retriable=True)
        raise SinkError(f"kafka did not {ending} a transaction within {timeout:g} s", retriable=True)

    def _txn(self, doing: str, call: Any) -> None:
        try:
            call()
        except self._kafka_error as exc:
            if type(exc).__name__ in FENCED_ERRORS:
                raise fenced_error(self.transactional_id) from None
            raise SinkError(f"kafka refused {doing}: {exc}", retriable=_retriable(exc)) from None

    def close(self) -> None:
        if self.in_transaction:  # what it held is read from the slot again; free the partitions now
            with contextlib.suppress(SinkError):
                self.abort_transaction(5)
        try:
            self.producer.close(timeout=5)
        except Exception as exc:
            log.debug("closing the producer: %s", exc)
        if self.admin is not None:
            self.admin.close()

    def max_message_bytes(self, topic: str) -> int | None:
        from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient  # noqa: PLC0415

        try:
            if self.admin is None:
                self.admin = KafkaAdminClient(**self.client.kafka_python())
            resource = ConfigResource(ConfigResourceType.TOPIC, topic)
            try:  # kafka-python 3 lists only non-default values unless asked for all
                answer = self.admin.describe_configs([resource], config_filter="all")
            except TypeError:
                answer = self.admin.describe_configs([resource])
        except self._kafka_error as exc:
            log.debug("cannot read max.message.bytes of %s: %s", topic, exc)
            return None
        return _config_int(answer, topic, "max.message.bytes")

    def _not_writable(self, partitions: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], str]:
        """`await_writable`'s question: kafka-python's ListOffsets fails as a whole (one error)."""
        from kafka import TopicPartition  # noqa: PLC0415
        from kafka.admin import OffsetSpec  # noqa: PLC0415

        specs = {TopicPartition(topic, index): OffsetSpec.LATEST for topic, index in partitions}
        try:
            self.admin.list_partition_offsets(specs, timeout_ms=5000)
        except self._kafka_error as exc:
            if "Authorization" in type(exc).__name__:
                return [], ""  # not ours to ask: produce, as before
            return partitions, f"{type(exc).__name__}: {exc}"
        return [], ""

    def keep_rejected(self) -> deque[Rejected]:
        # its idempotent producer fails every later batch after a refused one: nothing to hand back
        return deque()

    def ensure_topic(self, topic: str, compact: bool = False) -> None:
        if topic not in self.known_topics:
            self.ensure_topics([topic], compact)

    def ensure_topics(self, topics: Sequence[str], compact: bool = False) -> None:
        wanted = [topic for topic in dict.fromkeys(topics) if topic not in self.known_topics]
        if not wanted:
            return
        from kafka.admin import KafkaAdminClient, NewTopic  # noqa: PLC0415
        from kafka.errors import TopicAlreadyExistsError  # noqa: PLC0415

        partitions, replication, configs = self.topics.for_topic(compact)
        try:
            if self.admin is None:
                self.admin = KafkaAdminClient(**self.client.kafka_python())
            missing = wanted
            if len(wanted) > 1:  # a batch: the ones that exist are not asked for (one metadata request)
                existing = set(self.admin.list_topics())
                missing = [topic for topic in wanted if topic not in existing]
            for start in range(0, len(missing), TOPICS_PER_REQUEST):
                chunk = missing[start : start + TOPICS_PER_REQUEST]
                self.admin.create_topics(
                    [NewTopic(t, partitions, replication, topic_configs=configs) for t in chunk]
                )
            _log_created(missing, partitions)
            await_writable(missing, partitions, self._not_writable)
        except TopicAlreadyExistsError:
            if len(wanted) > 1:  # made meanwhile by someone else: the batch's error hides the others'
                for topic in wanted:
                    self.ensure_topics([topic], compact)
        except self._kafka_error as exc:
            # "All brokers are currently fenced" (INVALID_REPLICATION_FACTOR): a KRaft broker just
            # restarted and not registered yet, which the next session gets past
            restarting = "currently fenced" in str(exc)
            retriable = restarting or bool(getattr(exc, "retriable", True))
            raise SinkError(
                f"cannot create topic {', '.join(wanted[:3])}: {exc}", retriable=retriable
            ) from None
        self.known_topics.update(wanted)


#: librdkafka's RD_KAFKA_PARTITION_UA, confluent-kafka's default partition: its partitioner chooses
_ANY_PARTITION: Final = -1


class ConfluentProducer:
    """confluent-kafka's Producer (librdkafka): idempotent, acks=all."""

    def __init__(
        self,
        client: ClientConfig | str,
        client_id: str,
        max_buffer_mb: int,
        topics: TopicSettings | None = None,
        overrides: dict[str, str] | None = None,
    ) -> None:
        try:
            import confluent_kafka  # noqa: PLC0415
        except ImportError:
            raise ConfigError(
                "producer 'confluent' needs confluent-kafka: pip install confluent-kafka"
            ) from None
        self._ck = confluent_kafka
        self.client = client = as_client(client)
        bootstrap_servers = client.bootstrap_servers
        config: dict[str, Any] = {
            "client.id": client.options.get("client.id", client_id),  # a shared client.id wins
            "enable.idempotence": True,
            "acks": "all",
            # one request at a time per broker: with more, a batch refused with a retriable error
            # (NOT_LEADER_OR_FOLLOWER) while the next one, already sent, is taken was counted
            # delivered by librdkafka ("implicitly acked by subsequent batch success": a broker
            # takes any first sequence number from a producer new to a partition), and lost; see
            # `await_writable`. The same rates with 1 as with 5 (Tansu and Apache Kafka, compiled,
            # 3 and 2 interleaved rounds, 2026-12-05), the same p99 at 1,000 txn/s; 20 records to
            # each of 10,000 new topics on Tansu acknowledged in 93 s against 84.
            "max.in.flight.requests.per.connection": 1,
            # 2 ms, not librdkafka's 5: commit-to-ack p99 at 1,000 txn/s 8.5-8.7 -> 5.1-6.1 ms, the
            # same rates (3 interleaved rounds, compiled, 2026-12-03: README Performance)
            "linger.ms": 2,
            "batch.size": 1024 * 1024,
            # librdkafka caps payload bytes and records apart, and each record costs about
            # CONFLUENT_RECORD_OVERHEAD bytes more than its payload: half the buffer for each keeps
            # payload + overhead within --max-buffer-mb, as kafka-python's count does (with the
            # whole buffer for each, a full queue of small records held ~1.4x the buffer)
            "queue.buffering.max.kbytes": max(1, max_buffer_mb * 1024 // 2),
            "queue.buffering.max.messages": max(
                1000, max_buffer_mb * 1024 * 1024 // 2 // CONFLUENT_RECORD_OVERHEAD
            ),
            "message.timeout.ms": 120_000,
            # a topic made a moment ago may be unknown to the broker for a while (Apache Kafka opened
            # 10,000 new partitions in 83 s here): librdkafka's 30 s default then failed the records
            # queued for it ("Unknown topic"). Records time out after message.timeout.ms anyway.
            "topic.metadata.propagation.max.ms": 120_000,
            "message.max.bytes": 16 * 1024 * 1024,
            "error_cb": self._on_error,
            **(overrides or {}),
        }
        self.transactional_id = str(config.get("transactional.id") or "")
        self.in_transaction = False
        # a full queue frees itself within the message timeout: acknowledged or failed
        self.room_wait = int(config["message.timeout.ms"]) / 1000 + 10
        self.bootstrap_servers = bootstrap_servers
        self.topics = topics or TopicSettings()
        self.known_topics: set[str] = set()
        self.deliveries = _Deliveries()
        self._token: InFlight | None = None
        self._token_callback: Any = None
        self.rejected: deque[Rejected] | None = None  # see keep_rejected
        self._connect_errors: list[Any] | None = []
        redact.remember_pairs(overrides or {})
        self.producer = make_librdkafka(confluent_kafka.Producer, client, config)
        # librdkafka connects lazily: ask for metadata, so that a wrong address, login or
        # certificate fails now, and with its cause
        await_metadata(self.producer, self._connect_errors, client)
        self._connect_errors = None
        self.admin: Any = None

    def _on_error(self, error: Any) -> None:
        if self._connect_errors is not None:
            self._connect_errors.append(error)
        if error.fatal():
            self.deliveries.fail(None, lambda: _ConfluentFailure(error))
        else:
            log.debug("kafka: %s", redact.redact(str(error)))

    def backlog(self) -> tuple[int, int | None]:
        return len(self.producer), None

    def _callback(self, token: InFlight) -> Any:
        """The delivery callback for ``token``, made once per transaction rather than per record."""
        if token is not self._token:
            acked, fail = self.deliveries.acked.append, self.deliveries.fail
            rejected = self.rejected

            def done(error: Any, message: Any) -> None:
                if error is None:
                    acked(token)
                elif rejected is not None and error.name() in _RECORD_CODES:
                    rejected.append(
                        Rejected(token, message.topic(), message.key(), message.value(),
                                 message.headers(), str(error))
                    )  # fmt: skip
                else:
                    fail(token, lambda: _ConfluentFailure(error))

            self._token, self._token_callback = token, done
        return self._token_callback

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        token: InFlight,
        headers: Headers | None = None,
    ) -> None:
        # `_callback`'s own check, inline: a method call per record costs more than the comparison
        done = self._token_callback if token is self._token else self._callback(token)
        try:
            if headers is None:
                # positional: confluent-kafka 2.16 took 0.40 us a record so, 0.81 with the same
                # arguments by keyword (its keyword parsing; 200,000 records, no broker)
                self.producer.produce(topic, value, key, _ANY_PARTITION, done)
            else:
                self.producer.produce(topic, value=value, key=key, on_delivery=done, headers=headers)
        except (BufferError, self._ck.KafkaException):
            # off the per-record path: wait for room, or raise the error as a SinkError
            self._enqueue(topic, key, value, done, headers)
        # counted once queued; its report is applied only by poll(), after this
        token.pending += 1

    def send_many(self, topic: str, records: Sequence[tuple[bytes | None, bytes]], token: InFlight) -> None:
        """`produce_batch` where confluent-kafka has it (2.16 here: 1.13-1.23 us of CPU a record
        against 1.33-1.49 for a `produce` each, the same partitions). librdkafka refuses some records
        of a batch and takes the rest when its queue fills meanwhile: those go again one at a time,
        after the others, which is fine for a snapshot's rows, each of its own key."""
        done = self._callback(token)
        produce_batch = getattr(self.producer, "produce_batch", None)  # None: an older confluent-kafka
        messages = [{"key": key, "value": value} for key, value in records]
        try:
            queued = -1 if produce_batch is None else produce_batch(topic, messages, on_delivery=done)
        except self._ck.KafkaException:  # a topic it refuses: send raises it as a SinkError
            queued = -1
        if queued < 0:
            for key, value in records:
                self.send(topic, key, value, token)
            return
        token.pending += len(messages)  # counted once queued, as send does
        if queued < len(messages):
            for message in messages:
                if "_error" in message:  # a full queue: wait for room; anything else: raise it
                    self._enqueue(topic, message["key"], message["value"], done)

    def _enqueue(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        on_delivery: Any,
        headers: Headers | None = None,
    ) -> None:
        """Hand one record to librdkafka, waiting while its queue is full (up to the message timeout)."""
        deadline = 0.0
        while True:
            try:
                self.producer.produce(
                    topic,
                    value=value,
                    key=key,
                    on_delivery=on_delivery,
                    headers=headers,
                )
                return
            except BufferError:
                # the local queue is full: serve delivery reports, which frees it
                if not deadline:
                    deadline = time.monotonic() + self.room_wait
                elif time.monotonic() > deadline:
                    raise SinkError(
                        f"kafka queue full for {self.room_wait:g} s: is the broker reachable?", retriable=True
                    ) from None
                self._serve(0.05)
            except self._ck.KafkaException as exc:
                raise SinkError(
                    f"cannot produce to {topic}: {exc}", retriable=_confluent_retriable(exc)
                ) from None

    def send_and_wait(self, topic: str, key: bytes | None, value: bytes | None, timeout: float) -> None:
        result: list[Any] = []
        self._enqueue(topic, key, value, lambda e, _m: result.append(e))
        deadline = time.monotonic() + timeout
        while not result and time.monotonic() < deadline:
            self._serve(0.05)
        if not result:
            raise SinkError(f"no acknowledgement from kafka for {topic} within {timeout} s", retriable=True)
        if result[0] is not None:
            raise SinkError(
                f"cannot produce to {topic}: {result[0]}", retriable=result[0].name() not in _PERMANENT_CODES
            )

    # After a fatal error, confluent-kafka raises KafkaException from poll/flush, or, when delivery
    # callbacks run with that exception already set, SystemError: either way this producer is done.

    def _serve(self, timeout: float) -> None:
        try:
            self.producer.poll(timeout)
        except (self._ck.KafkaException, SystemError) as exc:
            raise SinkError(f"kafka producer failed: {exc}", retriable=_confluent_retriable(exc)) from None

    def poll(self) -> int:
        self._serve(0)
        return self.deliveries.apply()

    def flush(self, timeout: float) -> bool:
        try:
            return int(self.producer.flush(timeout)) == 0
        except (self._ck.KafkaException, SystemError):
            return False

    def init_transactions(self, timeout: float) -> None:
        self._txn("registering the transactional id", lambda: self.producer.init_transactions(timeout))

    def begin_transaction(self) -> None:
        self._txn("beginning a transaction", self.producer.begin_transaction)
        self.in_transaction = True

    def commit_transaction(self, timeout: float) -> None:
        try:
            self._txn("committing a transaction", lambda: self.producer.commit_transaction(timeout))
        finally:
            self.in_transaction = False
        self.poll()

    def abort_transaction(self, timeout: float) -> None:
        try:
            self._txn("aborting a transaction", lambda: self.producer.abort_transaction(timeout))
        finally:
            self.in_transaction = False

    def _txn(self, doing: str, call: Any) -> None:
        try:
            call()
        except (self._ck.KafkaException, SystemError) as exc:
            if _confluent_name(exc) in FENCED_CODES:
                raise fenced_error(self.transactional_id) from None
            raise SinkError(f"kafka refused {doing}: {exc}", retriable=_confluent_retriable(exc)) from None

    def close(self) -> None:
        if self.in_transaction:  # what it held is read from the slot again; free the partitions now
            with contextlib.suppress(SinkError):
                self.abort_transaction(5)
        try:
            if int(self.producer.flush(5)):
                # what the broker did not take is read from the slot again by the next session:
                # free librdkafka's queue now rather than whenever this object is collected
                self.producer.purge()
                self.producer.poll(0)
        except (self._ck.KafkaException, SystemError) as exc:
            log.debug("closing the producer: %s", exc)

    def keep_rejected(self) -> deque[Rejected]:
        if self.rejected is None:
            self.rejected = deque()
            self._token = None  # callbacks made from now on hand refused records back
        return self.rejected

    def max_message_bytes(self, topic: str) -> int | None:
        from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]  # noqa: PLC0415

        self._admin()
        resource = ConfigResource("topic", topic)
        deadline = time.monotonic() + NEW_TOPIC_WAIT
        while True:
            try:
                entries = self.admin.describe_configs([resource], request_timeout=30)[resource].result(30)
                entry = entries.get("max.message.bytes")
                return None if entry is None or entry.value is None else int(entry.value)
            except (self._ck.KafkaException, ValueError, TypeError) as exc:
                # a topic created a moment ago: the broker answering may not know it yet (1 in 40 on
                # a loaded machine), and Kafka's default limit would be the wrong answer
                if _confluent_name(exc) != "UNKNOWN_TOPIC_OR_PART" or time.monotonic() > deadline:
                    log.debug("cannot read max.message.bytes of %s: %s", topic, exc)
                    return None
                time.sleep(0.1)

    def _admin(self) -> None:
        from confluent_kafka.admin import AdminClient  # noqa: PLC0415

        if self.admin is None:
            self.admin = make_librdkafka(AdminClient, self.client, {})

    def ensure_topic(self, topic: str, compact: bool = False) -> None:
        if topic not in self.known_topics:
            self.ensure_topics([topic], compact)

    def ensure_topics(self, topics: Sequence[str], compact: bool = False) -> None:
        wanted = [topic for topic in dict.fromkeys(topics) if topic not in self.known_topics]
        if not wanted:
            return
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]  # noqa: PLC0415

        partitions, replication, configs = self.topics.for_topic(compact)
        if self.admin is None:
            self.admin = make_librdkafka(AdminClient, self.client, {})
        created = []
        for start in range(0, len(wanted), TOPICS_PER_REQUEST):
            chunk = wanted[start : start + TOPICS_PER_REQUEST]
            futures = self.admin.create_topics(
                [NewTopic(topic, partitions, replication, config=configs) for topic in chunk],
                request_timeout=30,
            )
            for topic in chunk:
                try:
                    futures[topic].result(timeout=30)
                    created.append(topic)
                except self._ck.KafkaException as exc:
                    if _confluent_name(exc) != "TOPIC_ALREADY_EXISTS":
                        raise SinkError(f"cannot create topic {topic}: {exc}", retriable=True) from None
        _log_created(created, partitions)
        await_writable(created, partitions, self._not_writable)
        self.known_topics.update(wanted)

    def _not_writable(self, partitions: list[tuple[str, int]]) -> tuple[list[tuple[str, int]], str]:
        """`await_writable`'s question, one ListOffsets future per partition."""
        from confluent_kafka import TopicPartition  # noqa: PLC0415
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]  # noqa: PLC0415

        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self.admin.list_offsets(
            {TopicPartition(topic, index): latest for topic, index in partitions}, request_timeout=5
        )
        left: list[tuple[str, int]] = []
        error = ""
        for asked, future in futures.items():
            try:
                future.result()
            except self._ck.KafkaException as exc:
                if "AUTHORIZATION" in _confluent_name(exc):
                    return [], ""  # not ours to ask: produce, as before
                left.append((asked.topic, asked.partition))
                error = str(exc)
        if left:
            # the admin client keeps what its metadata said ("No leaders found") until refreshed:
            # a metadata request for the topics refreshes it
            topics = {topic for topic, _ in left}
            with contextlib.suppress(self._ck.KafkaException):  # a slow answer: the next ask tells
                self.admin.list_topics(topics.pop() if len(topics) == 1 else None, timeout=5)
        return left, error


#: how long a topic's config is asked again while the broker says the topic (just created) is unknown
NEW_TOPIC_WAIT: Final = 10.0

#: how long the partitions of topics just created may stay closed to writes (`await_writable`): as
#: long as librdkafka waits for a new topic to appear (topic.metadata.propagation.max.ms)
NEW_TOPIC_READY: Final = 120.0


def await_writable(
    topics: Sequence[str],
    partitions: int,
    not_writable: Callable[[list[tuple[str, int]]], tuple[list[tuple[str, int]], str]],
) -> None:
    """Return once the broker can append to every partition of ``topics``, just created.

    Apache Kafka (4.4, KRaft) names a new partition's leader in its metadata a moment before that
    leader can append, and refuses a produce meanwhile (NOT_LEADER_OR_FOLLOWER). With requests
    pipelined, the next batch could be taken before the refused one was sent again (a broker takes
    any first sequence number from a producer new to a partition), and librdkafka then counted the
    refused batch delivered ("implicitly acked by subsequent batch success"): 4 of 50 outbox records
    lost in CI, repeated here with librdkafka's log (1 round in 60). `ConfluentProducer` sends one
    request at a time now, which closes that for every partition; this wait keeps a new topic's
    first records from being refused at all (kafka-python fails its session on them instead: the
    refused batch's retry comes out of order). ListOffsets is answered by a partition's leader once
    it can append; ``not_writable`` asks about some partitions and says which are not ready, and why.
    """
    waiting = [(topic, index) for topic in topics for index in range(partitions)]
    if not waiting:
        return
    start = time.monotonic()
    said = False
    pause = 0.02
    while True:
        waiting, error = not_writable(waiting)
        if not waiting:
            return
        waited = time.monotonic() - start
        if waited > NEW_TOPIC_READY:
            raise SinkError(
                f"kafka has not opened {len(waiting)} partitions of new topics for writing within "
                f"{NEW_TOPIC_READY:g} s ({waiting[0][0]} [{waiting[0][1]}]: {error}); check the broker",
                retriable=True,
            )
        if waited > 5 and not said:
            log.info("waiting for kafka to open %d partitions of new topics (%s)", len(waiting), error)
            said = True
        time.sleep(pause)
        pause = min(pause * 2, 1.0)


#: topics per CreateTopics request: one request for a snapshot of thousands of tables would be large
TOPICS_PER_REQUEST = 1000


def _log_created(topics: Sequence[str], partitions: int) -> None:
    if len(topics) == 1:
        log.info("created topic %s (%s partitions)", topics[0], partitions)
    elif topics:
        log.info("created %d topics (%s partitions each): %s, ...", len(topics), partitions, topics[0])


#: librdkafka errors that a new session cannot cure (as `_PERMANENT_ERRORS` for kafka-python):
#: retrying them would read the same change again and fail again, forever. Any other error, a fatal
#: one included (after a broker lost the producer's state, UNKNOWN_PRODUCER_ID is fatal for this
#: idempotent producer), ends the session; the next one starts with a new producer.
_PERMANENT_CODES = frozenset({
    "MSG_SIZE_TOO_LARGE", "INVALID_MSG_SIZE", "RECORD_LIST_TOO_LARGE", "INVALID_RECORD", "INVALID_MSG",
    "TOPIC_EXCEPTION", "TOPIC_AUTHORIZATION_FAILED", "CLUSTER_AUTHORIZATION_FAILED",
    "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION", "UNSUPPORTED_VERSION", "UNSUPPORTED_FOR_MESSAGE_FORMAT",
    "UNSUPPORTED_COMPRESSION_TYPE", "INVALID_REQUIRED_ACKS", "_INVALID_ARG", "_FENCED", "PRODUCER_FENCED",
    "INVALID_PRODUCER_EPOCH", "TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
})  # fmt: skip


class _ConfluentFailure(Exception):
    def __init__(self, error: Any) -> None:
        name = error.name()
        if name in FENCED_CODES:
            text = (
                "fenced: another process took over this connector's transactional id (a connector "
                "started with the same name elsewhere); stop one of them"
            )
        elif name == "_MSG_TIMED_OUT":
            text = _timed_out(str(error), "message.timeout.ms")
        else:
            text = str(error)
        super().__init__(text)
        self.retriable = name not in _PERMANENT_CODES


def _confluent_name(exc: BaseException) -> str:
    """The name of the KafkaError a confluent_kafka.KafkaException carries as its first arg ("" when
    it carries none, as a ValueError does)."""
    error = exc.args[0] if exc.args else None
    name = error.name() if error is not None and hasattr(error, "name") else ""
    return str(name)


def _confluent_retriable(exc: BaseException) -> bool:
    """Worth a new session? ``exc`` is a confluent_kafka.KafkaException (its first arg the KafkaError)."""
    return _confluent_name(exc) not in _PERMANENT_CODES  # "" (no KafkaError) is retriable too


def _config_int(answer: Any, topic: str, name: str) -> int | None:
    """One integer config out of kafka-python's describe_configs: a dict (3.x) or responses (2.x)."""
    value: Any = None
    if isinstance(answer, dict):
        entry = answer.get("topic", {}).get(topic, {}).get(name)
        value = None if entry is None else entry.get("value")
    else:
        for response in answer if isinstance(answer, list) else [answer]:
            for resource in getattr(response, "resources", None) or []:
                entries = resource[4] if isinstance(resource, tuple) else getattr(resource, "configs", [])
                for config in entries:
                    if (config[0] if isinstance(config, tuple) else getattr(config, "name", None)) == name:
                        value = config[1] if isinstance(config, tuple) else getattr(config, "value", None)
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def resolve_producer_kind(kind: str) -> str:
    """``auto`` means confluent-kafka (librdkafka) when it is installed, else kafka-python."""
    if kind != "auto":
        return kind
    try:
        import confluent_kafka  # noqa: F401, PLC0415
    except ImportError:
        return "kafka-python"
    return "confluent"


#: How long a Kafka transaction may stay open: it spans whole Postgres transactions, which may be
#: large (Kafka's broker allows 15 minutes by default).
TRANSACTION_TIMEOUT_MS: Final = 600_000


def make_producer(
    kind: str,
    client: ClientConfig | str,
    client_id: str,
    max_buffer_mb: int,
    topics: TopicSettings | None = None,
    overrides: dict[str, str] | None = None,
    transactional_id: str = "",
) -> Producer:
    """The producer of ``kind`` (``auto``, ``confluent``, ``kafka-python``) with the shared client
    settings ``client`` (or just its brokers) and the producer-only ``overrides``; with
    ``transactional_id``, a transactional one, already registered (`Producer.init_transactions`),
    so a producer of another process with the same id is fenced."""
    confluent = resolve_producer_kind(kind) == "confluent"
    settings = dict(overrides or {})
    if transactional_id:
        if confluent:
            settings = {
                "transactional.id": transactional_id,
                "transaction.timeout.ms": str(TRANSACTION_TIMEOUT_MS),
                **settings,
            }
        else:
            settings = {
                "transactional_id": transactional_id,
                "transaction_timeout_ms": str(TRANSACTION_TIMEOUT_MS),
                **settings,
            }
    cls: type[KafkaPythonProducer] | type[ConfluentProducer]
    cls = ConfluentProducer if confluent else KafkaPythonProducer
    producer = cls(client, client_id, max_buffer_mb, topics, settings)
    if transactional_id:
        try:
            producer.init_transactions(60)
        except BaseException:
            producer.close()
            raise
    return producer
