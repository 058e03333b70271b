"""The one exception tree of cdc.

    CdcError                      anything cdc raises on purpose
     +-- ConfigError              bad flag, config file, environment value
     +-- SourceError              Postgres: connection, preconditions, slot, publication
     |    +-- SourceUnavailable   the server went away; retried with backoff
     |    +-- SlotLost            the server invalidated the slot: the WAL it needed is gone
     +-- DecodeError              malformed pgoutput / replication bytes
     +-- SchemaError              Avro schema or record problems, unknown fingerprints
     +-- TransformError           a --transform raised (--on-transform-error fail)
     +-- SinkError                Kafka; ``retriable`` says whether to try again
     |    +-- DeliveryFailed      Kafka did not acknowledge a record it was given
     +-- CheckpointError          the state directory cannot be read or written
     +-- ControlError             a connector process cannot be started, stopped or asked
     |    +-- AlreadyRunning      another process runs a connector with this name
     |    +-- NotRunning          no process runs a connector with this name
     +-- ServerError              a local dev/test server failed to start or stop

Every message says what happened and how to fix it, in one line, without
passwords: the CLI prints ``str(exc)`` as is.
"""

from __future__ import annotations


class CdcError(Exception):
    """Base of every error cdc raises on purpose."""


class ConfigError(CdcError):
    """A setting is unknown, malformed or contradicts another."""


class SourceError(CdcError):
    """Postgres refused or cannot serve what the connector needs."""


class SourceUnavailable(SourceError):
    """The Postgres connection was lost or refused; worth retrying."""


class SlotLost(SourceError):
    """The replication slot was invalidated (WAL removed, idle timeout): it can never stream again.

    ``--on-slot-lost recreate`` replaces it and reads the tables again; otherwise fatal.
    """


class DecodeError(CdcError):
    """Bytes from the server do not parse as the protocol says."""

    def __init__(self, message: str, *, kind: str = "", offset: int = -1) -> None:
        where = f" ({kind} message, byte {offset})" if kind else ""
        super().__init__(f"{message}{where}")
        self.kind = kind
        self.offset = offset


class SchemaError(CdcError):
    """An Avro schema cannot be built, or a record does not match one."""


class TransformError(CdcError):
    """A transform raised on an event, or returned what cannot be written."""


class SinkError(CdcError):
    """Kafka failed to take or acknowledge records."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class DeliveryFailed(SinkError):
    """A record given to the producer was not acknowledged (counted as a delivery error)."""


class CheckpointError(CdcError):
    """The state directory cannot hold the connector's progress."""


class ControlError(CdcError):
    """A connector process did not start, stop or answer as asked."""


class AlreadyRunning(ControlError):
    """Another process runs a connector with this name."""


class NotRunning(ControlError):
    """No connector with this name runs."""


class ServerError(CdcError):
    """A local Postgres or broker (dev, tests, bench) could not be run."""
