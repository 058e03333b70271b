"""docker-compose.yml cannot run here (no Docker engine); check that it describes a working pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def load() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_postgres_has_logical_wal() -> None:
    postgres = load()["services"]["postgres"]
    command = " ".join(postgres["command"])
    assert "wal_level=logical" in command
    assert "max_replication_slots" in command


def test_connector_points_at_the_services() -> None:
    services = load()["services"]
    cdc = services["cdc"]
    env = cdc["environment"]
    advertised = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert env["CDC_BOOTSTRAP_SERVERS"] in advertised.replace("PLAINTEXT://", "")
    assert env["CDC_BOOTSTRAP_SERVERS"].split(":")[0] == "kafka"
    assert "host=postgres" in env["CDC_DSN"]
    assert f"dbname={services['postgres']['environment']['POSTGRES_DB']}" in env["CDC_DSN"]
    assert f"password={services['postgres']['environment']['POSTGRES_PASSWORD']}" in env["CDC_DSN"]
    assert cdc["build"] == "."
    assert set(cdc["depends_on"]) == {"postgres", "kafka"}
    # KRaft: the broker is its own controller, no ZooKeeper service
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert "zookeeper" not in services


def test_dockerfile_installs_the_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile and 'ENTRYPOINT ["cdc"]' in dockerfile
    copies = [line.split()[1:-1] for line in dockerfile.splitlines() if line.startswith("COPY")]
    copied = {path for sources in copies for path in sources}
    assert {"pyproject.toml", "README.md", "cdc", "schemas"} <= copied


def test_the_connector_has_a_healthcheck_on_readyz() -> None:
    cdc = load()["services"]["cdc"]
    port = cdc["environment"]["CDC_METRICS_PORT"]
    assert cdc["environment"]["CDC_METRICS_HOST"] == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(cdc["healthcheck"]["test"])
