"""Reading Kafka: whole topics for `cdc consume`, and the schema topic for both sides.

With `cdc.kafka.producer`, the only code that imports a Kafka client; what
leaves it are plain `Message` tuples and `cdc.errors.SinkError`.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

from cdc import redact
from cdc.errors import ConfigError, SinkError
from cdc.kafka.clientconfig import ClientConfig, as_client
from cdc.kafka.connection import check_connection, check_reachable

__all__ = [
    "Message",
    "Partition",
    "Rebalance",
    "SchemaTopicReader",
    "TopicReader",
    "check_reachable",
    "consumer_error",
    "read_schema_records",
]


class Message(NamedTuple):
    """One consumed record, as bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = -1  # the record's timestamp, Unix ms (the producer's clock: CreateTime)
    headers: Sequence[tuple[str, bytes]] = ()  # Kafka headers, in order (the outbox router's id, type)


class Partition(NamedTuple):
    """A topic's partition, as the rest of cdc names it."""

    topic: str
    partition: int


class Rebalance(Protocol):
    """Told by a `TopicReader` in a consumer group which partitions it lost and got (inside `poll`)."""

    def revoked(self, partitions: list[Partition]) -> None: ...

    def assigned(self, partitions: list[Partition]) -> None: ...


def _listener(rebalance: Rebalance) -> Any:
    """kafka-python's ConsumerRebalanceListener calling ``rebalance``."""
    from kafka import ConsumerRebalanceListener  # noqa: PLC0415

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]
        def on_partitions_revoked(self, revoked: Any) -> None:
            rebalance.revoked(sorted(Partition(tp.topic, tp.partition) for tp in revoked))

        def on_partitions_assigned(self, assigned: Any) -> None:
            rebalance.assigned(sorted(Partition(tp.topic, tp.partition) for tp in assigned))

    return Listener()


def _whole_topics_assignor() -> Any:
    """A partition assignor that gives each member whole topics (every partition of a topic to one
    member, topics dealt round-robin): a member sees all of a table's changes, so it can count a
    transaction's events per table."""
    from kafka.coordinator.assignors.abstract import ConsumerProtocolAssignment  # noqa: PLC0415
    from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor  # noqa: PLC0415

    class WholeTopics(RoundRobinPartitionAssignor):  # type: ignore[misc]
        name = "cdc-whole-topics"
        version = 0

        @classmethod
        def assign(cls, cluster: Any, members: Any) -> dict[Any, Any]:
            wanted = {member.member_id: set(member.metadata.topics) for member in members}
            order = sorted(wanted)
            assignment: dict[Any, list[tuple[str, list[int]]]] = {m: [] for m in order}
            turn = 0
            for topic in sorted(set().union(*wanted.values()) if wanted else ()):
                partitions = cluster.partitions_for_topic(topic)
                takers = [m for m in order if topic in wanted[m]]
                if partitions is None or not takers:
                    continue
                member = takers[turn % len(takers)]
                turn += 1
                assignment[member].append((topic, sorted(partitions)))
            return {m: ConsumerProtocolAssignment(cls.version, dealt, b"") for m, dealt in assignment.items()}

    return WholeTopics


def consumer_error(exc: Exception, client: ClientConfig | str) -> SinkError:
    """A kafka-python error as one line (its classes differ between 2.x and 3.x: go by name)."""
    client = as_client(client)
    text = redact.redact(str(exc))
    servers = client.bootstrap_servers
    if type(exc).__name__ == "NoBrokersAvailable" or "bootstrap" in text.lower():
        if client.secured:
            return SinkError(
                f"kafka at {servers} did not let the client in ({client.describe()}): {text}; check the "
                "login and TLS settings (--kafka-config); kafka-python's log lines above say why"
            )
        return SinkError(
            f"cannot reach the broker at {servers}: check --bootstrap-servers, that Kafka runs, and "
            "whether its listener needs security.protocol and a login (--kafka-config)",
            retriable=True,
        )
    return SinkError(
        f"kafka ({servers}): {text}; check the broker and the topic names",
        retriable=bool(getattr(exc, "retriable", False)),
    )


