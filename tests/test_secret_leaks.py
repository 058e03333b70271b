"""No secret leaves the process: every output and every state file is scanned for each of them.

The secrets: a Postgres role's password, the SCRAM password and the client
key's password of the secured broker (`tests.fix_secure`), an OAuth client
secret; each holds a comma and an ``=``. They reach real ``cdc`` processes by
every path there is: ``--dsn``, ``--dsn-file``, ``CDC_DSN_FILE``,
``--kafka-config``, ``CDC_KAFKA_CONFIG``, the ``[kafka]`` table,
``--kafka-config-file`` (with ``sasl.jaas.config``), ``--producer-config``;
the runs stream (``--detach``, then ``cdc status`` and ``cdc stop``), snapshot
(worker processes), log at ``--debug``, consume, and fail (a wrong password, a
malformed or unknown setting). What the commands print, ``cdc.log``,
``status.json`` and everything else in the state directory must hold none of
the secrets.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fix_secure import SecureKafka
from tests.fix_servers import TestDb
from tests.support import child_env, error_line, wait_until


@dataclass
class Scan:
    """Every process run, for the scan at the end."""

    outputs: list[tuple[str, str]] = field(default_factory=list)

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        # not tests.support.cdc, which refuses a password on the command line: this test passes
        # one there on purpose, as one of the paths a secret can take
        proc = subprocess.run(
            [sys.executable, "-m", "cdc", *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env=child_env(env),
            check=False,
        )
        self.outputs.append((" ".join(args[:2]), proc.stdout + proc.stderr))
        return proc

    def ok(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc


@dataclass
class Secrets:
    pg_password: str
    kafka: SecureKafka

    @property
    def all(self) -> list[str]:
        return [self.pg_password, *self.kafka.secrets]


@pytest.fixture
def role(db_latest: TestDb) -> Iterator[tuple[str, str]]:
    """A Postgres role whose password has a comma, an '=' and a quote."""
    name = "leak_" + secrets.token_hex(4)
    password = f"pg,p=a'ss-{secrets.token_hex(6)}"
    literal = password.replace("'", "''")  # utility statements take no parameters
    db_latest.execute(f"CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{literal}'")
    yield name, password
    db_latest.execute(f"DROP OWNED BY {name}")  # the publications it made
    db_latest.execute(f"DROP ROLE {name}")


def dsn(db: TestDb, user: str, password: str) -> str:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    return f"host=127.0.0.1 port={db.server.port} dbname={db.name} user={user} password='{quoted}'"


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text + "\n")
    path.chmod(0o600)
    return path


#: A login in a properties file as Java writes it: a sasl.jaas.config line.
LOGINS = {
    "sasl.password": ("scram.ScramLoginModule", {"username": "sasl.username", "password": "sasl.password"}),
    "sasl.oauthbearer.client.secret": (
        "oauthbearer.OAuthBearerLoginModule",
        {"clientId": "sasl.oauthbearer.client.id", "clientSecret": "sasl.oauthbearer.client.secret"},
    ),
}


def escape_property(value: str) -> str:
    return value.replace("\\", "\\\\")


def properties(pairs: dict[str, str]) -> str:
    """A properties file of ``pairs``, the login as a JAAS line continued over two lines."""
    rest = dict(pairs)
    lines = []
    for secret, (module, options) in LOGINS.items():
        if secret in rest:
            values = {name: rest.pop(key) for name, key in options.items()}
            quoted = " ".join(
                f'{name}="{value.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                for name, value in values.items()
            )
            jaas = f"org.apache.kafka.common.security.{module} required {quoted};"
            head, _, tail = escape_property(jaas).partition(" required ")
            lines.append(f"sasl.jaas.config={head} required \\\n    {tail}")
    lines += [f"{key}={escape_property(value)}" for key, value in rest.items()]
    return "\n".join(lines) + "\n"


def escaped_env(pairs: dict[str, str]) -> str:
    """``CDC_KAFKA_CONFIG``: a comma inside a value written as ``\\,``."""
    return ",".join(f"{k}={v.replace(',', chr(92) + ',')}" for k, v in pairs.items())


def toml_table(pairs: dict[str, str]) -> str:
    return "[kafka]\n" + "".join(f"{json.dumps(k)} = {json.dumps(v)}\n" for k, v in pairs.items())


def flags(pairs: dict[str, str], option: str = "--kafka-config") -> list[str]:
    return [arg for k, v in pairs.items() for arg in (option, f"{k}={v}")]


def wait_events(scan: Scan, state_dir: Path, name: str, count: int) -> None:
    def seen() -> bool:
        proc = scan.run("status", "--json", "--name", name, "--state-dir", str(state_dir))
        return bool(json.loads(proc.stdout).get("events_total", 0) >= count)

    wait_until(seen, timeout=60, message=f"{name} to stream {count} events")


def test_no_secret_in_any_output_or_state_file(
    secure_kafka: SecureKafka, db_latest: TestDb, role: tuple[str, str], tmp_path: Path, prefix: str
) -> None:
    user, password = role
    given = Secrets(password, secure_kafka)
    state = tmp_path / "state"
    scan = Scan()
    db_latest.execute("CREATE TABLE public.items (id int PRIMARY KEY, name text)")
    db_latest.execute("INSERT INTO public.items SELECT i, 'row ' || i FROM generate_series(1, 30) i")
    the_dsn = dsn(db_latest, user, password)
    dsn_path = secret_file(tmp_path / "dsn", the_dsn)
    common = ["--state-dir", str(state), "--tables", "public.items", "--snapshot-chunk-rows", "10"]

    # 1. --dsn and --kafka-config flags, SASL_SSL, detached: streams, status, stop
    listener = "SASL_SSL"
    run_1 = [
        "--name",
        "flags",
        "--topic-prefix",
        f"{prefix}a",
        "--bootstrap-servers",
        secure_kafka.bootstrap(listener),
    ]
    scan.ok("start", "--dsn", the_dsn, *flags(secure_kafka.config(listener)), *run_1, *common, "--detach")
    db_latest.execute("INSERT INTO public.items VALUES (31, 'streamed')")
    wait_events(scan, state, "flags", 31)
    scan.ok("status", "--name", "flags", "--state-dir", str(state))
    scan.ok("stop", "--name", "flags", "--state-dir", str(state))

    # 2. CDC_DSN_FILE and CDC_KAFKA_CONFIG (a comma escaped), SASL_PLAINTEXT, the kafka-python producer
    env = {"CDC_DSN_FILE": str(dsn_path), "CDC_KAFKA_CONFIG": escaped_env(secure_kafka.config("SASL"))}
    scan.ok(
        "start", "--name", "env", "--topic-prefix", f"{prefix}b",
        "--bootstrap-servers", secure_kafka.bootstrap("SASL"),
        "--producer", "kafka-python", "--snapshot", "initial-only", *common, env=env,
    )  # fmt: skip

    # 3. a TOML file with dsn_file and [kafka], mutual TLS (ssl.key.password), --debug
    toml = tmp_path / "cdc.toml"
    toml.write_text(f"dsn_file = {json.dumps(str(dsn_path))}\n" + toml_table(secure_kafka.config("MTLS")))
    scan.ok(
        "--debug", "start", "--config", str(toml), "--name", "toml", "--topic-prefix", f"{prefix}c",
        "--bootstrap-servers", secure_kafka.bootstrap("MTLS"), "--snapshot", "initial-only", *common,
    )  # fmt: skip
    scan.ok(
        "--debug", "start", "--config", str(toml), "--name", "toml-kp", "--topic-prefix", f"{prefix}d",
        "--bootstrap-servers", secure_kafka.bootstrap("MTLS"), "--snapshot", "initial-only",
        "--producer", "kafka-python", *common,
    )  # fmt: skip

    # 4. --kafka-config-file with sasl.jaas.config and --dsn-file, detached; then consume with the file
    kafka_file = secret_file(tmp_path / "kafka.properties", properties(secure_kafka.config(listener)))
    run_4 = [
        "--name",
        "file",
        "--topic-prefix",
        f"{prefix}e",
        "--bootstrap-servers",
        secure_kafka.bootstrap(listener),
    ]
    scan.ok(
        "start",
        "--dsn-file",
        str(dsn_path),
        "--kafka-config-file",
        str(kafka_file),
        *run_4,
        *common,
        "--detach",
    )
    wait_events(scan, state, "file", 31)
    scan.ok("status", "--json", "--name", "file", "--state-dir", str(state))
    scan.ok("stop", "--name", "file", "--state-dir", str(state))
    consumed = scan.ok(
        "consume", f"{prefix}e.public.items", "--kafka-config-file", str(kafka_file), "--from-beginning",
        "--bootstrap-servers", secure_kafka.bootstrap(listener), "--idle-timeout", "3",
    )  # fmt: skip
    assert len(consumed.stdout.splitlines()) == 31

    # 5. --producer-config carries the producer's own copy of the login
    scan.ok(
        "start", "--dsn-file", str(dsn_path), *flags(secure_kafka.config("SASL")),
        *flags({"sasl.password": secure_kafka.password}, "--producer-config"), "--name", "producer",
        "--topic-prefix", f"{prefix}f", "--bootstrap-servers", secure_kafka.bootstrap("SASL"),
        "--snapshot", "initial-only", *common,
    )  # fmt: skip

    # 6. OAuth: the client secret in a JAAS line of the properties file
    oauth_file = secret_file(tmp_path / "oauth.properties", properties(secure_kafka.config("OAUTH")))
    scan.ok(
        "start", "--dsn-file", str(dsn_path), "--kafka-config-file", str(oauth_file), "--name", "oauth-ok",
        "--topic-prefix", f"{prefix}h", "--bootstrap-servers", secure_kafka.bootstrap("OAUTH"),
        "--snapshot", "initial-only", "--producer", "kafka-python", *common,
    )  # fmt: skip

    # 7. failures: each one line, none quoting a secret
    wrong = {**secure_kafka.config(listener), "sasl.password": "wrong"}
    for detach in ([], ["--detach"]):
        failed = scan.run(
            "start", "--dsn-file", str(dsn_path), *flags(wrong), "--name", "wrong",
            "--topic-prefix", f"{prefix}g", "--bootstrap-servers", secure_kafka.bootstrap(listener),
            *common, *detach,
        )  # fmt: skip
        assert "refused the login" in error_line(failed)
    failed_status = scan.run("status", "--name", "wrong", "--state-dir", str(state), "--json")
    assert failed_status.returncode == 1 and json.loads(failed_status.stdout)["state"] == "failed"
    oauth = {k: v for k, v in secure_kafka.config("OAUTH").items() if "endpoint" not in k}
    incomplete = scan.run("start", "--dsn-file", str(dsn_path), *flags(oauth), "--name", "oauth", *common)
    assert "sasl.oauthbearer.token.endpoint.url is missing" in error_line(incomplete)
    # a bad Kafka setting is refused before the connector touches Postgres
    assert db_latest.execute("SELECT 1 FROM pg_publication WHERE pubname = 'cdc_oauth'") == []
    misspelled = {**secure_kafka.config(listener), "sasl.passwd": secure_kafka.password}
    unknown = scan.run("start", "--dsn-file", str(dsn_path), *flags(misspelled), "--name", "unknown", *common)
    assert "unknown kafka setting 'sasl.passwd'" in error_line(unknown)
    # the password's comma left unescaped: "s3c" and "r=t-..." become two pairs
    unescaped = ",".join(f"{k}={v}" for k, v in secure_kafka.config("SASL").items())
    bad_env = scan.run("start", "--dsn-file", str(dsn_path), "--name", "malformed", *common,
                       env={"CDC_KAFKA_CONFIG": unescaped})  # fmt: skip
    assert "an unknown kafka setting (not shown" in error_line(bad_env)
    stray = f"{secure_kafka.password.split(',')[0]},{escaped_env(secure_kafka.config('SASL'))}"
    bad_item = scan.run("start", "--dsn-file", str(dsn_path), "--name", "malformed", *common,
                        env={"CDC_KAFKA_CONFIG": stray})  # fmt: skip
    assert "CDC_KAFKA_CONFIG = *** from the environment: item 1 is not key=value" in error_line(bad_item)
    wrong_pg = secret_file(tmp_path / "wrong-dsn", dsn(db_latest, user, password[::-1]))
    pg_refused = scan.run("start", "--dsn-file", str(wrong_pg), "--name", "pg", *common)
    assert "password authentication failed" in error_line(pg_refused)
    given_pg_reversed = password[::-1]

    # the scan
    files = [path for path in state.rglob("*") if path.is_file()]
    assert any(path.name == "cdc.log" for path in files) and any(path.name == "status.json" for path in files)
    # what a split at the comma or the "=" leaves (the heads, "s3c", are too short to look for)
    fragments = [part for secret in given.all for part in (secret.split(",", 1)[1], secret.rsplit("=", 1)[1])]
    for secret in [*given.all, given_pg_reversed, *fragments]:
        for what, text in scan.outputs:
            assert secret not in text, f"{secret!r} in the output of {what}"
        for path in files:
            assert secret.encode() not in path.read_bytes(), f"{secret!r} in {path}"
            escaped = json.dumps(secret)[1:-1].encode()  # as a JSON string holds it
            assert escaped not in path.read_bytes(), f"{secret!r} in {path}"
