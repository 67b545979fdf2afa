"""The control API over HTTPS: a server configured with api.tls.cert_file / key_file answers
/healthz and a login to a client that pins its certificate, speaks no HTTP in the clear on that
port, and refuses TLS below 1.2.

The certificate is a throwaway self-signed one for 127.0.0.1 (tests/integration/test_sip_tls.py
makes it), trusted by the client as its only CA, so verification stays on as in production.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.services.accounts import create_account
from tests.integration.conftest import server_env
from tests.integration.test_recordings_api import CHEAP
from tests.integration.test_sip_tls import self_signed_certificate

PASSWORD = "a long enough password"
TIMEOUT = aiohttp.ClientTimeout(total=10)


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return self_signed_certificate(tmp_path)


@pytest.fixture
async def https_server(
    db_dsn: str, data_dir: Path, certificate: tuple[Path, Path]
) -> AsyncIterator[RunningServer]:
    cert_file, key_file = certificate
    config = load_config(env=server_env(db_dsn, data_dir, api__tls__cert_file=str(cert_file),
                                        api__tls__key_file=str(key_file)))
    srv = await start_server(config)
    try:
        yield srv
    finally:
        await srv.stop()


def pinned(cert_file: Path) -> ssl.SSLContext:
    """A client context that trusts exactly the server's certificate."""
    return ssl.create_default_context(cafile=str(cert_file))


def base_url(srv: RunningServer) -> str:
    host, port = srv.api_address
    return f"https://{host}:{port}"


async def test_healthz_over_https_with_the_pinned_certificate(
    https_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.get(base_url(https_server) + "/healthz",
                               ssl=pinned(certificate[0])) as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "database": "ok", "waiting_writes": 0}
        # Not trusted without the pin: the client's own verification refuses it, which shows
        # the answer above came from that certificate and not from verification being off.
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(base_url(https_server) + "/healthz",
                              ssl=ssl.create_default_context())


async def test_login_over_https_gives_a_token_that_works_over_https(
    https_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    await create_account(https_server.db, actor="test", username="olivia", role="supervisor",
                         password=PASSWORD, hashing=CHEAP)
    context = pinned(certificate[0])
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(base_url(https_server) + "/api/v1/auth/token", ssl=context,
                                json={"username": "olivia", "password": PASSWORD}) as response:
            assert response.status == 200
            assert response.headers["Cache-Control"] == "no-store"
            login = await response.json()
        assert login["token_type"] == "Bearer"
        async with session.get(base_url(https_server) + "/api/v1/users/me", ssl=context,
                               headers={"Authorization": f"Bearer {login['token']}"}) as me:
            assert me.status == 200
            assert (await me.json())["user"]["username"] == "olivia"


async def test_plain_http_to_the_https_port_gets_no_http_answer(
    https_server: RunningServer, certificate: tuple[Path, Path]
) -> None:
    host, port = https_server.api_address
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     "Connection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    except ConnectionResetError:
        answer = b""
    finally:
        writer.close()
    assert not answer.startswith(b"HTTP/"), "the API must never answer in the clear there"
    # An http:// client gets no response at all.
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        with pytest.raises(aiohttp.ClientError):
            async with session.get(f"http://{host}:{port}/healthz") as response:
                await response.read()
        # And the listener is unharmed: HTTPS still works afterwards.
        async with session.get(base_url(https_server) + "/healthz",
                               ssl=pinned(certificate[0])) as response:
            assert response.status == 200


def capped_at(cert_file: Path, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A pinned client context that offers TLS 1.0 up to `version` — at security level 0, or
    OpenSSL 3 would not even offer the old versions and the server would never be asked."""
    context = pinned(cert_file)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1
    context.maximum_version = version
    return context


def handshake(address: tuple[str, int], context: ssl.SSLContext) -> str | None:
    """The TLS version agreed with `address` (blocking: run it off the loop)."""
    with socket.create_connection(address, timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname=address[0]) as tls:
        return tls.version()


def accept_one_handshake(listener: socket.socket, context: ssl.SSLContext) -> str | None:
    connection, _ = listener.accept()
    with context.wrap_socket(connection, server_side=True) as tls:
        return tls.version()


async def agreed_with_a_permissive_server(certificate: tuple[Path, Path],
                                          client: ssl.SSLContext) -> str | None:
    """What `client` agrees with a server that takes anything from TLS 1.0 on: proof that the
    client really offers the old version this OpenSSL build could otherwise have dropped."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.set_ciphers("DEFAULT:@SECLEVEL=0")
    server.minimum_version = ssl.TLSVersion.TLSv1
    server.load_cert_chain(*certificate)
    loop = asyncio.get_running_loop()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(5)
        accepted = loop.run_in_executor(None, accept_one_handshake, listener, server)
        version = await loop.run_in_executor(None, handshake, listener.getsockname()[:2],
                                             client)
        assert await accepted == version
    return version


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize(("version", "name"), [(ssl.TLSVersion.TLSv1, "TLSv1"),
                                               (ssl.TLSVersion.TLSv1_1, "TLSv1.1")],
                         ids=["TLSv1.0", "TLSv1.1"])
async def test_tls_below_1_2_is_refused(
    https_server: RunningServer, certificate: tuple[Path, Path], version: ssl.TLSVersion,
    name: str,
) -> None:
    old = capped_at(certificate[0], version)
    assert await agreed_with_a_permissive_server(certificate, old) == name
    loop = asyncio.get_running_loop()
    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        await loop.run_in_executor(None, handshake, https_server.api_address, old)
    # The same client allowed 1.2 gets through: it is the version the server refused.
    modern = capped_at(certificate[0], ssl.TLSVersion.TLSv1_2)
    assert await loop.run_in_executor(None, handshake, https_server.api_address, modern) \
        == "TLSv1.2"