def _consumer(client: ClientConfig, **config: Any) -> Any:
    """kafka-python's KafkaConsumer with the shared settings and ``config`` on top."""
    from kafka import KafkaConsumer  # noqa: PLC0415 - kept local: this package is the only importer

    try:
        return KafkaConsumer(**{**client.kafka_python(), **config})
    except (TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"invalid kafka consumer setting: {redact.redact(str(exc))}") from None


class TopicReader:
    """A consumer over whole topics: every partition assigned (no group, nothing committed), or
    subscribed in ``group`` (offsets committed). A context manager.

    Raises `SinkError` when the broker cannot be reached or a topic does not exist.
    """

    def __init__(
        self,
        topics: Sequence[str],
        client: ClientConfig | str,
        *,
        group: str | None = None,
        from_beginning: bool = False,
        config: dict[str, Any] | None = None,
        rebalance: Rebalance | None = None,
        whole_topics: bool = False,
        missing_ok: bool = False,
    ) -> None:
        """``rebalance`` hears of the partitions a group member loses and gets; ``whole_topics``
        makes the group's members share whole topics rather than partitions; with ``missing_ok``
        a topic that does not exist yet is read once it does (`new_partitions`)."""
        from kafka import TopicPartition  # noqa: PLC0415 - kept local: this package is the only importer
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor  # noqa: PLC0415
        from kafka.errors import KafkaError  # noqa: PLC0415

        self._partition = TopicPartition
        self.topics = list(topics)
        self.from_beginning = from_beginning
        self.client = client = as_client(client)
        check_connection(client)
        self.bootstrap_servers = bootstrap_servers = client.bootstrap_servers
        self._kafka_error = KafkaError
        if group is not None and (rebalance is not None or whole_topics):
            # members spread over topics, not all single-partition topics on the first member
            strategy = (_whole_topics_assignor(),) if whole_topics else (RoundRobinPartitionAssignor,)
            config = {"partition_assignment_strategy": strategy, **(config or {})}
        try:
            self._consumer = _consumer(
                client,
                group_id=group,
                enable_auto_commit=group is not None,
                auto_offset_reset="earliest" if from_beginning else "latest",
                allow_auto_create_topics=False,
                # committed records only: what an exactly-once connector aborted never shows (on
                # non-transactional topics both levels read the same)
                **{"isolation_level": "read_committed", **(config or {})},
            )
        except KafkaError as exc:
            raise consumer_error(exc, client) from None
        try:
            #: every topic of the cluster, as seen at the start
            self.existing: set[str] = set(self._consumer.topics())
            missing = [t for t in topics if t not in self.existing]
            if missing and not missing_ok:
                raise SinkError(
                    f"topic {', '.join(missing)} does not exist on {bootstrap_servers}: check the name "
                    "(cdc writes <prefix>.<schema>.<table>, <prefix>.messages, <prefix>.schemas)"
                )
            if group is None:
                partitions = [
                    TopicPartition(t, p)
                    for t in topics
                    for p in sorted(self._consumer.partitions_for_topic(t) or ())
                ]
                self._consumer.assign(partitions)
                # none yet (a topic the broker has listed but not described): `new_partitions` takes
                # them on later; kafka-python seeks every assigned partition when given none, and
                # refuses when none is assigned
                if partitions and from_beginning:
                    self._consumer.seek_to_beginning(*partitions)
                elif partitions:
                    self._consumer.seek_to_end(*partitions)
            else:
                listener = None if rebalance is None else _listener(rebalance)
                self._consumer.subscribe(list(topics), listener=listener)
        except KafkaError as exc:
            self.close()
            raise consumer_error(exc, client) from None
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> TopicReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def poll(self, timeout: float, max_records: int | None = None) -> list[Message]:
        """The records that arrived within ``timeout`` seconds (at most ``max_records``)."""
        try:
            batches = self._consumer.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None
        return [
            Message(m.topic, m.partition, m.offset, m.key, m.value, m.timestamp, m.headers or ())
            for batch in batches.values()
            for m in batch
        ]

    # -- positions, for consumers that keep their own (a sink stores them with what it wrote) --

    def _tps(self, partitions: Iterable[Partition]) -> list[Any]:
        return [self._partition(p.topic, p.partition) for p in partitions]

    def assignment(self) -> list[Partition]:
        """The partitions this reader holds now (in a group: since the last rebalance)."""
        return sorted(Partition(tp.topic, tp.partition) for tp in self._consumer.assignment())

    def new_partitions(self) -> list[Partition]:
        """Without a group: take on the partitions of the topics that appeared since (read from their
        beginning, or end), and return them. In a group the broker hands them out by itself."""
        if self._consumer.subscription() or not self.topics:
            return []
        try:
            held = set(self._consumer.assignment())
            wanted = [
                self._partition(t, p)
                for t in self.topics
                for p in sorted(self._consumer.partitions_for_topic(t) or ())
            ]
            new = [tp for tp in wanted if tp not in held]
            if not new:
                return []
            positions = {tp: self._consumer.position(tp) for tp in held}
            self._consumer.assign(wanted)
            for tp, offset in positions.items():
                self._consumer.seek(tp, offset)
            if self.from_beginning:
                self._consumer.seek_to_beginning(*new)
            else:
                self._consumer.seek_to_end(*new)
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None
        return sorted(Partition(tp.topic, tp.partition) for tp in new)

    def partitions_of(self, topic: str) -> list[Partition]:
        """Every partition of ``topic`` (empty when it does not exist)."""
        return [Partition(topic, p) for p in sorted(self._consumer.partitions_for_topic(topic) or ())]

    def seek(self, positions: dict[Partition, int | None]) -> None:
        """Read each partition from its offset next (None: from its beginning)."""
        try:
            start = [p for p, offset in positions.items() if offset is None]
            if start:
                self._consumer.seek_to_beginning(*self._tps(start))
            for p, offset in positions.items():
                if offset is not None:
                    self._consumer.seek(self._partition(p.topic, p.partition), offset)
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None

    def pause(self, partitions: Iterable[Partition]) -> None:
        """Fetch nothing more from ``partitions`` until `resume` (group membership goes on)."""
        self._consumer.pause(*self._tps(partitions))

    def resume(self, partitions: Iterable[Partition]) -> None:
        self._consumer.resume(*self._tps(partitions))

    def paused(self) -> set[Partition]:
        return {Partition(tp.topic, tp.partition) for tp in self._consumer.paused()}

    def position(self, partition: Partition) -> int:
        """The offset of the next record `poll` returns from ``partition``."""
        try:
            return int(self._consumer.position(self._partition(partition.topic, partition.partition)))
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None

    def end_offsets(self, partitions: Iterable[Partition]) -> dict[Partition, int]:
        """The offset after the last record of each partition, as the broker says now."""
        try:
            ends = self._consumer.end_offsets(self._tps(partitions))
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None
        return {Partition(tp.topic, tp.partition): int(end) for tp, end in ends.items()}

    def offsets_for_times(self, times: dict[Partition, int]) -> dict[Partition, int | None]:
        """The first offset of each partition whose record timestamp is at or after the given Unix ms
        (None: no such record yet)."""
        try:
            found = self._consumer.offsets_for_times(
                {self._partition(p.topic, p.partition): ts for p, ts in times.items()}
            )
        except self._kafka_error as exc:
            raise consumer_error(exc, self.client) from None
        return {
            Partition(tp.topic, tp.partition): None if found_at is None else int(found_at.offset)
            for tp, found_at in found.items()
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):  # closing after a failed connect may raise anything
            self._consumer.close()


