"""The broker alone, many new topics: what `bench.many_tables` costs before any connector work.

    python -m bench.broker_topics [--topics 10000] [--records 20] [--bootstrap HOST:PORT]

Creates ``--topics`` one-partition topics (1,000 per CreateTopics request, as cdc does), then
produces ``--records`` small records to each with a bare confluent-kafka Producer configured as
cdc's (idempotent, acks=all, linger.ms 5) and waits for every acknowledgement. Without
``--bootstrap`` it starts Tansu (the bench's broker). Both phases are timed and printed.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import time
from collections.abc import Iterator

from cdc.devservers import Broker


@contextlib.contextmanager
def _broker(bootstrap: str) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    broker = Broker.create()
    broker.start()
    try:
        yield broker.bootstrap_servers
    finally:
        broker.destroy()


def many_topics(bootstrap: str, topics: int, records: int) -> tuple[float, float]:
    """Seconds to create ``topics`` topics, then to have ``records`` records in each acknowledged."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    prefix = "bt" + secrets.token_hex(3)
    names = [f"{prefix}.t{i}" for i in range(topics)]
    admin = AdminClient({"bootstrap.servers": bootstrap})
    started = time.monotonic()
    for start in range(0, topics, 1000):
        futures = admin.create_topics(
            [NewTopic(t, 1, 1) for t in names[start : start + 1000]], request_timeout=300
        )
        for future in futures.values():
            future.result()
    created = time.monotonic() - started
    print(f"created {topics:,} topics in {created:.1f} s", flush=True)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": 900_000,
            "topic.metadata.propagation.max.ms": 900_000,
        }
    )
    failed: list[str] = []

    def done(error: object, _message: object) -> None:
        if error is not None:
            failed.append(str(error))

    started = time.monotonic()
    for n, topic in enumerate(names, 1):
        for r in range(records):
            producer.produce(topic, b"x" * 40, key=str(r).encode(), on_delivery=done)
        producer.poll(0)
        if n % 1000 == 0:
            print(f"  {n:,} topics queued at {time.monotonic() - started:.1f} s", flush=True)
    if producer.flush(900) or failed:
        raise RuntimeError(f"records not acknowledged: {failed[:1] or 'flush timed out'}")
    produced = time.monotonic() - started
    print(f"{topics * records:,} records to {topics:,} topics acknowledged in {produced:.1f} s")
    return created, produced


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--topics", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=20)
    parser.add_argument("--bootstrap", default="", help="a running broker (default: start Tansu)")
    args = parser.parse_args()
    with _broker(args.bootstrap) as bootstrap:
        many_topics(bootstrap, args.topics, args.records)


if __name__ == "__main__":
    main()
