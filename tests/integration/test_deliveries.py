"""Secure delivery end to end: a real SIPREC call is sealed, then pushed to a real OpenSSH SFTP
server (sshd started here on a loopback port, its own host key, our key authorized) encrypted to
an X.509 certificate, and to an S3 endpoint (moto's server) encrypted to an OpenPGP key. What
arrives opens only with the recipient's private key (openssl cms, gpg in throwaway homes) and
its audio decodes. Webhooks reach an aiohttp receiver that checks the HMAC signature. An expired
recipient certificate fails closed, visible in the API; a receiver that keeps failing ends in
the dead letters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from siprec_server.siprec.sdp import parse_sdp
from tests.audio import decode_ogg_opus, tone_level_db
from tests.integration.conftest import server_env, sip_address
from tests.integration.test_interop import wait_for_state
from tests.integration.test_recording import send_rtp
from tests.integration.test_recording_rules import Api, frames
from tests.integration.test_recordings_api import make_token
from tests.sip_client import SipTestClient, interop_case

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SECRET = "webhook-secret-of-the-crm-0123456789"



def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(*argv: str, **kwargs: Any) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(list(argv), check=True, capture_output=True, timeout=120, **kwargs)


# ------------------------------------------------------------------------------ recipients


def certificate(directory: Path, name: str, *, expired: bool = False) -> tuple[Path, Path]:
    """An RSA key and a self-signed certificate for it (expired yesterday when asked)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.now(UTC)
    start, end = ((now - timedelta(days=30), now - timedelta(days=1)) if expired
                  else (now - timedelta(days=1), now + timedelta(days=30)))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def openpgp_key(home: Path) -> Path:
    home.mkdir(mode=0o700)
    run("gpg", "--batch", "--homedir", str(home), "--passphrase", "", "--quick-gen-key",
        "archive@customer.example", "default", "default", "never")
    public = home.parent / "customer.asc"
    public.write_bytes(run("gpg", "--batch", "--homedir", str(home), "--armor", "--export",
                           "archive@customer.example").stdout)
    return public


# ------------------------------------------------------------------------------ SFTP server


@dataclass
class Sftp:
    port: int
    directory: Path
    host_key: str
    client_key: Path


@pytest.fixture
def sftp(tmp_path: Path) -> Iterator[Sftp]:
    """OpenSSH's sshd as root on a loopback port with a throwaway config: its own host key,
    one authorized key, SFTP only. sshd refuses to start without its privilege-separation
    directory (/run/sshd, made by the init script we do not run) and checks the modes of the
    files it trusts (StrictModes), so both are prepared here."""
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    root = tmp_path / "sshd"
    root.mkdir(mode=0o700)
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "host_key"))
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "client_key"))
    authorized = root / "authorized_keys"
    authorized.write_bytes((root / "client_key.pub").read_bytes())
    authorized.chmod(0o600)
    incoming = root / "incoming"
    incoming.mkdir()
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {root / 'host_key'}\n"
        f"AuthorizedKeysFile {authorized}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPidFile none\nSubsystem sftp internal-sftp\n"
        "AllowTcpForwarding no\nX11Forwarding no\n")
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                assert process.stderr is not None
                raise AssertionError(f"sshd did not start: {process.stderr.read()[:500]!r}")
            time.sleep(0.05)
        host_key = " ".join((root / "host_key.pub").read_text().split()[:2])
        yield Sftp(port, incoming, host_key, root / "client_key")
    finally:
        process.terminate()
        process.wait(10)


# ------------------------------------------------------------------------------ S3 (moto)


@dataclass
class S3:
    endpoint: str
    bucket: str

    def client(self) -> Any:
        return get_session().create_client("s3", endpoint_url=self.endpoint,
                                           region_name="us-east-1", aws_access_key_id="test",
                                           aws_secret_access_key="test")


@pytest.fixture
async def s3() -> AsyncIterator[S3]:
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        # moto keeps its buckets per process: every test gets its own.
        endpoint = S3(f"http://127.0.0.1:{port}", f"archive-{uuid.uuid4().hex[:12]}")
        async with endpoint.client() as client:
            await client.create_bucket(Bucket=endpoint.bucket)
        yield endpoint
    finally:
        server.stop()


# ------------------------------------------------------------------------------ webhooks


