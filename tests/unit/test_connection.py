"""Connection settings: what every client is given, clear refusals, and no password shown."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ssl
from pathlib import Path

import pytest
from aiokafka.abc import AbstractTokenProvider
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

from app.kafka import access
from app.kafka.connection import Connection, SettingsError
from app.ops.config import Settings, apply_arguments, argument_parser
from localkafka import unsecured_token
from localkafka.tls import make_ca

OPERATING = Path(__file__).parents[2] / "docs" / "operating.md"
SECRET = "s3cr3t-Pa55word"


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> str:
    return str(make_ca(tmp_path_factory.mktemp("ca")))


def sasl_ssl_env(ca: str, **more: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9093,b2:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "merger",
        "KAFKA_SASL_PASSWORD": SECRET,
        "KAFKA_SSL_CAFILE": ca,
        **more,
    }


def test_plaintext_is_the_default_and_adds_nothing():
    conn = Settings.from_env({}).connection
    assert conn.aiokafka_kwargs() == {
        "bootstrap_servers": "localhost:9092",
        "security_protocol": "PLAINTEXT",
    }
    assert conn.faust_kwargs() == {"broker": ["kafka://localhost:9092"]}


def test_sasl_ssl_gives_every_aiokafka_client_the_same_complete_arguments(ca):
    conn = Connection.from_env(sasl_ssl_env(ca))
    kwargs = conn.aiokafka_kwargs()
    context = kwargs.pop("ssl_context")
    assert kwargs == {
        "bootstrap_servers": "b1:9093,b2:9093",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "merger",
        "sasl_plain_password": SECRET,
    }
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert conn.aiokafka_kwargs()["ssl_context"] is context  # built once


@pytest.mark.parametrize(
    "env",
    [
        {"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
        {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_USERNAME": "", "KAFKA_SASL_PASSWORD": ""},
        {"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "KAFKA_SSL_CAFILE": ""},
        {"KAFKA_SASL_MECHANISM": "PLAIN"},
    ],
)
def test_faust_gets_the_same_arguments_through_its_credentials(ca, env):
    conn = Connection.from_env({**sasl_ssl_env(ca), **env})
    faust = conn.faust_kwargs()
    assert faust["broker"] == ["kafka://b1:9093", "kafka://b2:9093"]
    auth = credentials_to_aiokafka_auth(faust.get("broker_credentials"))
    ours = conn.aiokafka_kwargs()
    del ours["bootstrap_servers"]
    assert {k: v for k, v in auth.items() if v is not None} == ours


def test_password_from_a_mounted_secret_file(ca, tmp_path):
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    env = sasl_ssl_env(ca, KAFKA_SASL_PASSWORD="", KAFKA_SASL_PASSWORD_FILE=str(secret))
    conn = Connection.from_env(env)
    assert conn.sasl_password == SECRET  # the file's trailing newline is not part of it
    assert Connection.from_env(conn.env()) == conn  # a child worker gets the file, not the text
    assert SECRET not in str(conn.env())


def test_the_password_never_shows(ca, tmp_path):
    env = sasl_ssl_env(ca, CAMELEER_STATE_DIR=str(tmp_path))
    settings = Settings.from_env(env)
    for text in (repr(settings), str(settings.connection), settings.connection.describe()):
        assert SECRET not in text
    assert "SASL_SSL SCRAM-SHA-512 as 'merger'" in settings.connection.describe()
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        apply_arguments(["--help"], dict(env))
    assert "--sasl-password-file" in out.getvalue() and SECRET not in out.getvalue()


def test_command_line_options_set_the_connection(ca):
    env: dict[str, str] = {}
    apply_arguments(
        [
            "--security-protocol", "sasl_ssl", "--sasl-mechanism", "scram-sha-256",
            "--sasl-username", "u", "--sasl-password", "p", "--ssl-cafile", ca,
        ],
        env,
    )  # fmt: skip
    conn = Settings.from_env(env).connection
    assert (conn.security_protocol, conn.sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")
    assert conn.ssl_cafile == ca


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL must be one of"),
        ({"KAFKA_SASL_MECHANISM": "GSSAPI"}, "KAFKA_SASL_MECHANISM must be one of"),
        ({"KAFKA_SASL_PASSWORD": ""}, "needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, "SASL credentials are set but"),
        ({"KAFKA_SSL_CAFILE": "/no/such/ca.pem"}, "KAFKA_SSL_CAFILE: no such file: /no/such"),
        ({"KAFKA_SSL_KEYFILE": __file__}, "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE"),
        ({"KAFKA_SSL_CAFILE": __file__}, "cannot load the TLS files"),
        (
            {"KAFKA_SASL_PASSWORD": "", "KAFKA_SASL_PASSWORD_FILE": "/no/such/secret"},
            "KAFKA_SASL_PASSWORD_FILE: no such file",
        ),
        ({"KAFKA_SASL_PASSWORD_FILE": __file__}, "not both"),
    ],
)
def test_bad_connection_settings_are_one_clear_line(ca, env, message):
    with pytest.raises(SettingsError, match=message) as refused:
        Settings.from_env(sasl_ssl_env(ca, **env))
    assert "\n" not in str(refused.value) and SECRET not in str(refused.value)


def test_tls_files_with_plaintext_are_refused_not_ignored(ca):
    with pytest.raises(SettingsError, match="TLS files are set but KAFKA_SECURITY_PROTOCOL"):
        Connection.from_env({"KAFKA_SSL_CAFILE": ca})


def test_every_connection_option_is_in_the_help():
    text = argument_parser().format_help()
    for flag in ("--security-protocol", "--sasl-mechanism", "--ssl-cafile", "--ssl-keyfile"):
        assert flag in text


def test_operating_guide_lists_exactly_the_acls_the_worker_checks():
    """The kafka-acls commands in docs/operating.md are the ones access.needed() gives."""
    readme = OPERATING.read_text(encoding="utf-8")
    grants = access.needed(Settings.from_env({}))
    commands = access.kafka_acls_commands(grants, "User:cameleer-merger")
    listed = [line for line in readme.splitlines() if line.startswith("kafka-acls ")]
    assert [line.split(" --add ", 1)[1] for line in listed] == [
        c.removeprefix("--add ") for c in commands
    ]


# ---- OAUTHBEARER: a token from a file, read again when it changes --------------------


def oauth_env(ca: str, token_file: Path, **more: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": "b1:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "oauthbearer",
        "KAFKA_SASL_OAUTH_TOKEN_FILE": str(token_file),
        "KAFKA_SSL_CAFILE": ca,
        **more,
    }


def replace(path: Path, text: str) -> None:
    """As Kubernetes refreshes a projected token: a new file swapped in."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.replace(path)


