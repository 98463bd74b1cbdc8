"""Transport security and authentication for every synthaug gRPC server and client.

Both are optional and off by default, which is safe only because servers bind 127.0.0.1
unless told otherwise (deploy/ sets SYNTHAUG_HOST=0.0.0.0 and turns the token on):

- TLS: a server with SYNTHAUG_TLS_CERT + SYNTHAUG_TLS_KEY serves TLS only; with
  SYNTHAUG_TLS_CLIENT_CA as well it requires a client certificate signed by that CA (mutual
  TLS). A client uses TLS when SYNTHAUG_TLS_CA names the CA that signed the server's
  certificate, and presents SYNTHAUG_TLS_CLIENT_CERT + SYNTHAUG_TLS_CLIENT_KEY when given.
- Bearer token: a server with SYNTHAUG_AUTH_TOKEN (or SYNTHAUG_AUTH_TOKEN_FILE, a mounted
  secret) answers UNAUTHENTICATED to every call without `authorization: Bearer <token>`:
  submitting, watching, getting and cancelling jobs alike, so whoever may not submit may not
  cancel either. A client with the same setting sends the token on every call.

grpc.health.v1 is exempt from the token: Kubernetes gRPC probes and load balancers send no
metadata, and health answers reveal nothing but SERVING / NOT_SERVING. Probes cannot speak
TLS either, so a TLS server can also serve health alone, in plaintext, on a second port
(SYNTHAUG_HEALTH_PORT; see runtime.py).
"""
from __future__ import annotations

import collections
import hmac
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grpc

from services.common.errors import InvalidArgument
from services.common.store import read_secret

#: Settings a server reads (flags override them; see runtime.parse_config).
SERVER_ENV_VARS = ("SYNTHAUG_TLS_CERT", "SYNTHAUG_TLS_KEY", "SYNTHAUG_TLS_CLIENT_CA", "SYNTHAUG_AUTH_TOKEN", "SYNTHAUG_AUTH_TOKEN_FILE")
#: Settings a client reads (the CLI, the orchestrator's dispatcher, tests).
CLIENT_ENV_VARS = (
    "SYNTHAUG_TLS_CA",
    "SYNTHAUG_TLS_CLIENT_CERT",
    "SYNTHAUG_TLS_CLIENT_KEY",
    "SYNTHAUG_TLS_SERVER_NAME",
    "SYNTHAUG_AUTH_TOKEN",
    "SYNTHAUG_AUTH_TOKEN_FILE",
)
#: RPC method prefixes that need no token (see the module docstring).
TOKEN_EXEMPT = ("/grpc.health.v1.Health/",)
#: A shorter token is refused: it could be guessed.
MIN_TOKEN_LENGTH = 16


