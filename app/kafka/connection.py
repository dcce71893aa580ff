"""How every Kafka client of the project connects: one place builds the arguments.

The worker's Faust app, its agent registry, its probes and its admin client, and
the bench, chaos and test tools, all take a `Connection`: the bootstrap servers
and the security settings operators know from Kafka's own clients
(security.protocol, sasl.mechanism, ssl.truststore...). `aiokafka_kwargs()` is
complete for any aiokafka client (consumer, producer, admin);
`faust_kwargs()` is the same for `faust.App`.

The password and the OAUTHBEARER token are never shown: not in repr(), not in
`describe()`, not in errors.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import orjson
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    BrokerResponseError,
    KafkaConnectionError,
    KafkaError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

DEFAULT_BOOTSTRAP = "localhost:9092"
PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER")
OAUTHBEARER = "OAUTHBEARER"

# (environment variable, option, default, help); app.ops.config lists them with the
# worker's other options, so they are also options of every command that takes those.
OPTIONS = (
    (
        "KAFKA_SECURITY_PROTOCOL",
        "--security-protocol",
        "PLAINTEXT",
        "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    ),
    (
        "KAFKA_SASL_MECHANISM",
        "--sasl-mechanism",
        "PLAIN",
        "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER",
    ),
    ("KAFKA_SASL_USERNAME", "--sasl-username", "", "SASL user name"),
    (
        "KAFKA_SASL_PASSWORD",
        "--sasl-password",
        "",
        "SASL password; prefer KAFKA_SASL_PASSWORD_FILE (a command line is visible to ps)",
    ),
    (
        "KAFKA_SASL_PASSWORD_FILE",
        "--sasl-password-file",
        "",
        "file holding the SASL password (a mounted secret; one trailing newline is ignored)",
    ),
    (
        "KAFKA_SASL_OAUTH_TOKEN_FILE",
        "--sasl-oauth-token-file",
        "",
        "OAUTHBEARER: file holding the bearer token, read again whenever it changes",
    ),
    (
        "KAFKA_SSL_CAFILE",
        "--ssl-cafile",
        "",
        "PEM file of the CA certificates that sign the brokers' (default: the system's)",
    ),
    (
        "KAFKA_SSL_CERTFILE",
        "--ssl-certfile",
        "",
        "PEM client certificate, for brokers that ask for one (mutual TLS)",
    ),
    ("KAFKA_SSL_KEYFILE", "--ssl-keyfile", "", "PEM private key of the client certificate"),
)


class SettingsError(ValueError):
    """A connection setting that cannot work, said in one line."""


class KafkaUnreachable(RuntimeError):
    """No broker answered (yet): worth trying again until a deadline."""


class KafkaRefused(RuntimeError):
    """A broker answered and refused us (TLS trust, credentials): trying again will not help."""


def _file(name: str, value: str | None) -> str | None:
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise SettingsError(f"{name}: no such file: {value}")
    if not os.access(path, os.R_OK):
        raise SettingsError(f"{name}: cannot read {value}")
    return value


class FileTokenProvider(AbstractTokenProvider):
    """The OAUTHBEARER token, from a file that something else keeps fresh.

    Kubernetes projects a service account token into a file and replaces it before it
    expires; an identity agent or a sidecar does the same. aiokafka asks for a token
    at every new connection's authentication: the file is read again when its inode,
    modification time or size changed since the last read (Kubernetes swaps in a new
    file), else the token read then is returned.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    async def token(self) -> str:
        return self.read()

    def read(self) -> str:
        try:
            st = os.stat(self.path)
            seen = (st.st_ino, st.st_mtime_ns, st.st_size)
            if seen != self._seen:
                token = Path(self.path).read_text(encoding="utf-8").strip()
                if not token:
                    raise SettingsError(f"KAFKA_SASL_OAUTH_TOKEN_FILE: {self.path} is empty")
                self._token, self._seen = token, seen
        except OSError as exc:
            raise SettingsError(
                f"KAFKA_SASL_OAUTH_TOKEN_FILE: cannot read {self.path} ({exc.strerror})"
            ) from None
        return self._token

    def subject(self) -> str | None:
        """The token's `sub` claim, if it is a JWT (the principal brokers see by default)."""
        parts = self.read().split(".")
        if len(parts) != 3:
            return None
        try:
            claims = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        except (binascii.Error, ValueError):
            return None
        sub = claims.get("sub") if isinstance(claims, dict) else None
        return sub if isinstance(sub, str) else None

    def __repr__(self) -> str:
        return f"FileTokenProvider({self.path!r})"


