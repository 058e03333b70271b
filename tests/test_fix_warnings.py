"""The warning filter for kafka-python's dropped sockets forgives theirs, not ours."""

from __future__ import annotations

import gc
import re
import socket
import tomllib
from pathlib import Path

from kafka.net.inet import KafkaNetSocket

from tests.fix_warnings import KafkaPythonSocket


def unraisable_socket_filter() -> re.Pattern[str]:
    filters = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"
    ]["filterwarnings"]
    (entry,) = [f for f in filters if f.startswith("ignore:") and "Unraisable" in f]
    return re.compile(entry.split(":")[1], re.I)


def test_only_the_sockets_kafka_python_makes_are_forgiven() -> None:
    theirs, ours = KafkaNetSocket().socket(socket.AF_INET), socket.socket(socket.AF_INET)
    try:
        assert isinstance(theirs, KafkaPythonSocket)
        pattern = unraisable_socket_filter()
        assert pattern.match(f"Exception ignored in: {theirs!r}")
        assert not pattern.match(f"Exception ignored in: {ours!r}")
    finally:
        theirs.close()
        ours.close()


def test_a_socket_kafka_python_drops_fails_no_test() -> None:
    KafkaNetSocket().socket(socket.AF_INET)  # dropped unclosed, as kafka-python does
    gc.collect()
