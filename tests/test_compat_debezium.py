"""``--compat debezium`` end to end with the real servers, without Debezium (tests/peers compares with it).

The event-level rules: Debezium's topics, a key change as delete + tombstone +
create, truncates left out by default, the placeholder, the source block, the
``{schema, payload}`` form; and the setting combinations refused.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from cdc import config
from cdc.config import Settings
from cdc.errors import ConfigError
from cdc.events import SourceInfo
from cdc.writer import make_serializer
from tests.fix_servers import BrokerHandle, TestDb
from tests.pipeline import read_topics, settings_for, wait_caught_up
from tests.support import running


def test_debeziums_events(db_latest: TestDb, broker: BrokerHandle, prefix: str, state_dir: Path) -> None:
    db = db_latest
    db.execute("CREATE TABLE items (id int PRIMARY KEY, name text, notes text)")
    db.execute("ALTER TABLE items ALTER COLUMN notes SET STORAGE EXTERNAL")
    settings = settings_for(
        db, broker.bootstrap_servers, prefix, state_dir, tables=["public.items"], compat="debezium"
    )
    with running(settings) as run:
        db.execute("INSERT INTO items VALUES (1, 'a', %s)", (secrets.token_hex(2000),))
        db.execute("UPDATE items SET name = 'b' WHERE id = 1")  # notes: TOASTed, not sent
        db.execute("UPDATE items SET id = 2 WHERE id = 1")  # a key change
        db.execute("TRUNCATE items")  # left out: Debezium's skipped.operations default
        db.execute("SELECT pg_logical_emit_message(true, 'outbox', 'hi')")
        wait_caught_up(db, run)
    records = read_topics(broker.bootstrap_servers, [f"{prefix}.public.items", f"{prefix}.message"])
    items = [r for r in records if r.topic.endswith(".items")]
    ops = [(r.key and r.key["payload"], r.value and r.value["payload"]["op"]) for r in items]
    assert ops == [({"id": 1}, "c"), ({"id": 1}, "u"), ({"id": 1}, "d"), ({"id": 1}, None), ({"id": 2}, "c")]
    update = items[1].value["payload"]
    assert update["after"]["notes"] == "__debezium_unavailable_value"
    assert update["source"]["connector"] == "postgresql"
    assert update["source"]["name"] == prefix
    assert update["source"]["snapshot"] == "false"
    assert update["source"]["sequence"].startswith("[") and update["transaction"] is None
    assert items[1].value["schema"]["name"] == f"{prefix}.public.items.Envelope"
    assert items[1].key["schema"]["name"] == f"{prefix}.public.items.Key"
    delete, create = items[2].value["payload"], items[4].value["payload"]
    assert delete["source"]["txId"] == create["source"]["txId"]
    assert delete["before"]["id"] == 1 and create["after"] == {
        "id": 2,
        "name": "b",
        "notes": update["after"]["notes"],
    }
    (message,) = [r for r in records if r.topic == f"{prefix}.message"]
    assert message.key["payload"] == {"prefix": "outbox"}
    assert message.value["payload"]["message"] == {"prefix": "outbox", "content": "aGk="}


SOURCE = SourceInfo("c", "db")


def test_debezium_avro_needs_a_registry() -> None:
    with pytest.raises(ConfigError, match="--compat debezium --format avro writes through a Schema Registry"):
        make_serializer(Settings(compat="debezium", format="avro"), SOURCE)


def test_settings_of_debezium_alone_warn_and_truncates_follow_the_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config.validate(Settings(decimal_handling_mode="string"))
    assert "applies to --compat debezium only" in caplog.text
    assert Settings(compat="debezium").skipped_ops == {"t"}
    assert Settings(compat="debezium", skip_ops=["none"]).skipped_ops == frozenset()
    assert Settings().skipped_ops == frozenset()
    with pytest.raises(ConfigError, match="skip_ops"):
        config.validate(Settings(skip_ops=["none", "t"]))
    with pytest.raises(ConfigError, match="for --format avro"):
        config.validate(Settings(format="json", schema_registry_url="http://r:8081"))


def test_registry_credentials_are_redacted_in_settings_and_logs() -> None:
    """The registry client's secrets (``basic.auth.user.info``, bearer tokens, the URL's password) are
    secrets of the settings too: ``***`` in their repr, and hidden in every log line once read."""
    from cdc import redact

    settings = config.from_values(
        {
            "format": "avro",
            "schema_registry_url": "https://user:url-password-1@registry:8081",
            "schema_registry_config": {
                "basic.auth.user.info": "user:user-info-secret",
                "bearer.auth.client.secret": "client-secret-2",
                "ssl.ca.location": "/etc/ca.pem",
            },
        }
    )
    shown = repr(settings)
    for secret in ("url-password-1", "user:user-info-secret", "client-secret-2"):
        assert secret not in shown
        assert redact.redact(f"a line with {secret}") == "a line with ***"
    assert "/etc/ca.pem" in shown