def test_oauthbearer_gives_every_client_one_token_provider_that_rereads_the_file(ca, tmp_path):
    token_file = tmp_path / "token"
    first = unsecured_token("merger")
    token_file.write_text(first + "\n")
    conn = Connection.from_env(oauth_env(ca, token_file))
    kwargs = conn.aiokafka_kwargs()
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, AbstractTokenProvider)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_username" not in kwargs
    faust_auth = credentials_to_aiokafka_auth(conn.faust_kwargs()["broker_credentials"])
    assert faust_auth["sasl_oauth_token_provider"] is provider
    assert faust_auth["security_protocol"] == "SASL_SSL"
    assert conn.aiokafka_kwargs()["sasl_oauth_token_provider"] is provider  # one per connection
    assert asyncio.run(provider.token()) == first
    second = unsecured_token("merger", lifetime=7200)
    replace(token_file, second)
    assert asyncio.run(provider.token()) == second
    assert conn.principal == "User:merger"
    assert first not in repr(conn) + conn.describe() + str(conn.env())
    assert conn.env()["KAFKA_SASL_OAUTH_TOKEN_FILE"] == str(token_file)


@pytest.mark.parametrize(
    ("more", "content", "message"),
    [
        ({"KAFKA_SASL_USERNAME": "merger"}, "t", "OAUTHBEARER takes its identity from the token"),
        ({"KAFKA_SASL_OAUTH_TOKEN_FILE": ""}, "t", "OAUTHBEARER needs KAFKA_SASL_OAUTH_TOKEN_FILE"),
        ({}, "\n", "KAFKA_SASL_OAUTH_TOKEN_FILE: .* is empty"),
        ({"KAFKA_SASL_OAUTH_TOKEN_FILE": "/no/such/token"}, "t", "no such file: /no/such/token"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL"}, "t", "SASL credentials are set but"),
    ],
)
def test_oauthbearer_settings_are_refused_in_one_line(ca, tmp_path, more, content, message):
    token_file = tmp_path / "token"
    token_file.write_text(content)
    with pytest.raises(SettingsError, match=message):
        Connection.from_env(oauth_env(ca, token_file, **more))


def test_a_token_file_that_goes_missing_is_a_clear_error(ca, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("t")
    conn = Connection.from_env(oauth_env(ca, token_file))
    token_file.unlink()
    with pytest.raises(SettingsError, match=r"cannot read .*token"):
        asyncio.run(conn.token_provider.token())
