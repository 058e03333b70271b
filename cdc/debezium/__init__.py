"""``--compat debezium``: topics, keys, envelopes and values as Debezium's PostgreSQL connector writes them.

`types` maps each Postgres type to its Connect schema and value (Debezium's
``decimal.handling.mode``, ``time.precision.mode``, ``binary.handling.mode`` and
``interval.handling.mode`` as `Options`); `envelope` holds the envelope, source
block, topics and side records; `avro` converts Connect schemas to Avro as the
AvroConverter does; `serializer` has `DebeziumJsonSerializer` (Kafka Connect's
JsonConverter, ``schemas.enable`` true or false) and `DebeziumAvroSerializer`
(through a Schema Registry). The tests compare every event with Debezium's own.
"""

from cdc.debezium.envelope import debezium_topics
from cdc.debezium.serializer import DebeziumAvroSerializer, DebeziumJsonSerializer, options_of
from cdc.debezium.types import Options

__all__ = ["DebeziumAvroSerializer", "DebeziumJsonSerializer", "Options", "debezium_topics", "options_of"]