def _read(path: str, setting: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidArgument(f"cannot read {setting}={path!r}: {exc}") from exc


def _check_token(token: str | None) -> str | None:
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise InvalidArgument(f"SYNTHAUG_AUTH_TOKEN is {len(token)} characters; use at least {MIN_TOKEN_LENGTH} "
                              "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)")
    return token


@dataclass(frozen=True)
class ServerSecurity:
    """What a server demands of its callers."""

    cert_file: str | None = None
    key_file: str | None = None
    #: CA that must have signed client certificates: set = mutual TLS.
    client_ca_file: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line

    def __post_init__(self) -> None:
        if bool(self.cert_file) != bool(self.key_file):
            raise InvalidArgument("TLS needs both SYNTHAUG_TLS_CERT and SYNTHAUG_TLS_KEY (--tls-cert, --tls-key)")
        if self.client_ca_file and not self.cert_file:
            raise InvalidArgument("SYNTHAUG_TLS_CLIENT_CA (mutual TLS) needs SYNTHAUG_TLS_CERT and SYNTHAUG_TLS_KEY too")
        _check_token(self.token)

    @property
    def tls(self) -> bool:
        return bool(self.cert_file)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSecurity:
        env = os.environ if env is None else env
        return cls(
            cert_file=env.get("SYNTHAUG_TLS_CERT") or None,
            key_file=env.get("SYNTHAUG_TLS_KEY") or None,
            client_ca_file=env.get("SYNTHAUG_TLS_CLIENT_CA") or None,
            token=read_secret(env, "SYNTHAUG_AUTH_TOKEN"),
        )

    def credentials(self) -> grpc.ServerCredentials | None:
        """TLS credentials for the listening port; None for plaintext."""
        if not self.tls:
            return None
        assert self.cert_file and self.key_file
        pair = (_read(self.key_file, "SYNTHAUG_TLS_KEY"), _read(self.cert_file, "SYNTHAUG_TLS_CERT"))
        client_ca = _read(self.client_ca_file, "SYNTHAUG_TLS_CLIENT_CA") if self.client_ca_file else None
        return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)

    def authorized(self, method: str, metadata: Sequence[tuple[str, Any]] | None) -> bool:
        """Whether a call of `method` with this invocation metadata may proceed."""
        if self.token is None or method.startswith(TOKEN_EXEMPT):
            return True
        expected = f"bearer {self.token}".encode()
        for key, value in metadata or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                # Constant time: the comparison must not tell a caller how much of it was right.
                scheme, _, rest = given.partition(b" ")
                if hmac.compare_digest(scheme.lower() + b" " + rest.strip(), expected):
                    return True
        return False

    def describe(self) -> str:
        """For the start-up log line: what is on, never the secrets."""
        tls = ("mutual TLS" if self.client_ca_file else "TLS") if self.tls else "plaintext"
        return f"{tls}, {'bearer token required' if self.token else 'no token'}"


@dataclass(frozen=True)
class ClientSecurity:
    """How a client proves itself and checks the server."""

    #: CA that signed the server's certificate: set = TLS.
    ca_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    #: Name the server certificate must carry, when it differs from the address dialled
    #: (e.g. a port-forward to localhost, or a replica dialled by IP).
    server_name: str | None = None
    token: str | None = field(default=None, repr=False)  # never in a log line

    def __post_init__(self) -> None:
        if bool(self.client_cert_file) != bool(self.client_key_file):
            raise InvalidArgument("a client certificate needs both SYNTHAUG_TLS_CLIENT_CERT and SYNTHAUG_TLS_CLIENT_KEY")
        if self.client_cert_file and not self.ca_file:
            raise InvalidArgument("SYNTHAUG_TLS_CLIENT_CERT needs SYNTHAUG_TLS_CA (the CA that signed the server's certificate)")
        _check_token(self.token)

    @property
    def tls(self) -> bool:
        return bool(self.ca_file)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClientSecurity:
        env = os.environ if env is None else env
        return cls(
            ca_file=env.get("SYNTHAUG_TLS_CA") or None,
            client_cert_file=env.get("SYNTHAUG_TLS_CLIENT_CERT") or None,
            client_key_file=env.get("SYNTHAUG_TLS_CLIENT_KEY") or None,
            server_name=env.get("SYNTHAUG_TLS_SERVER_NAME") or None,
            token=read_secret(env, "SYNTHAUG_AUTH_TOKEN"),
        )

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials for a channel; None for plaintext."""
        if not self.tls:
            return None
        assert self.ca_file
        cert = _read(self.client_cert_file, "SYNTHAUG_TLS_CLIENT_CERT") if self.client_cert_file else None
        key = _read(self.client_key_file, "SYNTHAUG_TLS_CLIENT_KEY") if self.client_key_file else None
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca_file, "SYNTHAUG_TLS_CA"), private_key=key, certificate_chain=cert)

    def secure(self, channel: grpc.Channel) -> grpc.Channel:
        """`channel` sending the bearer token on every call (unchanged without a token)."""
        if self.token is None:
            return channel
        return grpc.intercept_channel(channel, _BearerToken(self.token))


class _CallDetails(
    collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
    grpc.ClientCallDetails,
):
    pass


class _BearerToken(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Adds `authorization: Bearer <token>` to every call. An interceptor rather than call
    credentials, because gRPC attaches call credentials to TLS channels only and the token
    also guards plaintext loopback services."""

    def __init__(self, token: str):
        self._header = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials,
                            getattr(details, "wait_for_ready", None), getattr(details, "compression", None))

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: grpc.ClientCallDetails, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)
