"""``python -m cdc.devservers prepare-kafka``: fetch the Kafka jars before the tests need them.

Run by ``make setup``. A machine without Java or Maven is told why and the
step passes: the Kafka tests then skip with the same reason.
"""

from __future__ import annotations

import logging
import sys

from cdc.devservers.kafka import KafkaUnavailable, prepare_kafka
from cdc.errors import ServerError


def main(argv: list[str]) -> int:
    if argv != ["prepare-kafka"]:
        print("usage: python -m cdc.devservers prepare-kafka", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        print(prepare_kafka())
    except KafkaUnavailable as exc:
        print(f"kafka: not prepared: {exc}")
        return 0
    except ServerError as exc:
        print(f"kafka: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
