"""The Kafka side: producers with delivery tracking and topic creation, consumers, the schema topic.

The only package that imports a Kafka client (kafka-python, confluent-kafka);
the rest of cdc sees `Producer`, `TopicReader`, `SchemaTopicReader` and
`cdc.errors.SinkError`.
"""

from cdc.kafka.consumer import (
    Message,
    SchemaTopicReader,
    TopicReader,
    check_reachable,
    read_latest,
    read_schema_records,
)
from cdc.kafka.producer import (
    ConfluentProducer,
    KafkaPythonProducer,
    Producer,
    TopicSettings,
    make_producer,
    resolve_producer_kind,
)

__all__ = [
    "ConfluentProducer",
    "KafkaPythonProducer",
    "Message",
    "Producer",
    "SchemaTopicReader",
    "TopicReader",
    "TopicSettings",
    "check_reachable",
    "make_producer",
    "read_latest",
    "read_schema_records",
    "resolve_producer_kind",
]
