"""TCP callers authenticate: mutual TLS (tenant = the client certificate's common name) or
bearer tokens from a private token file; unauthenticated TCP only with insecure_tcp = true.

Certificates are made here, and every TLS test is a real handshake on loopback.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gpuos.client import ApiError, Client
from gpuos.daemon.daemon import Daemon
from tests.conftest import serve

TOKEN_ALICE = "a" * 8 + "1f2e3d4c5b6a7988"
TOKEN_BOB = "b" * 8 + "8897a6b5c4d3e2f1"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    alice: tuple[Path, Path]
    bob: tuple[Path, Path]
    stranger: tuple[Path, Path]  # signed by another CA


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str, issuer_key: ec.EllipticCurvePrivateKey, *,
          ca: bool = False, server: bool = False) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return path.with_suffix(".crt")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, other_ca_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = _write(d / "ca", _cert("gpuos test CA", ca_key, "gpuos test CA", ca_key, ca=True))
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _write(d / "server", _cert("localhost", server_key, "gpuos test CA", ca_key, server=True), server_key)

    def client(cn: str, issuer: str, issuer_key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
        key = ec.generate_private_key(ec.SECP256R1())
        return _write(d / cn, _cert(cn, key, issuer, issuer_key), key), (d / cn).with_suffix(".key")

    return Pki(ca, server, server.with_suffix(".key"), client("alice", "gpuos test CA", ca_key),
               client("bob", "gpuos test CA", ca_key), client("mallory", "other CA", other_ca_key))


def _serve(base: Path, **settings: object) -> Iterator[Daemon]:
    yield from serve(base, listen="127.0.0.1:0", **settings)


@pytest.fixture
def mtls_daemon(short_dir: Path, pki: Pki) -> Iterator[Daemon]:
    yield from _serve(short_dir, tls_cert=str(pki.server_cert), tls_key=str(pki.server_key), tls_ca=str(pki.ca))


@pytest.fixture
def token_daemon(short_dir: Path) -> Iterator[Daemon]:
    tokens = short_dir / "tokens"
    tokens.write_text(f"# token tenant\n{TOKEN_ALICE} alice\n{TOKEN_BOB} bob\n")
    os.chmod(tokens, 0o600)
    yield from _serve(short_dir, token_file=str(tokens))


def tls_client(daemon: Daemon, pki: Pki, who: tuple[Path, Path] | None) -> Client:
    cert, key = who if who else (None, None)
    return Client(addr=f"localhost:{daemon.tcp_port}", timeout=10, tls_ca=str(pki.ca),
                  tls_cert=str(cert) if cert else None, tls_key=str(key) if key else None)


def token_client(daemon: Daemon, token: str | None) -> Client:
    return Client(addr=f"127.0.0.1:{daemon.tcp_port}", timeout=10, token=token)


# -- mutual TLS ---------------------------------------------------------------------------------


def test_a_client_certificate_makes_its_common_name_the_tenant(mtls_daemon: Daemon, pki: Pki) -> None:
    with tls_client(mtls_daemon, pki, pki.alice) as alice:
        job = alice.submit(["true"], env={})
    assert job.spec.tenant == "alice" and job.owner_uid == 65534


def test_a_tls_tenant_cannot_see_another_tls_tenants_job(mtls_daemon: Daemon, pki: Pki) -> None:
    with tls_client(mtls_daemon, pki, pki.alice) as alice, tls_client(mtls_daemon, pki, pki.bob) as bob:
        job = alice.submit(["sleep", "30"], env={})
        with pytest.raises(ApiError) as err:
            bob.get(job.id)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        assert job.id not in {j.id for j in bob.list()}
        assert alice.get(job.id).spec.tenant == "alice"
        alice.cancel(job.id)


def test_a_tls_tenant_is_not_an_admin(mtls_daemon: Daemon, pki: Pki) -> None:
    with tls_client(mtls_daemon, pki, pki.alice) as alice, pytest.raises(ApiError) as err:
        alice.set_policy("fifo")
    assert err.value.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(mtls_daemon: Daemon, pki: Pki) -> None:
    with tls_client(mtls_daemon, pki, pki.stranger) as stranger, pytest.raises(ApiError) as err:
        stranger.devices()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_a_tls_client_without_a_certificate_is_refused(mtls_daemon: Daemon, pki: Pki) -> None:
    with tls_client(mtls_daemon, pki, None) as anonymous, pytest.raises(ApiError) as err:
        anonymous.devices()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


def test_plain_tcp_to_a_tls_port_is_refused(mtls_daemon: Daemon) -> None:
    with token_client(mtls_daemon, None) as plain, pytest.raises(ApiError) as err:
        plain.devices()
    assert err.value.code == grpc.StatusCode.UNAVAILABLE


# -- bearer tokens ------------------------------------------------------------------------------


def test_a_good_token_acts_as_its_tenant(token_daemon: Daemon) -> None:
    with token_client(token_daemon, TOKEN_BOB) as bob:
        job = bob.submit(["true"], env={})
        assert job.spec.tenant == "bob"
        assert bob.get(job.id).id == job.id


def test_a_token_tenant_cannot_see_another_token_tenants_job(token_daemon: Daemon) -> None:
    with token_client(token_daemon, TOKEN_ALICE) as alice, token_client(token_daemon, TOKEN_BOB) as bob:
        job = alice.submit(["true"], env={})
        with pytest.raises(ApiError) as err:
            bob.get(job.id)
        assert err.value.code == grpc.StatusCode.NOT_FOUND


def test_a_wrong_token_is_unauthenticated(token_daemon: Daemon) -> None:
    with token_client(token_daemon, TOKEN_ALICE[:-1] + "0") as wrong, pytest.raises(ApiError) as err:
        wrong.devices()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_missing_token_is_unauthenticated(token_daemon: Daemon) -> None:
    with token_client(token_daemon, None) as anonymous, pytest.raises(ApiError) as err:
        anonymous.list()
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer token" in err.value.details


def test_streams_need_the_token_too(token_daemon: Daemon) -> None:
    with token_client(token_daemon, None) as anonymous, pytest.raises(ApiError) as err:
        list(anonymous.events())
    assert err.value.code == grpc.StatusCode.UNAUTHENTICATED


def test_the_unix_socket_ignores_tokens_and_keeps_the_callers_uid(token_daemon: Daemon) -> None:
    with Client(socket=token_daemon.config.socket, token=TOKEN_ALICE) as local:
        assert local.submit(["true"], env={}).spec.tenant == "root"


def test_gpuosctl_sends_the_token_from_its_token_file(token_daemon: Daemon, short_dir: Path) -> None:
    mine = short_dir / "my-token"
    mine.write_text(TOKEN_ALICE + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "gpuos.cli.main", "--addr", f"127.0.0.1:{token_daemon.tcp_port}", "--token-file",
         str(mine), "-o", "json", "submit", "--no-env", "--", "true"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert '"tenant": "alice"' in result.stdout


# -- refusing to start --------------------------------------------------------------------------


def gpuosd(base: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpuos.daemon.main", "--socket", str(base / "gpuos.sock"), "--state-dir",
         str(base / "state"), "--backend", "sim", "--listen", "127.0.0.1:0", *args],
        capture_output=True, text=True, timeout=60,
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one line gpuosd gave for refusing to start (log lines before it aside)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("gpuosd:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_listen_without_authentication_refuses_to_start_naming_the_settings(short_dir: Path) -> None:
    result = gpuosd(short_dir)
    assert result.returncode == 1
    line = refusal(result)
    for setting in ("tls_cert", "tls_key", "tls_ca", "token_file", "insecure_tcp"):
        assert setting in line


def test_a_token_file_others_may_read_refuses_to_start(short_dir: Path) -> None:
    tokens = short_dir / "tokens"
    tokens.write_text(f"{TOKEN_ALICE} alice\n")
    os.chmod(tokens, 0o644)
    result = gpuosd(short_dir, "--token-file", str(tokens))
    assert result.returncode == 1
    line = refusal(result)
    assert "token_file" in line and "0644" in line and "chmod 600" in line


def test_a_token_file_of_another_user_refuses_to_start(short_dir: Path) -> None:
    tokens = short_dir / "tokens"
    tokens.write_text(f"{TOKEN_ALICE} alice\n")
    os.chmod(tokens, 0o600)
    os.chown(tokens, 54321, 54321)
    result = gpuosd(short_dir, "--token-file", str(tokens))
    assert result.returncode == 1
    line = refusal(result)
    assert "token_file" in line and "chown" in line


def test_insecure_tcp_serves_as_tcp_tenant_and_warns(short_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="gpuos.daemon"):
        served = _serve(short_dir, insecure_tcp=True, tcp_tenant="guests")
        daemon = next(served)
    try:
        assert any("without authentication" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")
        with token_client(daemon, None) as anyone:
            assert anyone.submit(["true"], env={}).spec.tenant == "guests"
    finally:
        next(served, None)
