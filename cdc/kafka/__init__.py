"""The Kafka side: producers with delivery tracking and topic creation, consumers, the schema topic.

The only package that imports a Kafka client (kafka-python, confluent-kafka);
the rest of cdc sees `Producer`, `TopicReader`, `SchemaTopicReader` and
`cdc.errors.SinkError`. Every client starts from one `ClientConfig`
(`client_config(settings)`): the brokers and the security settings, the same
for each of them.
"""

from cdc.kafka.clientconfig import ClientConfig, as_client, client_config
from cdc.kafka.connection import check_connection
from cdc.kafka.consumer import (
    Message,
    Partition,
    Rebalance,
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
    Rejected,
    TopicSettings,
    make_producer,
    resolve_producer_kind,
)

__all__ = [
    "ClientConfig",
    "ConfluentProducer",
    "KafkaPythonProducer",
    "Message",
    "Partition",
    "Producer",
    "Rebalance",
    "Rejected",
    "SchemaTopicReader",
    "TopicReader",
    "TopicSettings",
    "as_client",
    "check_connection",
    "check_reachable",
    "client_config",
    "make_producer",
    "read_latest",
    "read_schema_records",
    "resolve_producer_kind",
]
