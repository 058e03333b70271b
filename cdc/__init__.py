"""cdc: change data capture from PostgreSQL (pgoutput) to Kafka, with Avro."""

__version__ = "0.1.0"