class SchemaTopicReader:
    """Reads compacted side topics (``<prefix>.schemas``, ``<prefix>.offsets``) from the beginning, in
    steps, to their current end; committed records only (a record of an aborted transaction never
    counts)."""

    def __init__(self, client: ClientConfig | str, topics: Sequence[str], **config: Any) -> None:
        from kafka.errors import KafkaError  # noqa: PLC0415

        self.client = client = as_client(client)
        check_connection(client)
        self.topics = list(topics)
        self.bootstrap_servers = client.bootstrap_servers
        try:
            self._consumer = _consumer(
                client,
                enable_auto_commit=False,
                allow_auto_create_topics=False,
                fetch_max_wait_ms=100,
                **{"isolation_level": "read_committed", **config},
            )
            self._partitions: list[Any] = []
            self._find_partitions()
        except KafkaError as exc:
            raise consumer_error(exc, client) from None

    def _find_partitions(self) -> None:
        """Read the topics' partitions from their beginning (none yet: the topics do not exist yet)."""
        from kafka import TopicPartition  # noqa: PLC0415

        self._partitions = [
            TopicPartition(topic, p)
            for topic in self.topics
            for p in sorted(self._consumer.partitions_for_topic(topic) or ())
        ]
        self._consumer.assign(self._partitions)
        if self._partitions:
            self._consumer.seek_to_beginning(*self._partitions)

    def close(self) -> None:
        self._consumer.close()

    def records(self, timeout: float = 30.0) -> Iterator[tuple[bytes | None, bytes | None]]:
        """The raw (key, value) records from where the last call stopped to the current end."""
        from kafka.errors import KafkaError  # noqa: PLC0415

        if len({tp.topic for tp in self._partitions}) < len(self.topics):
            self._find_partitions()  # a topic that did not exist yet may now (read again from the start)
        if not self._partitions:
            return
        try:
            # The end from ListOffsets can be short of the true end (Tansu reports the last batch's
            # base offset + 1), but a position past it means the last batch was read: complete.
            ends = self._consumer.end_offsets(self._partitions)
            deadline = time.monotonic() + timeout
            while any(self._consumer.position(tp) < end for tp, end in ends.items()):
                if time.monotonic() > deadline:
                    raise SinkError(
                        f"reading the schema topic {', '.join(self.topics)} took over {timeout:.0f} s: "
                        "is the broker overloaded?",
                        retriable=True,
                    )
                yield from _key_values(self._consumer.poll(timeout_ms=200))
            # what is left of the last batch fetched: a poll hands out max_poll_records (500) at a
            # time, and a position past Tansu's short end stopped the loop after the first 500
            while fetched := self._consumer.poll(timeout_ms=0):
                yield from _key_values(fetched)
        except KafkaError as exc:
            raise consumer_error(exc, self.client) from None


def _key_values(fetched: dict[Any, list[Any]]) -> Iterator[tuple[bytes | None, bytes | None]]:
    """The (key, value) of every record of one poll, partition by partition."""
    for batch in fetched.values():
        for message in batch:
            yield message.key, message.value


def read_latest(client: ClientConfig | str, topic: str, **config: Any) -> dict[bytes, bytes]:
    """The last committed value of every key of the compacted ``topic`` (a tombstone removes the key);
    empty when the topic does not exist."""
    latest: dict[bytes, bytes] = {}
    for key, value in read_schema_records(client, topic, **config):
        if key is None:
            continue
        if value is None:
            latest.pop(bytes(key), None)
        else:
            latest[bytes(key)] = bytes(value)
    return latest


def read_schema_records(
    client: ClientConfig | str, topic: str, **config: Any
) -> list[tuple[bytes | None, bytes | None]]:
    """Every record of the schema topic ``topic`` (for `cdc.avro.AvroSerializer.load_schema_records`)."""
    reader = SchemaTopicReader(client, [topic], **config)
    try:
        return list(reader.records())
    finally:
        reader.close()
