"""What a second process could give the stream: one process against two, over the same records.

    python -m bench.split [--rows N] [--repeat N]

The connector streams on one Python thread (librdkafka's threads beside it) and that thread is
its limit; the second core is mostly idle. This measures the ceiling of splitting the per-row
work in two before building it: stage A (pgoutput decode, parse, `ChangeEvent`, Avro encode)
and stage B (`ConfluentProducer.send` with a checkpoint token, delivery reports, flush), over the
pgoutput payloads of one captured transaction of ``--rows`` inserts of the benchmark's table, to
Tansu. It times A and B inline in one process, then A in a child process handing batches of
encoded records through a pipe to B in this one (records packed into one bytes object per batch:
what a real split would have to pay). Neither run reads the socket or confirms LSNs; the ratio
between them is the figure, not the rates.
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import struct
import sys
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

from bench.common import median
from bench.decoder import capture, with_server
from cdc.avro.serializer import AvroSerializer
from cdc.change import ChangeEvent
from cdc.checkpoint import InFlight
from cdc.devservers import Broker
from cdc.events import SourceInfo, table_from_relation, table_topic
from cdc.kafka.producer import ConfluentProducer
from cdc.pgoutput import Begin, Decoder, Insert, Relation
from cdc.pgtypes import RowParser, row_parser

#: records per batch handed from stage A to stage B
BATCH = 1000
_HEADER = struct.Struct("!HiI")  # topic index, key length (-1: none), value length
_LENGTH = struct.Struct("!I")


def encoder(prefix: str) -> Callable[[list[bytes]], Iterator[tuple[str, bytes | None, bytes]]]:
    """Stage A: a function from pgoutput payloads to the (topic, key, value) of every inserted row, as
    the connector makes them; its decoder and tables last from one call to the next."""
    decoder = Decoder()
    serializer = AvroSerializer(prefix, SourceInfo("bench", "bench"))
    tables: dict[int, tuple[str, Any, RowParser]] = {}
    begin = [0, 0, 0]  # xid, commit LSN, commit time (ms)

    def encode(payloads: list[bytes]) -> Iterator[tuple[str, bytes | None, bytes]]:
        for payload in payloads:
            message: Any = decoder.decode(payload)
            if message.__class__ is Insert:
                topic, table, parse = tables[message.relation.relation_id]
                xid, lsn, ts_ms = begin
                key, value = serializer.encode(
                    ChangeEvent("c", table, None, parse(message.new), lsn, lsn, xid, ts_ms)
                )
                yield topic, key, value
            elif message.__class__ is Relation:
                table = table_from_relation(message)
                tables[table.relation_id] = (
                    table_topic(prefix, table),
                    table,
                    row_parser([c.type for c in table.columns]),
                )
            elif message.__class__ is Begin:
                begin[:] = message.xid, message.final_lsn, message.commit_ts // 1000

    return encode


def producer(bootstrap: str) -> ConfluentProducer:
    return ConfluentProducer(bootstrap, "bench-split", 64)


def _packed(index: int, key: bytes | None, value: bytes) -> tuple[bytes, bytes, bytes]:
    """One record as stage A hands it over: header (topic index, key and value lengths), key, value."""
    return _HEADER.pack(index, -1 if key is None else len(key), len(value)), key or b"", value


def produce_packed(
    out: ConfluentProducer, topics: list[str], got: bytes, token: InFlight, at: int = 0
) -> None:
    """Stage B over one batch of records packed by stage A (from offset ``at``)."""
    unpack, size = _HEADER.unpack_from, _HEADER.size
    while at < len(got):
        index, key_len, value_len = unpack(got, at)
        at += size
        key = None
        if key_len >= 0:
            key, at = got[at : at + key_len], at + key_len
        out.send(topics[index], key, got[at : at + value_len], token)
        at += value_len
    out.poll()


def finish(out: ConfluentProducer, token: InFlight) -> None:
    """Wait for every record's acknowledgement, as the connector does before it confirms."""
    while token.pending:
        out.flush(10)
        out.poll()


def one_process(payloads: list[bytes], bootstrap: str, prefix: str) -> float:
    """Seconds for stage A and stage B inline on one thread (the connector today)."""
    out = producer(bootstrap)
    token = InFlight(1)
    started = time.perf_counter()
    for n, (topic, key, value) in enumerate(encoder(prefix)(payloads)):
        if n == 0:
            out.ensure_topic(topic)
        out.send(topic, key, value, token)
        if n % BATCH == 0:
            out.poll()
    finish(out, token)
    seconds = time.perf_counter() - started
    out.close()
    return seconds


def _encoder(payloads: list[bytes], prefix: str, pipe: Connection) -> None:
    """Stage A in the child: a new topic as b"T" + its name, batches of packed records as b"R" + the
    records, then b"" to end."""
    topics: dict[str, int] = {}
    parts: list[bytes] = [b"R"]
    for topic, key, value in encoder(prefix)(payloads):
        index = topics.get(topic)
        if index is None:
            index = topics[topic] = len(topics)
            pipe.send_bytes(b"T" + topic.encode())
        parts += _packed(index, key, value)
        if len(parts) == 1 + 3 * BATCH:
            pipe.send_bytes(b"".join(parts))
            parts = [b"R"]
    if len(parts) > 1:
        pipe.send_bytes(b"".join(parts))
    pipe.send_bytes(b"")


