"""Fixtures of the interoperability peers: one Schema Registry for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.peers.jvm import PeerError
from tests.peers.registry import SchemaRegistry


@pytest.fixture(scope="session")
def schema_registry() -> Iterator[SchemaRegistry]:
    """Apicurio Registry (Confluent API, global compatibility BACKWARD), started once per session."""
    try:
        registry = SchemaRegistry.start()
    except PeerError as exc:
        pytest.skip(f"no Schema Registry peer: {exc}")
    with registry:
        yield registry
