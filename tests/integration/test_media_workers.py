"""Media worker processes (issue 12): calls recorded in workers, spread over them, paused through
them; a worker that dies loses only its own calls (hung up, sealed as interrupted, verifiable),
is restarted, and no other call notices."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from siprec_server.app import RunningServer
from siprec_server.media.codecs import encode_ulaw
from siprec_server.siprec.sdp import parse_sdp
from siprec_server.workers.pool import WorkerPool
from storage import recordings
from storage.playback import read_all
from storage.verification import verify_recording
from tests.audio import active_segments, decode_ogg_opus, tone
from tests.integration.test_recording import send_rtp
from tests.integration.test_sip_errors import own_server
from tests.sip_client import Dialog, SipTestClient, interop_case, set_header


@pytest.fixture
async def two_workers(db_dsn: str, data_dir: Path) -> AsyncIterator[RunningServer]:
    async with own_server(db_dsn, data_dir, rtp_ports=60, media__workers="2") as srv:
        assert isinstance(srv.media.engine, WorkerPool)
        yield srv


def sip(srv: RunningServer) -> tuple[str, int]:
    return next((h, p) for kind, h, p in srv.sip_addresses if kind == "udp")


def fresh_invite() -> bytes:
    """The interop INVITE with a Call-ID of its own (several calls at once)."""
    return set_header(interop_case("oracle_acme_1"), "Call-ID",
                      f"{uuid.uuid4().hex}@src.example.com")


def frames(freq: float, seconds: float) -> list[bytes]:
    return [encode_ulaw(f) for f in np.split(tone(freq, seconds, 8000), int(seconds * 50))]


async def finished(srv: RunningServer, call_id: str) -> dict[str, Any]:
    for _ in range(200):
        ids = await recordings.find_by_call_id(srv.db, call_id)
        row = await recordings.get_recording(srv.db, ids[-1]) if ids else None
        if row and row["state"] not in ("offered", "recording") and row["signature"]:
            return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"{call_id} never finished")


async def audio_of(srv: RunningServer, row: dict[str, Any]) -> tuple[np.ndarray, int]:
    return decode_ogg_opus(await read_all(srv.db, srv.media._keys, row["id"]))


async def test_calls_are_spread_over_the_workers_and_recorded_in_full(
    two_workers: RunningServer,
) -> None:
    srv = two_workers
    pool = srv.media.engine
    assert isinstance(pool, WorkerPool) and len(pool.worker_pids()) == 2
    async with SipTestClient("udp", sip(srv)) as src:
        dialogs: list[tuple[Dialog, int]] = []
        for _ in range(4):
            response, dialog = await src.invite(fresh_invite())
            assert response.status == 200 and dialog is not None
            dialogs.append((dialog, parse_sdp(response.body).media[0].port))
        for _ in range(50):
            if sum(pool.calls_per_worker().values()) == 4:
                break
            await asyncio.sleep(0.05)
        assert sorted(pool.calls_per_worker().values()) == [2, 2]
        await asyncio.gather(*(send_rtp(port, frames(440 + 110 * i, 2.0), 0, ssrc=100 + i)
                               for i, (_d, port) in enumerate(dialogs)))
        for dialog, _port in dialogs:
            assert (await src.bye(dialog)).status == 200
    for i, (dialog, _port) in enumerate(dialogs):
        row = await finished(srv, dialog.call_id)
        assert row["state"] == "complete"
        audio, rate = await audio_of(srv, row)
        (segment,) = active_segments(audio[:, 0], rate, 440 + 110 * i)
        assert segment[1] - segment[0] > 1.85
        assert (await verify_recording(srv.db, srv.media._keys, row["id"])).ok


async def test_an_api_pause_reaches_the_worker_and_is_a_silent_interval(
    two_workers: RunningServer,
) -> None:
    srv = two_workers
    async with SipTestClient("udp", sip(srv)) as src:
        response, dialog = await src.invite(fresh_invite())
        assert response.status == 200 and dialog is not None
        port = parse_sdp(response.body).media[0].port
        sender = asyncio.create_task(send_rtp(port, frames(440, 3.0), 0, ssrc=7))
        [recording_id] = await recordings.find_by_call_id(srv.db, dialog.call_id)
        await asyncio.sleep(1.0)
        assert srv.media.pause(recording_id, "api") is True
        assert srv.media.pause(recording_id, "api") is False  # already paused for that reason
        await asyncio.sleep(1.0)
        assert srv.media.resume(recording_id, "api") is True
        await sender
        assert (await src.bye(dialog)).status == 200
    row = await finished(srv, dialog.call_id)
    [pause] = [p for p in row["pauses"] if p["source"] == "api"]
    assert 700 <= pause["start_ms"] <= 1600 and 700 <= pause["end_ms"] - pause["start_ms"] <= 1300
    audio, rate = await audio_of(srv, row)
    segments = active_segments(audio[:, 0], rate, 440)
    assert len(segments) == 2  # the tone, the pause's silence, the tone again


async def test_a_worker_that_dies_loses_only_its_calls_and_is_restarted(
    two_workers: RunningServer,
) -> None:
    srv = two_workers
    pool = srv.media.engine
    assert isinstance(pool, WorkerPool)
    async with SipTestClient("udp", sip(srv)) as src:
        calls: list[tuple[Dialog, int, Any]] = []
        for i in range(4):
            response, dialog = await src.invite(fresh_invite())
            assert response.status == 200 and dialog is not None
            port = parse_sdp(response.body).media[0].port
            sender = asyncio.create_task(send_rtp(port, frames(440 + 110 * i, 4.0), 0,
                                                  ssrc=200 + i))
            calls.append((dialog, port, sender))
        await asyncio.sleep(1.5)
        # The worker holding the first call dies (OOM killer, a crash in a codec library).
        [recording_id] = await recordings.find_by_call_id(srv.db, calls[0][0].call_id)
        doomed = pool._by_call[recording_id]
        lost = set(doomed.calls)
        os.kill(doomed.process.pid, signal.SIGKILL)
        # Its calls are hung up by the recorder...
        bye = await src.receive(timeout=10)
        assert getattr(bye, "method", None) == "BYE"
        for _d, _p, sender in calls:
            await sender
        survivors = []
        for dialog, _port, _sender in calls:
            [rid] = await recordings.find_by_call_id(srv.db, dialog.call_id)
            if rid not in lost:
                survivors.append(dialog)
                assert (await src.bye(dialog)).status == 200
    assert len(lost) == 2 and len(survivors) == 2
    for dialog, *_ in calls:
        row = await finished(srv, dialog.call_id)
        check = await verify_recording(srv.db, srv.media._keys, row["id"])
        assert check.ok, check.problems
        audio, rate = await audio_of(srv, row)
        if row["id"] in lost:
            # ...and sealed with what reached the file before the kill (flushed every second).
            assert row["state"] == "interrupted" and row["recovered"]
            assert "media" in row["end_reason"]
            assert 0.5 <= audio.shape[0] / rate <= 2.5
        else:
            # The other worker's calls never noticed.
            assert row["state"] == "complete" and not row["recovered"]
            i = [d.call_id for d, *_ in calls].index(dialog.call_id)
            (segment,) = active_segments(audio[:, 0], rate, 440 + 110 * i)
            assert segment[1] - segment[0] > 3.8
    # A new worker took the dead one's place, and takes calls.
    for _ in range(100):
        if len(pool.worker_pids()) == 2:
            break
        await asyncio.sleep(0.1)
    assert len(pool.worker_pids()) == 2 and doomed.process.pid not in pool.worker_pids()
    assert pool.counters.workers_died == 1 and pool.counters.calls_lost == 2
    async with SipTestClient("udp", sip(srv)) as src:
        response, dialog = await src.invite(fresh_invite())
        assert response.status == 200 and dialog is not None
        await send_rtp(parse_sdp(response.body).media[0].port, frames(880, 1.0), 0, ssrc=9)
        assert (await src.bye(dialog)).status == 200
    row = await finished(srv, dialog.call_id)
    assert row["state"] == "complete"
