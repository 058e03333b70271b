"""The Schema Registry boundary: confluent-kafka's ``SchemaRegistryClient``, its errors as ours.

`RegistryClient` is the `cdc.avro.confluent.SchemaIds` that the serializers and
the consumer use. HTTP, authentication (``basic.auth.user.info``, ``bearer.auth.*``,
credentials in the URL) and TLS (``ssl.ca.location``, ``ssl.certificate.location``,
``ssl.key.location``) are the client's: ``--schema-registry-config`` passes its
settings through. It needs ``pip install 'cdc[registry]'`` (confluent-kafka with
its ``schemaregistry`` extra).

Errors: a refusal (an invalid or incompatible schema, a wrong password, an
unknown id) is a `SchemaError`; a registry that cannot be reached or answers
5xx is `RegistryUnavailable`, retried like a lost broker. Messages never
carry the credentials: the URL's user info and the values of the secret
settings are replaced by ``***``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from cdc import redact
from cdc.errors import ConfigError, RegistryUnavailable, SchemaError

#: client settings that take numbers (everything else is passed as text)
_NUMERIC: Final = frozenset(
    {
        "timeout",
        "cache.capacity",
        "cache.latest.ttl.sec",
        "max.retries",
        "retries.wait.ms",
        "retries.max.wait.ms",
    }
)


def redact_url(url: str) -> str:
    """``url`` (or a comma-separated list) without the password of its user info."""
    parts = []
    for one in url.split(","):
        split = urlsplit(one.strip())
        if split.password is not None:
            host = split.hostname or ""
            netloc = f"{split.username}:***@{host}" + (f":{split.port}" if split.port else "")
            split = split._replace(netloc=netloc)
        parts.append(urlunsplit(split))
    return ",".join(parts)


class RegistryClient:
    """One Schema Registry (its URL and client settings); ids and schemas cached by the client."""

    def __init__(self, url: str, config: Mapping[str, str] | None = None) -> None:
        try:
            from confluent_kafka.schema_registry import (  # noqa: PLC0415 - an optional dependency
                Schema,
                SchemaRegistryClient,
                SchemaRegistryError,
            )
        except ImportError as exc:
            raise ConfigError(
                f"--schema-registry-url needs confluent-kafka's registry client ({exc}): "
                "pip install 'cdc[registry]'"
            ) from None
        self._schema = Schema
        self._refused = SchemaRegistryError
        self.where = redact_url(url)
        settings: dict[str, Any] = {"url": url}
        for key, value in (config or {}).items():
            settings[key] = _number(key, value) if key in _NUMERIC else value
        self._secrets = [str(v) for k, v in (config or {}).items() if redact.is_secret_key(k) and v]
        self._secrets += [p for p in (urlsplit(u.strip()).password for u in url.split(",")) if p]
        try:
            self.client = SchemaRegistryClient(settings)
        except (ValueError, TypeError, OSError) as exc:
            raise ConfigError(f"schema registry settings: {self._redact(str(exc))}") from None

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _error(self, exc: Exception, doing: str) -> Exception:
        """A client exception as ours: refusals are `SchemaError`, the rest `RegistryUnavailable`."""
        if isinstance(exc, self._refused):
            status = exc.http_status_code
            text = self._redact(exc.error_message)
            if status in (401, 403):
                return SchemaError(
                    f"the Schema Registry at {self.where} refused {doing} (HTTP {status}: {text}): "
                    "check the credentials in --schema-registry-config"
                )
            if status >= 500 or status < 0:
                return RegistryUnavailable(f"the Schema Registry at {self.where} failed {doing}: {text}")
            return SchemaError(f"the Schema Registry at {self.where} refused {doing}: {text} (HTTP {status})")
        text = self._redact(str(exc).strip() or type(exc).__name__)
        return RegistryUnavailable(
            f"cannot reach the Schema Registry at {self.where} ({doing}): {text}; check --schema-registry-url"
        )

    def check(self) -> None:
        """Ask for the global compatibility rule: the registry answers and takes the credentials."""
        try:
            self.client.get_compatibility()
        except Exception as exc:
            raise self._error(exc, "a request") from None

    def register(self, subject: str, schema: str) -> tuple[int, int]:
        try:
            registered = self.client.register_schema_full_response(subject, self._schema(schema, "AVRO"))
            version = registered.version
            if version is None:  # some registries answer with the id only
                version = self.client.lookup_schema(subject, self._schema(schema, "AVRO")).version
            if registered.schema_id is None:
                raise SchemaError(f"the Schema Registry at {self.where} registered {subject} without an id")
            return registered.schema_id, int(version or 0)
        except SchemaError:
            raise
        except Exception as exc:  # the client raises its own error, httpx's, OSError, ...
            raise self._error(exc, f"registering {subject}") from None

    def latest(self, subject: str) -> tuple[int, int, str] | None:
        try:
            found = self.client.get_latest_version(subject)
        except self._refused as exc:
            if exc.http_status_code == 404:
                return None
            raise self._error(exc, f"reading {subject}") from None
        except Exception as exc:
            raise self._error(exc, f"reading {subject}") from None
        if found.schema_id is None or found.schema is None:
            return None
        return found.schema_id, int(found.version or 0), str(found.schema.schema_str)

    def is_compatible(self, subject: str, schema: str) -> bool:
        try:
            return bool(self.client.test_compatibility(subject, self._schema(schema, "AVRO")))
        except Exception as exc:
            raise self._error(exc, f"testing the compatibility of {subject}") from None

    def compatibility(self, subject: str | None = None) -> str:
        try:
            try:
                return str(self.client.get_compatibility(subject))
            except self._refused as exc:
                if exc.http_status_code != 404 or subject is None:
                    raise
                return str(self.client.get_compatibility())  # the subject follows the global rule
        except Exception as exc:
            raise self._error(exc, f"reading the compatibility of {subject or 'the registry'}") from None

    def schema(self, schema_id: int) -> str:
        try:
            return str(self.client.get_schema(schema_id).schema_str)
        except Exception as exc:
            raise self._error(exc, f"reading schema id {schema_id}") from None

    def parsed(self, schema_id: int) -> dict[str, Any]:
        """The schema with id ``schema_id`` as JSON."""
        schema: dict[str, Any] = json.loads(self.schema(schema_id))
        return schema

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _number(key: str, value: str) -> int | float:
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"schema registry setting {key}={value!r}: expected a number") from None


def open_registry(url: str, config: Mapping[str, str]) -> RegistryClient | None:
    """The client of ``--schema-registry-url`` (None without one)."""
    return RegistryClient(url, config) if url else None