def two_processes(payloads: list[bytes], bootstrap: str, prefix: str) -> float:
    """Seconds for stage A in a child process and stage B here, from the child's start."""
    gc.collect()  # an earlier run's librdkafka producer freed in a forked child would crash it
    out = producer(bootstrap)
    token = InFlight(1)
    topics: list[str] = []
    ours, theirs = multiprocessing.Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(target=_encoder, args=(payloads, prefix, theirs))
    started = time.perf_counter()
    child.start()
    theirs.close()
    while got := ours.recv_bytes():
        if got[:1] == b"T":
            topics.append(got[1:].decode())
            out.ensure_topic(topics[-1])
        else:
            produce_packed(out, topics, got, token, at=1)
    finish(out, token)
    seconds = time.perf_counter() - started
    child.join()
    out.close()
    return seconds


def _batch_encoder(prefix: str, pipe: Connection) -> None:
    """Stage A in one of several children: each batch of payloads in, its packed records out."""
    encode = encoder(prefix)
    topics: dict[str, int] = {}
    while True:
        batch = pipe.recv_bytes()
        if not batch:
            return
        payloads, at = [], 0
        while at < len(batch):
            (length,) = _LENGTH.unpack_from(batch, at)
            payloads.append(batch[at + 4 : at + 4 + length])
            at += 4 + length
        parts: list[bytes] = []
        for topic, key, value in encode(payloads):
            parts += _packed(topics.setdefault(topic, len(topics)), key, value)
        pipe.send_bytes(b"".join(parts))


def parallel(payloads: list[bytes], bootstrap: str, prefix: str, workers: int = 2) -> float:
    """Seconds for stage A split by batches over ``workers`` children (Relation and Begin payloads to
    all of them), the records taken back in order and produced here."""
    gc.collect()  # an earlier run's librdkafka producer freed in a forked child would crash it
    out = producer(bootstrap)
    token = InFlight(1)
    context = multiprocessing.get_context("fork")
    pipes: list[Connection] = []
    children = []
    started = time.perf_counter()
    for _ in range(workers):
        ours, theirs = context.Pipe(duplex=True)
        child = context.Process(target=_batch_encoder, args=(prefix, theirs))
        child.start()
        theirs.close()
        pipes.append(ours)
        children.append(child)
    topic = ""
    shared: list[bytes] = []  # Relation, Begin: every child needs them before its inserts
    seen = [0] * workers  # how many of them each child has had
    batch: list[bytes] = []
    sent: list[int] = []  # the child of each batch in flight, oldest first
    turn = 0

    def produce_oldest() -> None:
        produce_packed(out, [topic], pipes[sent.pop(0)].recv_bytes(), token)

    def hand_over() -> None:
        nonlocal turn
        if len(sent) >= 2 * workers:
            produce_oldest()
        news, seen[turn] = shared[seen[turn] :], len(shared)
        pipes[turn].send_bytes(b"".join(_LENGTH.pack(len(p)) + p for p in (*news, *batch)))
        sent.append(turn)
        turn = (turn + 1) % workers
        batch.clear()

    for payload in payloads:
        kind = payload[0]
        if kind == 73:  # Insert
            batch.append(payload)
            if len(batch) == BATCH:
                hand_over()
        elif kind in (66, 82):  # Begin, Relation: shared state, sent with every batch
            shared.append(payload)
            if kind == 82:
                table = table_from_relation(Decoder().decode(payload))  # type: ignore[arg-type]
                topic = table_topic(prefix, table)
                out.ensure_topic(topic)
    if batch:
        hand_over()
    while sent:
        produce_oldest()
    for pipe in pipes:
        pipe.send_bytes(b"")
    finish(out, token)
    seconds = time.perf_counter() - started
    for child in children:
        child.join()
    out.close()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.split", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=200_000, help="inserts in the transaction (default 200000)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, interleaved (default 3)")
    args = parser.parse_args(argv)
    payloads: list[bytes] = with_server(lambda dsn: capture(dsn, args.rows))
    broker = Broker.create()
    broker.start()
    try:
        one, two, par = [], [], []
        for run in range(args.repeat):
            one.append(args.rows / one_process(payloads, broker.bootstrap_servers, f"one{run}"))
            two.append(args.rows / two_processes(payloads, broker.bootstrap_servers, f"two{run}"))
            par.append(args.rows / parallel(payloads, broker.bootstrap_servers, f"par{run}"))
            print(
                f"run {run + 1}: one process {one[-1]:,.0f} events/s, A | B {two[-1]:,.0f}, "
                f"A x2 | B {par[-1]:,.0f}"
            )
    finally:
        broker.destroy()
    base = median(one)
    print(
        f"medians: one process {base:,.0f} events/s; A | B {median(two):,.0f} ({median(two) / base:.2f}x); "
        f"A x2 | B {median(par):,.0f} ({median(par) / base:.2f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
