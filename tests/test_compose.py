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


def test_postgres_and_kafka_are_reachable_from_the_host() -> None:
    services = load()["services"]
    assert "5432:5432" in services["postgres"]["ports"]
    kafka = services["kafka"]["environment"]
    advertised = dict(item.split("://") for item in kafka["KAFKA_ADVERTISED_LISTENERS"].split(","))
    host_listener = next(name for name, address in advertised.items() if address.startswith("localhost:"))
    host_port = advertised[host_listener].split(":")[1]
    assert f"{host_port}:{host_port}" in services["kafka"]["ports"]
    assert f"{host_listener}://:{host_port}" in kafka["KAFKA_LISTENERS"]
    assert f"{host_listener}:PLAINTEXT" in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    # the containers use the other listener, by service name
    assert services["cdc"]["environment"]["CDC_BOOTSTRAP_SERVERS"] == advertised["PLAINTEXT"]


def test_kafka_keeps_its_data_in_a_volume() -> None:
    data = load()
    kafka = data["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts = dict(volume.split(":") for volume in kafka["volumes"])
    assert log_dirs in mounts.values()
    named = next(name for name, path in mounts.items() if path == log_dirs)
    assert named in data["volumes"]
    assert kafka["environment"]["CLUSTER_ID"]  # a restart finds its own data


def test_the_image_installs_the_distribution_with_its_default_producer() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir ." in dockerfile
    assert "[fast]" not in dockerfile  # confluent-kafka is a default dependency now


def test_the_connector_has_a_healthcheck_on_readyz() -> None:
    cdc = load()["services"]["cdc"]
    port = cdc["environment"]["CDC_METRICS_PORT"]
    assert cdc["environment"]["CDC_METRICS_HOST"] == "0.0.0.0"
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(cdc["healthcheck"]["test"])
