"""A real server per test: SIP on loopback UDP and TCP (ports chosen by the OS), the API, and a
fresh migrated database of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from siprec_server.app import RunningServer, start_server
from siprec_server.config import load_config
from tests.plaintext_scan import plaintext_audio_findings


def server_env(db_dsn: str, data_dir: Path, **overrides: str) -> dict[str, str]:
    env = {
        "SIPREC_SERVER__DATA_DIR": str(data_dir),
        "SIPREC_SERVER__NODE_ID": "test-node",
        "SIPREC_SERVER__LOG_FORMAT": "json",
        "SIPREC_SIP__LISTEN": "udp:127.0.0.1:0,tcp:127.0.0.1:0",
        "SIPREC_API__LISTEN": "127.0.0.1:0",
        "SIPREC_DATABASE__URL": db_dsn,
        # Calls are recorded on the test's own event loop unless a test asks for media worker
        # processes (tests/integration/test_media_workers.py); SIPREC_TEST_MEDIA_WORKERS=2 runs
        # the whole suite through workers.
        "SIPREC_MEDIA__WORKERS": os.environ.get("SIPREC_TEST_MEDIA_WORKERS", "0"),
    }
    env.update({f"SIPREC_{k.upper()}": v for k, v in overrides.items()})
    return env


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """The server's data_dir; after the test it is scanned for plaintext audio (there must be
    none, not even crash leftovers) and removed."""
    path = Path(tempfile.mkdtemp(prefix="siprec-test-data-"))
    try:
        yield path
        findings = plaintext_audio_findings(path)
        assert not findings, "plaintext audio on disk:\n" + "\n".join(findings)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def server(db_dsn: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    srv = await start_server(load_config(env=server_env(db_dsn, data_dir)))
    try:
        yield srv
    finally:
        await srv.stop()


def sip_address(srv: RunningServer, transport: str) -> tuple[str, int]:
    for kind, host, port in srv.sip_addresses:
        if kind == transport:
            return host, port
    raise LookupError(transport)
