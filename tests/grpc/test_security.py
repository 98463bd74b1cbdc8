"""TLS, mutual TLS and the bearer token, over real loopback gRPC with certificates made here.

The probe servicer of test_runtime stands in for a service: it is the runtime's security that
is under test, the same for every service and the orchestrator.
"""
from __future__ import annotations

import datetime
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from orchestrator.dispatch import ServicePool
from services.common.client import health_status, open_channel, wait_job
from services.common.runtime import ServiceRuntime, parse_config
from services.common.security import ClientSecurity, ServerSecurity
from services.common.store import ObjectStore
from synthaug.v1 import common_pb2, compositor_pb2, compositor_pb2_grpc
from tests.grpc.test_runtime import SERVICE, build_probe, metric
from tests.grpc_helpers import loopback_config

TOKEN = "s3cret-token-for-tests-0123456789"

# ---------------------------------------------------------------------------------------------
# a throw-away PKI: a CA, a server certificate for "localhost", a client certificate, and a
# second CA that nothing trusts


@dataclass(frozen=True)
class Pki:
    ca: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    rogue_ca: str
    rogue_client_cert: str
    rogue_client_key: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
                 usage: x509.ObjectIdentifier | None = None, dns: tuple[str, ...] = ()) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    issuer_name, issuer_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                                      key_encipherment=False, data_encipherment=False, key_agreement=False,
                                                      encipher_only=False, decipher_only=False), critical=True)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        assert key is not None
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, rogue_key = _key(), _key()
    ca = _certificate("synthaug test CA", ca_key, None)
    rogue = _certificate("nobody's CA", rogue_key, None)
    server_key, client_key, rogue_client_key = _key(), _key(), _key()
    # The server certificate names "localhost" only: dialling 127.0.0.1 must use the name.
    server = _certificate("localhost", server_key, (ca, ca_key), ExtendedKeyUsageOID.SERVER_AUTH, dns=("localhost",))
    client = _certificate("synthaug client", client_key, (ca, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_client = _certificate("intruder", rogue_client_key, (rogue, rogue_key), ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        ca=_write(d / "ca.pem", ca), server_cert=_write(d / "server.pem", server), server_key=_write(d / "server.key", key=server_key),
        client_cert=_write(d / "client.pem", client), client_key=_write(d / "client.key", key=client_key),
        rogue_ca=_write(d / "rogue-ca.pem", rogue), rogue_client_cert=_write(d / "rogue-client.pem", rogue_client),
        rogue_client_key=_write(d / "rogue-client.key", key=rogue_client_key),
    )


def start(store: ObjectStore, security: ServerSecurity, **overrides: object) -> ServiceRuntime:
    runtime = build_probe(loopback_config("compositor", metrics_port=-1, security=security, **overrides), store)
    runtime.start()
    return runtime


@pytest.fixture()
def servers() -> Iterator[list[ServiceRuntime]]:
    started: list[ServiceRuntime] = []
    yield started
    for runtime in started:
        runtime.stop(grace=0.5)


def stub_for(port: int, security: ClientSecurity, server_name: str | None = "localhost") -> tuple[grpc.Channel, compositor_pb2_grpc.CompositorServiceStub]:
    channel = open_channel(f"127.0.0.1:{port}", security=security, server_name=server_name)
    return channel, compositor_pb2_grpc.CompositorServiceStub(channel)


def code_of(method: Any, request: Any, **kwargs: Any) -> grpc.StatusCode:
    """The status code `method(request)` fails with (a server stream: on its first read)."""
    with pytest.raises(grpc.RpcError) as info:
        result = method(request, **kwargs)
        if hasattr(result, "__iter__") and not hasattr(result, "SerializeToString"):
            list(result)
    return info.value.code()


# ---------------------------------------------------------------------------------------------
# the token


def test_token_guards_every_rpc_but_health(file_store: ObjectStore, servers: list[ServiceRuntime]) -> None:
    runtime = start(file_store, ServerSecurity(token=TOKEN))
    servers.append(runtime)
    good_channel, good = stub_for(runtime.port, ClientSecurity(token=TOKEN))
    anon_channel, anonymous = stub_for(runtime.port, ClientSecurity())
    wrong_channel, wrong = stub_for(runtime.port, ClientSecurity(token="not-the-token-but-long-enough"))
    try:
        runtime.probe.release.clear()  # type: ignore[attr-defined]  # the job waits, so it can be cancelled
        ref = good.SubmitCompose(compositor_pb2.ComposeRequest(count=2, seed=1))
        for stub in (anonymous, wrong):
            assert code_of(stub.SubmitCompose, compositor_pb2.ComposeRequest(count=1, seed=2)) == grpc.StatusCode.UNAUTHENTICATED
            # Whoever may not submit may not look at or cancel someone else's job either.
            assert code_of(stub.GetJob, common_pb2.GetJobRequest(job_id=ref.id)) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.CancelJob, common_pb2.CancelJobRequest(job_id=ref.id)) == grpc.StatusCode.UNAUTHENTICATED
            assert code_of(stub.WatchJob, common_pb2.WatchJobRequest(job_id=ref.id)) == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            anonymous.SubmitCompose(compositor_pb2.ComposeRequest(count=1, seed=2))
        assert "SYNTHAUG_AUTH_TOKEN" in info.value.details() and TOKEN not in info.value.details()
        # Reflection tells the API to token holders only; health answers everyone (probes).
        refl = reflection_pb2_grpc.ServerReflectionStub(anon_channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        assert code_of(refl.ServerReflectionInfo, iter([request])) == grpc.StatusCode.UNAUTHENTICATED
        assert health_status(anon_channel) == "SERVING"
        assert health_status(anon_channel, SERVICE) == "SERVING"
        # The refused cancels changed nothing: the job runs to the end for its owner.
        assert good.GetJob(common_pb2.GetJobRequest(job_id=ref.id)).state in (common_pb2.JOB_STATE_QUEUED, common_pb2.JOB_STATE_RUNNING)
        runtime.probe.release.set()  # type: ignore[attr-defined]
        assert wait_job(good, ref, timeout=30).metrics["count"] == 2
        assert runtime.probe.runs == 1  # type: ignore[attr-defined]  # refused submissions ran nothing
        labels = {"grpc_service": SERVICE, "grpc_method": "SubmitCompose", "grpc_code": "UNAUTHENTICATED"}
        assert metric(runtime, "grpc_server_handled_total", labels) == 3
    finally:
        for channel in (good_channel, anon_channel, wrong_channel):
            channel.close()


def test_token_from_a_file_and_too_short_tokens(tmp_path: Path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert ClientSecurity.from_env({"SYNTHAUG_AUTH_TOKEN_FILE": str(tmp_path / "token")}).token == TOKEN
    config = parse_config("gan", ["--auth-token-file", str(tmp_path / "token")], {})
    assert config.security.token == TOKEN and not config.security.tls
    assert parse_config("gan", [], {"SYNTHAUG_AUTH_TOKEN": TOKEN}).security.token == TOKEN
    with pytest.raises(SystemExit, match="at least 16"):
        parse_config("gan", [], {"SYNTHAUG_AUTH_TOKEN": "short"})
    with pytest.raises(SystemExit, match="SYNTHAUG_AUTH_TOKEN_FILE"):
        parse_config("gan", [], {"SYNTHAUG_AUTH_TOKEN_FILE": str(tmp_path / "missing")})


# ---------------------------------------------------------------------------------------------
# TLS and mutual TLS


def test_tls_server_refuses_plaintext_and_unknown_servers_are_refused(file_store: ObjectStore, servers: list[ServiceRuntime], pki: Pki) -> None:
    runtime = start(file_store, ServerSecurity(cert_file=pki.server_cert, key_file=pki.server_key, token=TOKEN))
    servers.append(runtime)
    request = compositor_pb2.ComposeRequest(count=1, seed=3)
    cases = {
        "plaintext client": ClientSecurity(token=TOKEN),
        "client trusting another CA": ClientSecurity(ca_file=pki.rogue_ca, token=TOKEN),
    }
    for what, security in cases.items():
        channel, stub = stub_for(runtime.port, security)
        try:
            assert code_of(stub.SubmitCompose, request, timeout=5) == grpc.StatusCode.UNAVAILABLE, what
        finally:
            channel.close()
    # The right CA but the wrong name: the certificate is for "localhost".
    channel, stub = stub_for(runtime.port, ClientSecurity(ca_file=pki.ca, token=TOKEN), server_name="compositor.example")
    try:
        assert code_of(stub.SubmitCompose, request, timeout=5) == grpc.StatusCode.UNAVAILABLE
    finally:
        channel.close()
    # TLS without the token is still UNAUTHENTICATED; with both it works.
    for token, expected in ((None, grpc.StatusCode.UNAUTHENTICATED), (TOKEN, None)):
        channel, stub = stub_for(runtime.port, ClientSecurity(ca_file=pki.ca, token=token))
        try:
            if expected is None:
                assert wait_job(stub, stub.SubmitCompose(request), timeout=30).metrics["count"] == 1
            else:
                assert code_of(stub.SubmitCompose, request) == expected
        finally:
            channel.close()


def test_mutual_tls_needs_a_client_certificate_from_the_right_ca(file_store: ObjectStore, servers: list[ServiceRuntime], pki: Pki) -> None:
    runtime = start(file_store, ServerSecurity(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca))
    servers.append(runtime)
    request = compositor_pb2.ComposeRequest(count=1, seed=4)
    refused = {
        "no client certificate": ClientSecurity(ca_file=pki.ca),
        "a certificate from another CA": ClientSecurity(ca_file=pki.ca, client_cert_file=pki.rogue_client_cert, client_key_file=pki.rogue_client_key),
    }
    for what, security in refused.items():
        channel, stub = stub_for(runtime.port, security)
        try:
            assert code_of(stub.SubmitCompose, request, timeout=5) == grpc.StatusCode.UNAVAILABLE, what
            # ... and no health either: mutual TLS admits nobody without a certificate.
            with pytest.raises(grpc.RpcError):
                health_status(channel, timeout=5)
        finally:
            channel.close()
    channel, stub = stub_for(runtime.port, ClientSecurity(ca_file=pki.ca, client_cert_file=pki.client_cert, client_key_file=pki.client_key))
    try:
        assert wait_job(stub, stub.SubmitCompose(request), timeout=30).metrics["count"] == 1
    finally:
        channel.close()


def test_plaintext_health_port_of_a_tls_server_serves_health_only(file_store: ObjectStore, servers: list[ServiceRuntime], pki: Pki) -> None:
    """Kubernetes gRPC probes cannot do TLS: they ask the health-only port."""
    runtime = build_probe(loopback_config("compositor", metrics_port=-1, health_port=0,
                                          security=ServerSecurity(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca)),
                          file_store)
    servers.append(runtime)
    runtime.start(ready=False)
    assert runtime.health_port and runtime.health_port != runtime.port
    channel = open_channel(f"127.0.0.1:{runtime.health_port}", security=ClientSecurity())
    try:
        assert health_status(channel) == "NOT_SERVING"  # the same truth as the TLS port
        runtime.mark_ready()
        assert health_status(channel) == "SERVING" and health_status(channel, SERVICE) == "SERVING"
        stub = compositor_pb2_grpc.CompositorServiceStub(channel)
        assert code_of(stub.SubmitCompose, compositor_pb2.ComposeRequest(count=1)) == grpc.StatusCode.UNIMPLEMENTED
        stopper = threading.Thread(target=runtime.stop, kwargs={"grace": 0.5})
        stopper.start()
        stopper.join(timeout=30)
        with pytest.raises(grpc.RpcError):  # stopping closes the health port too
            health_status(channel, timeout=2)
    finally:
        channel.close()


def test_tls_settings_from_flags_and_environment(pki: Pki) -> None:
    env = {"SYNTHAUG_TLS_CERT": pki.server_cert, "SYNTHAUG_TLS_KEY": pki.server_key, "SYNTHAUG_TLS_CLIENT_CA": pki.ca, "SYNTHAUG_HEALTH_PORT": "8086"}
    config = parse_config("segmenter", [], env)
    assert config.security == ServerSecurity(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca)
    assert config.health_port == 8086
    assert parse_config("segmenter", ["--tls-client-ca", ""], env).security.client_ca_file is None
    with pytest.raises(SystemExit, match="both SYNTHAUG_TLS_CERT and SYNTHAUG_TLS_KEY"):
        parse_config("segmenter", [], {"SYNTHAUG_TLS_CERT": pki.server_cert})
    with pytest.raises(SystemExit, match="needs SYNTHAUG_TLS_CERT"):
        parse_config("segmenter", [], {"SYNTHAUG_TLS_CLIENT_CA": pki.ca})
    client = ClientSecurity.from_env({"SYNTHAUG_TLS_CA": pki.ca, "SYNTHAUG_TLS_CLIENT_CERT": pki.client_cert, "SYNTHAUG_TLS_CLIENT_KEY": pki.client_key})
    assert client.tls and client.client_cert_file == pki.client_cert
    with pytest.raises(Exception, match="SYNTHAUG_TLS_CA"):
        ClientSecurity.from_env({"SYNTHAUG_TLS_CLIENT_CERT": pki.client_cert, "SYNTHAUG_TLS_CLIENT_KEY": pki.client_key})


# ---------------------------------------------------------------------------------------------
# the orchestrator's dispatcher as a client


def test_dispatcher_reaches_tls_and_token_replicas_by_name(file_store: ObjectStore, servers: list[ServiceRuntime], pki: Pki) -> None:
    """A replica is dialled by IP; its certificate is checked against the name it resolved from."""
    security = ServerSecurity(cert_file=pki.server_cert, key_file=pki.server_key, client_ca_file=pki.ca, token=TOKEN)
    runtime = start(file_store, security)
    servers.append(runtime)
    client = ClientSecurity(ca_file=pki.ca, client_cert_file=pki.client_cert, client_key_file=pki.client_key, token=TOKEN)
    pool = ServicePool("compositor", [f"localhost:{runtime.port}"], backoff=0.05, security=client)
    try:
        outcome = pool.run_job("SubmitCompose", compositor_pb2.ComposeRequest(count=3, seed=5))
        assert outcome.result.metrics["count"] == 3
        assert outcome.replica.endswith(f":{runtime.port}") and not outcome.replica.startswith("localhost")
    finally:
        pool.close()
    # Without the token the dispatcher reports the refusal, naming the setting.
    pool = ServicePool("compositor", [f"localhost:{runtime.port}"], backoff=0.05,
                       security=ClientSecurity(ca_file=pki.ca, client_cert_file=pki.client_cert, client_key_file=pki.client_key))
    try:
        with pytest.raises(Exception, match="SYNTHAUG_AUTH_TOKEN") as info:
            pool.run_job("SubmitCompose", compositor_pb2.ComposeRequest(count=1, seed=6))
        assert getattr(info.value, "code", "") == "UNAUTHENTICATED"
    finally:
        pool.close()