@dataclass
class Receiver:
    url: str
    received: list[tuple[dict[str, str], bytes]]
    status: int = 200


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver("", [])

    async def hook(request: web.Request) -> web.Response:
        state.received.append((dict(request.headers), await request.read()))
        return web.Response(status=state.status)

    app = web.Application()
    app.router.add_post("/hooks/siprec", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    state.url = f"http://{host}:{port}/hooks/siprec"
    try:
        yield state
    finally:
        await runner.cleanup()


def signature_is_valid(headers: dict[str, str], body: bytes) -> bool:
    """The receiver's check, written from the documented format alone."""
    fields = dict(part.split("=", 1) for part in headers["X-Siprec-Signature"].split(","))
    timestamp = int(fields["t"])
    if abs(time.time() - timestamp) > 300:
        return False
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


# ------------------------------------------------------------------------------ the call


async def recorded_call(server: RunningServer) -> str:
    async with SipTestClient("udp", sip_address(server, "udp")) as src:
        response, dialog = await src.invite(interop_case("oracle_acme_1"))
        assert response.status == 200 and dialog is not None
        ports = [m.port for m in parse_sdp(response.body).media]
        await send_rtp(ports[0], frames(440, 1.0), 0, ssrc=0x1111)
        assert (await src.bye(dialog)).status == 200
    row = await wait_for_state(server, dialog.call_id, "complete")
    return str(row["id"])


async def deliveries_settled(api: Api, token: str, rid: str, count: int,
                             timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await api.call("GET", f"/api/v1/recordings/{rid}/deliveries", token)
        assert status == 200, body
        items = body["items"]
        if len(items) == count and all(i["state"] in ("delivered", "failed") for i in items):
            return list(items)
        assert asyncio.get_running_loop().time() < deadline, items
        await asyncio.sleep(0.2)


async def test_a_sealed_recording_reaches_sftp_and_s3_encrypted_to_the_customer_only(
        db_dsn: str, data_dir: Path, tmp_path: Path, sftp: Sftp, s3: S3,
        receiver: Receiver) -> None:
    customer_key, customer_cert = certificate(tmp_path, "customer")
    other_key, other_cert = certificate(tmp_path, "someone-else")
    gpg_home = tmp_path / "customer-gnupg"
    customer_pgp = openpgp_key(gpg_home)
    env = server_env(
        db_dsn, data_dir, deliveries__poll_interval="1",
        deliveries__destinations__customer__kind="sftp",
        deliveries__destinations__customer__url=f"sftp://root@127.0.0.1:{sftp.port}"
                                                f"{sftp.directory}",
        deliveries__destinations__customer__host_key=sftp.host_key,
        deliveries__destinations__customer__client_key_file=str(sftp.client_key),
        deliveries__destinations__customer__recipient_key_file=str(customer_cert),
        deliveries__destinations__archive__kind="s3",
        deliveries__destinations__archive__url=f"s3://{s3.bucket}/siprec",
        deliveries__destinations__archive__endpoint=s3.endpoint,
        deliveries__destinations__archive__access_key_id="test",
        deliveries__destinations__archive__secret_access_key="test",
        deliveries__destinations__archive__recipient_key_file=str(customer_pgp),
        webhooks__endpoints__crm__url=receiver.url,
        webhooks__endpoints__crm__secret=SECRET)
    server = await start_server(load_config(env=env))
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(server, session)
            admin, _ = await make_token(server.db, "admin")
            rid = await recorded_call(server)
            items = await deliveries_settled(api, admin, rid, 2)
            assert {i["destination"]: i["state"] for i in items} == {
                "archive": "delivered", "customer": "delivered"}
            by_name = {i["destination"]: i for i in items}
            assert by_name["customer"]["recipient_fingerprint"].startswith("sha256:")
            assert by_name["archive"]["recipient_fingerprint"].startswith("openpgp:")

            # SFTP: CMS to the certificate; only the customer's key opens it.
            names = sorted(p.name for p in sftp.directory.iterdir())
            assert names == [f"{rid}.ogg.p7m", f"{rid}.xml.p7m"]
            audio_ct = (sftp.directory / f"{rid}.ogg.p7m").read_bytes()
            assert b"OggS" not in audio_ct and b"OpusHead" not in audio_ct
            assert hashlib.sha256(audio_ct).hexdigest() == next(
                f["sha256"] for f in by_name["customer"]["files"] if f["name"].startswith(
                    f"{rid}.ogg"))
            ogg = run("openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-inkey",
                      str(customer_key), "-recip", str(customer_cert), input=audio_ct).stdout
            audio, rate = decode_ogg_opus(ogg)
            assert tone_level_db(audio[:, 0], rate, 440) > -30
            wrong = subprocess.run(["openssl", "cms", "-decrypt", "-binary", "-inform", "DER",
                                    "-inkey", str(other_key), "-recip", str(other_cert)],
                                   input=audio_ct, capture_output=True, timeout=60)
            assert wrong.returncode != 0 and not wrong.stdout.startswith(b"OggS")
            xml = run("openssl", "cms", "-decrypt", "-binary", "-inform", "DER", "-inkey",
                      str(customer_key), "-recip", str(customer_cert),
                      input=(sftp.directory / f"{rid}.xml.p7m").read_bytes()).stdout
            assert f'id="{rid}"'.encode() in xml and b"sip:9000@192.168.50.102" in xml

            # S3: OpenPGP to the customer's key.
            async with s3.client() as client:
                listed = await client.list_objects_v2(Bucket=s3.bucket)
                keys = sorted(o["Key"] for o in listed["Contents"])
                assert keys == [f"siprec/{rid}.ogg.gpg", f"siprec/{rid}.xml.gpg"]
                obj = await client.get_object(Bucket=s3.bucket, Key=f"siprec/{rid}.ogg.gpg")
                pgp_ct = await obj["Body"].read()
            assert b"OggS" not in pgp_ct
            ogg2 = run("gpg", "--batch", "--homedir", str(gpg_home), "--decrypt",
                       input=pgp_ct).stdout
            assert ogg2 == ogg  # the same sealed recording, to both
            empty_home = tmp_path / "no-keys"
            empty_home.mkdir(mode=0o700)
            assert subprocess.run(["gpg", "--batch", "--homedir", str(empty_home), "--decrypt"],
                                  input=pgp_ct, capture_output=True,
                                  timeout=60).returncode != 0

            # Webhooks: started and sealed, each signed.
            deadline = asyncio.get_running_loop().time() + 30
            while len(receiver.received) < 2:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            events = []
            for headers, body in receiver.received:
                assert signature_is_valid(headers, body)
                assert not signature_is_valid(headers, body + b" ")
                payload = json.loads(body)
                assert headers["X-Siprec-Event"] == payload["event"]
                events.append((payload["event"], payload["recording_id"]))
            assert events[:2] == [("recording.started", rid), ("recording.sealed", rid)]
            audits = await server.db.fetch(
                "SELECT outcome, details FROM audit_events WHERE action = 'recording.deliver' "
                "AND target = $1", rid)
            assert sorted(a["outcome"] for a in audits) == ["success", "success"]
            metrics = await (await session.get(f"{api.base}/metrics")).text()
            assert "siprec_delivery_deliveries_delivered" in metrics
    finally:
        await server.stop()


async def test_an_expired_recipient_fails_closed_and_a_failing_receiver_ends_dead(
        db_dsn: str, data_dir: Path, tmp_path: Path, s3: S3, receiver: Receiver) -> None:
    _key, expired = certificate(tmp_path, "expired", expired=True)
    receiver.status = 500
    env = server_env(
        db_dsn, data_dir, deliveries__poll_interval="1",
        deliveries__destinations__archive__kind="s3",
        deliveries__destinations__archive__url=f"s3://{s3.bucket}",
        deliveries__destinations__archive__endpoint=s3.endpoint,
        deliveries__destinations__archive__access_key_id="test",
        deliveries__destinations__archive__secret_access_key="test",
        deliveries__destinations__archive__recipient_key_file=str(expired),
        webhooks__endpoints__crm__url=receiver.url,
        webhooks__endpoints__crm__secret=SECRET,
        webhooks__endpoints__crm__events="recording.sealed",
        webhooks__max_attempts="2", webhooks__retry_base="1")
    server = await start_server(load_config(env=env))
    try:
        async with aiohttp.ClientSession() as session:
            api = Api(server, session)
            admin, _ = await make_token(server.db, "admin")
            rid = await recorded_call(server)
            (item,) = await deliveries_settled(api, admin, rid, 1)
            assert item["state"] == "failed" and item["attempts"] == 1
            assert "expired" in item["last_error"]
            async with s3.client() as client:
                listed = await client.list_objects_v2(Bucket=s3.bucket)
            assert listed.get("KeyCount", 0) == 0  # nothing left the server
            assert server.deliveries is not None
            assert server.deliveries.counters.recipient_key_refusals == 1

            deadline = asyncio.get_running_loop().time() + 30
            while True:
                status, body = await api.call("GET", "/api/v1/webhooks/deliveries?state=dead",
                                              admin)
                assert status == 200
                if body["items"]:
                    break
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.2)
            (dead,) = body["items"]
            assert dead["event"] == "recording.sealed" and dead["attempts"] == 2
            assert dead["last_status"] == 500 and len(receiver.received) == 2
            # The receiver is fixed; an operator sends the dead letter again.
            receiver.status = 204
            status, body = await api.call(
                "POST", f"/api/v1/webhooks/deliveries/{dead['id']}/retry", admin)
            assert status == 202
            deadline = asyncio.get_running_loop().time() + 30
            while len(receiver.received) < 3:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.1)
            status, body = await api.call("POST",
                                          f"/api/v1/recordings/{rid}/deliveries/archive/retry",
                                          admin)
            assert status == 202 and body["state"] == "pending"
    finally:
        await server.stop()
