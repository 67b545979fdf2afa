"""SIP over TLS (RFC 3261 26.2, sips:) end to end: a server configured with a certificate
listens on tls:127.0.0.1:0, an SRC that pins that certificate opens a SIPREC session over it
(the RFC 7866 example), and the recording is stored as taken over TLS.

The certificate is a throwaway self-signed one made here with `cryptography`, valid for the IP
address 127.0.0.1, so the client verifies it exactly as it would a real one (pinned as the only
trusted CA) instead of turning verification off.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from siprec_server.app import RunningServer
from siprec_server.sip.message import SipRequest, build_response, parse_address
from storage import recordings
from tests.integration.conftest import sip_address
from tests.integration.test_sip_errors import own_server
from tests.sip_client import SipTestClient, interop_case


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A P-256 key and a one-day certificate for 127.0.0.1, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siprec-test-srs")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "srs-cert.pem"
    key_file = directory / "srs-key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    key_file.chmod(0o600)
    return cert_file, key_file


class TlsSipTestClient(SipTestClient):
    """SipTestClient over one TLS connection (it only knows UDP and TCP)."""

    def __init__(self, server: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__("tls", server)
        self._context = context

    async def __aenter__(self) -> TlsSipTestClient:
        reader, writer = await asyncio.open_connection(*self.server, ssl=self._context)
        self._writer = writer
        self.port = writer.get_extra_info("sockname")[1]
        self._reader_task = asyncio.create_task(self._read_stream(reader))
        return self


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


@pytest.fixture
async def tls_server(
    db_dsn: str, data_dir: Path, certificate: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    cert_file, key_file = certificate
    async with own_server(
        db_dsn, data_dir,
        sip__listen="udp:127.0.0.1:0,tcp:127.0.0.1:0,tls:127.0.0.1:0",
        sip__tls__cert_file=str(cert_file),
        sip__tls__key_file=str(key_file),
    ) as srv:
        yield srv


def pinned_context(cert_file: Path) -> ssl.SSLContext:
    """Trust exactly the server's certificate; hostname (IP SAN) checking stays on."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert_file))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def test_siprec_call_over_tls_is_recorded(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    address = sip_address(tls_server, "tls")
    async with TlsSipTestClient(address, pinned_context(certificate[0])) as src:
        response, dialog = await src.invite(interop_case("rfc7866_1"))
        assert response.status == 200
        assert dialog is not None
        # RFC 3261 19.1 / 26.2: the SRS's Contact over TLS is a sips: URI on its TLS port.
        contact = parse_address(response.headers.get("Contact") or "")
        assert contact.uri.scheme == "sips"
        assert contact.uri.port == address[1]
        assert "+sip.srs" in (response.headers.get("Contact") or "")
        assert b"m=audio" in response.body and b"a=recvonly" in response.body
        ids = await recordings.find_by_call_id(tls_server.db, dialog.call_id)
        assert len(ids) == 1
        assert (await src.bye(dialog)).status == 200
    row: dict[str, Any] | None = None
    for _ in range(100):
        row = await recordings.get_recording(tls_server.db, ids[0])
        if row is not None and row["state"] == "complete":
            break
        await asyncio.sleep(0.02)
    assert row is not None and row["state"] == "complete"
    assert row["transport"] == "tls"
    assert {p["aor"] for p in row["participants"]} == {
        "sip:alice@atlanta.com", "sip:bob@biloxy.com"}
    assert len(row["metadata_events"]) == 1
    assert tls_server.recorder.active_sessions == 0


async def test_shutdown_hangs_up_over_the_same_tls_connection(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    """A node taken out of service (SIGTERM) ends every session with BYE (RFC 3261 15.1),
    sent back over the TLS connection the SRC opened."""
    address = sip_address(tls_server, "tls")
    async with TlsSipTestClient(address, pinned_context(certificate[0])) as src:
        response, dialog = await src.invite(interop_case("rfc7866_1"))
        assert response.status == 200 and dialog is not None
        shutdown = asyncio.create_task(tls_server.recorder.shutdown(timeout=5))
        bye = await src.receive(timeout=5)
        assert isinstance(bye, SipRequest) and bye.method == "BYE"
        assert bye.call_id == dialog.call_id
        assert bye.top_via.transport.upper() == "TLS"
        src.send(build_response(bye, 200).to_bytes())
        await shutdown
    [recording_id] = await recordings.find_by_call_id(tls_server.db, dialog.call_id)
    row = await recordings.get_recording(tls_server.db, recording_id)
    assert row is not None and row["state"] == "complete"


async def test_plaintext_on_the_tls_port_gets_no_sip_answer(
    tls_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    address = sip_address(tls_server, "tls")
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(b"OPTIONS sip:srs@127.0.0.1 SIP/2.0\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    assert not answer.startswith(b"SIP/2.0"), "SIP must never be spoken in the clear there"
    # A client that does not trust the certificate is refused by its own check.
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(*address, ssl=ssl.create_default_context())
    # The listener is unharmed: the next SRC still gets an OPTIONS answer over TLS.
    async with TlsSipTestClient(address, pinned_context(certificate[0])) as src:
        lines = [
            f"OPTIONS sip:srs@127.0.0.1:{address[1]} SIP/2.0",
            f"Via: {src.via()}",
            "From: <sip:ping@127.0.0.1>;tag=tls1",
            "To: <sip:srs@127.0.0.1>",
            "Call-ID: tls-options@127.0.0.1",
            "CSeq: 1 OPTIONS",
            "Max-Forwards: 70",
            "Content-Length: 0",
        ]
        src.send(("\r\n".join(lines) + "\r\n\r\n").encode())
        response = await src.response("OPTIONS")
        assert response.status == 200
        assert "siprec" in response.headers.tokens("Supported")


def client_ca_and_certificate(directory: Path) -> tuple[Path, Path, Path]:
    """A CA for SRCs, and an SBC's client certificate (and key) it issued."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "siprec-test-src-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    client = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sbc1.example.com")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = (directory / "src-ca.pem", directory / "sbc-cert.pem",
                                    directory / "sbc-key.pem")
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return ca_file, cert_file, key_file


async def test_mutual_tls_admits_only_srcs_with_a_certificate_from_the_configured_ca(
    db_dsn: str, data_dir: Path, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    cert_file, key_file = certificate
    ca_file, sbc_cert, sbc_key = client_ca_and_certificate(tmp_path)
    async with own_server(
        db_dsn, data_dir, sip__listen="tls:127.0.0.1:0",
        sip__tls__cert_file=str(cert_file), sip__tls__key_file=str(key_file),
        sip__tls__ca_file=str(ca_file),
    ) as srv:
        address = sip_address(srv, "tls")
        # No client certificate: the handshake (TLS 1.3: the first read) fails, nothing recorded.
        anonymous = pinned_context(cert_file)
        with pytest.raises((ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)):
            reader, writer = await asyncio.open_connection(*address, ssl=anonymous)
            writer.write(b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(1), 5)
        # The SBC's certificate: the call is recorded.
        trusted = pinned_context(cert_file)
        trusted.load_cert_chain(sbc_cert, sbc_key)
        async with TlsSipTestClient(address, trusted) as src:
            response, dialog = await src.invite(interop_case("rfc7866_1"))
            assert response.status == 200 and dialog is not None
            assert (await src.bye(dialog)).status == 200
        assert int(await srv.db.fetchval("SELECT count(*) FROM recordings")) == 1