@dataclass(frozen=True)
class Connection:
    bootstrap_servers: str = DEFAULT_BOOTSTRAP
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    sasl_password_file: str | None = None  # where the password came from, if from a file
    sasl_oauth_token_file: str | None = None  # OAUTHBEARER: the token, read at each login
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    def __post_init__(self) -> None:
        protocol = self.security_protocol
        if protocol not in PROTOCOLS:
            raise SettingsError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, not {protocol!r}"
            )
        if not self.bootstrap_servers.strip():
            raise SettingsError("KAFKA_BOOTSTRAP_SERVERS is empty")
        if self.sasl:
            if self.sasl_mechanism not in MECHANISMS:
                raise SettingsError(
                    f"KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, "
                    f"not {self.sasl_mechanism!r}"
                )
            if self.oauth:
                self._check_oauth()
            elif not self.sasl_username or not self.sasl_password:
                raise SettingsError(
                    f"{protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD "
                    "(or KAFKA_SASL_PASSWORD_FILE)"
                )
        elif self.sasl_username or self.sasl_password or self.sasl_oauth_token_file:
            raise SettingsError(
                f"SASL credentials are set but KAFKA_SECURITY_PROTOCOL is {protocol}: "
                "use SASL_SSL (or SASL_PLAINTEXT)"
            )
        files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.tls and any(files):
            raise SettingsError(
                f"TLS files are set but KAFKA_SECURITY_PROTOCOL is {protocol}: use SSL or SASL_SSL"
            )
        if self.ssl_keyfile and not self.ssl_certfile:
            raise SettingsError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")
        _file("KAFKA_SSL_CAFILE", self.ssl_cafile)
        _file("KAFKA_SSL_CERTFILE", self.ssl_certfile)
        _file("KAFKA_SSL_KEYFILE", self.ssl_keyfile)
        if self.tls:
            self.ssl_context  # noqa: B018 - a broken file is a settings error, found now

    def _check_oauth(self) -> None:
        if self.sasl_username or self.sasl_password:
            raise SettingsError(
                "OAUTHBEARER takes its identity from the token: unset KAFKA_SASL_USERNAME "
                "and the password, set KAFKA_SASL_OAUTH_TOKEN_FILE"
            )
        if not self.sasl_oauth_token_file:
            raise SettingsError("OAUTHBEARER needs KAFKA_SASL_OAUTH_TOKEN_FILE (the bearer token)")
        _file("KAFKA_SASL_OAUTH_TOKEN_FILE", self.sasl_oauth_token_file)
        self.token_provider.read()  # an empty or unreadable token is a settings error, now

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Connection:
        """The KAFKA_* variables (see OPTIONS); the password may come from a file."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name, "").strip() or None

        password, password_file = env.get("KAFKA_SASL_PASSWORD") or None, None
        if get("KAFKA_SASL_PASSWORD_FILE"):
            if password:
                raise SettingsError("set KAFKA_SASL_PASSWORD or KAFKA_SASL_PASSWORD_FILE, not both")
            password_file = _file("KAFKA_SASL_PASSWORD_FILE", get("KAFKA_SASL_PASSWORD_FILE"))
            password = Path(password_file).read_text(encoding="utf-8").removesuffix("\n")
            password = password.removesuffix("\r") or None
        return cls(
            bootstrap_servers=get("KAFKA_BOOTSTRAP_SERVERS") or DEFAULT_BOOTSTRAP,
            security_protocol=(get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            sasl_mechanism=(get("KAFKA_SASL_MECHANISM") or "PLAIN").upper(),
            sasl_username=get("KAFKA_SASL_USERNAME"),
            sasl_password=password,
            sasl_password_file=password_file,
            sasl_oauth_token_file=get("KAFKA_SASL_OAUTH_TOKEN_FILE"),
            ssl_cafile=get("KAFKA_SSL_CAFILE"),
            ssl_certfile=get("KAFKA_SSL_CERTFILE"),
            ssl_keyfile=get("KAFKA_SSL_KEYFILE"),
        )

    @property
    def tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def oauth(self) -> bool:
        return self.sasl and self.sasl_mechanism == OAUTHBEARER

    @cached_property
    def token_provider(self) -> FileTokenProvider | None:
        """One provider per connection, shared by its clients (OAUTHBEARER only)."""
        return FileTokenProvider(self.sasl_oauth_token_file) if self.oauth else None

    @property
    def principal(self) -> str:
        """Who the brokers' ACLs see (for messages; a client certificate's DN is not read)."""
        if self.oauth:
            return f"User:{self.token_provider.subject() or '<the token subject>'}"
        if self.sasl:
            return f"User:{self.sasl_username}"
        return "User:<the client certificate's subject>" if self.ssl_certfile else "User:ANONYMOUS"

    @cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """Checks the brokers' certificates and host names (aiokafka's default context)."""
        if not self.tls:
            return None
        try:
            return create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        except (ssl.SSLError, OSError) as exc:
            files = ", ".join(f for f in (self.ssl_cafile, self.ssl_certfile) if f)
            raise SettingsError(f"cannot load the TLS files ({files}): {exc}") from None

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """Everything AIOKafkaConsumer, AIOKafkaProducer or AIOKafkaAdminClient needs to connect."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context
        if self.oauth:
            kwargs["sasl_mechanism"] = OAUTHBEARER
            kwargs["sasl_oauth_token_provider"] = self.token_provider
        elif self.sasl:
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = self.sasl_password
        return kwargs

    def faust_kwargs(self) -> dict[str, Any]:
        """`broker` and `broker_credentials` of faust.App (which passes them on to aiokafka)."""
        import faust  # only the worker needs Faust; the tools do not

        brokers = [f"kafka://{s.strip()}" for s in self.bootstrap_servers.split(",") if s.strip()]
        kwargs: dict[str, Any] = {"broker": brokers}
        if self.oauth:
            kwargs["broker_credentials"] = faust.OAuthCredentials(
                oauth_cb=self.token_provider, ssl_context=self.ssl_context
            )
        elif self.sasl:
            kwargs["broker_credentials"] = faust.SASLCredentials(
                username=self.sasl_username,
                password=self.sasl_password,
                mechanism=self.sasl_mechanism,
                ssl_context=self.ssl_context,  # None: SASL_PLAINTEXT, else SASL_SSL
            )
        elif self.tls:
            kwargs["broker_credentials"] = faust.SSLCredentials(self.ssl_context)
        return kwargs

    def env(self) -> dict[str, str]:
        """The same connection as environment variables, for a child process."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "KAFKA_SECURITY_PROTOCOL": self.security_protocol,
            "KAFKA_SASL_MECHANISM": self.sasl_mechanism,
            "KAFKA_SASL_USERNAME": self.sasl_username or "",
            "KAFKA_SASL_PASSWORD": "",
            "KAFKA_SASL_PASSWORD_FILE": self.sasl_password_file or "",
            "KAFKA_SASL_OAUTH_TOKEN_FILE": self.sasl_oauth_token_file or "",
            "KAFKA_SSL_CAFILE": self.ssl_cafile or "",
            "KAFKA_SSL_CERTFILE": self.ssl_certfile or "",
            "KAFKA_SSL_KEYFILE": self.ssl_keyfile or "",
        }
        if self.sasl_password and not self.sasl_password_file:
            env["KAFKA_SASL_PASSWORD"] = self.sasl_password
        return env

    def describe(self) -> str:
        """For logs: where and how, never the password."""
        how = self.security_protocol
        if self.oauth:
            how += f" OAUTHBEARER with the token in {self.sasl_oauth_token_file}"
        elif self.sasl:
            how += f" {self.sasl_mechanism} as {self.sasl_username!r}"
        if self.tls:
            how += f", trusting {self.ssl_cafile or 'the system CAs'}"
        return f"{self.bootstrap_servers} ({how})"

    async def check(self, timeout: float = 60.0) -> None:
        """Connect and authenticate to a bootstrap server, as every client will.

        aiokafka's clients log why they could not connect and then say only
        "Unable to bootstrap"; this says why, in one line. A refusal (TLS trust,
        credentials, mechanism) raises KafkaRefused at once; no answer is tried
        again until `timeout`, then raises KafkaUnreachable.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            last = None
            for host, port, _ in collect_hosts(self.bootstrap_servers, randomize=False):
                try:
                    conn = await create_conn(
                        host, port, request_timeout_ms=10_000, **self._conn_kwargs()
                    )
                except Exception as exc:  # each cause gets its line in _refusal or _reason
                    refused = self._refusal(host, port, exc)
                    if refused is not None:
                        raise refused from None
                    last = f"{host}:{port}: {_reason(exc)}"
                    continue
                conn.close()
                return
            if loop.time() > deadline:
                raise KafkaUnreachable(
                    f"no Kafka broker answers at {self.bootstrap_servers} "
                    f"({self.security_protocol}): {last}"
                )
            await asyncio.sleep(1.0)  # retry interval while the brokers come up

    def _conn_kwargs(self) -> dict[str, Any]:
        kwargs = self.aiokafka_kwargs()
        del kwargs["bootstrap_servers"]
        return kwargs

    def _refusal(self, host: str, port: int, exc: BaseException) -> KafkaRefused | None:
        where = f"{host}:{port}"
        if isinstance(exc, ssl.SSLCertVerificationError):
            return KafkaRefused(
                f"TLS: the certificate of the broker at {where} is not trusted "
                f"({exc.verify_message}); KAFKA_SSL_CAFILE must hold the CA that signed it "
                f"(now: {self.ssl_cafile or 'the system CAs'})"
            )
        if isinstance(exc, ssl.SSLError):
            return KafkaRefused(
                f"TLS handshake with {where} failed ({exc.reason or exc}): "
                f"is that listener {self.security_protocol}?"
            )
        if isinstance(exc, UnsupportedSaslMechanismError):
            return KafkaRefused(f"SASL: {exc.args[0] if exc.args else exc} (at {where})")
        if isinstance(exc, SettingsError):  # the token file went missing or empty
            return KafkaRefused(str(exc))
        if isinstance(exc, BrokerResponseError) and self.oauth:
            return KafkaRefused(
                f"SASL authentication with the OAUTHBEARER token in {self.sasl_oauth_token_file} "
                f"at {where} failed: {_reason(exc)}; check that the token is current and that "
                "the brokers trust its issuer"
            )
        if isinstance(exc, BrokerResponseError) and self.sasl:
            # SaslAuthenticationFailed, IllegalSaslState... : the broker said no
            return KafkaRefused(
                f"SASL authentication of {self.sasl_username!r} ({self.sasl_mechanism}) at "
                f"{where} failed: {_reason(exc)}; check KAFKA_SASL_USERNAME and the password"
            )
        return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KafkaConnectionError | KafkaError | OSError | asyncio.TimeoutError):
        text = str(exc) or type(exc).__name__
    else:
        text = repr(exc)
    return " ".join(text.split())  # one line
