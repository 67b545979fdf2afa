"""Media end to end: calls placed by our SIPREC client (every codec, every SRTP suite, impaired
networks, hold, DTMF) over loopback into a running server; each recording is read back through
the playback reader, decoded, and each party's tone is found on its own channel for the right
time, with silence where there should be silence."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from siprec_server.app import RunningServer
from siprec_server.media.srtp_suites import SUITES
from siprec_server.tools.siprec_client import (
    CallPlan,
    CallReport,
    DtmfDigit,
    Hold,
    Impairments,
    default_streams,
    run_calls,
)
from storage import recordings
from storage.playback import read_all
from tests.audio import active_segments, decode_ogg_opus, tone_level_db
from tests.integration.conftest import sip_address

TONES = (440.0, 660.0)  # default_streams: party 1 at 440 Hz, party 2 at 660 Hz


def servers(server: RunningServer) -> dict[str, tuple[str, int]]:
    return {"udp": sip_address(server, "udp"), "tcp": sip_address(server, "tcp")}


async def finished_recording(server: RunningServer, call: CallReport) -> dict[str, Any]:
    for _ in range(200):
        ids = await recordings.find_by_call_id(server.db, call.call_id)
        if ids:
            row = await recordings.get_recording(server.db, ids[-1])
            if row and row["signature"] is not None:
                return row
        await asyncio.sleep(0.05)
    raise AssertionError(f"no finished recording for {call.call_id}")


async def decoded(server: RunningServer, row: dict[str, Any]) -> tuple[np.ndarray, int]:
    return decode_ogg_opus(await read_all(server.db, server.media._keys, row["id"]))


def assert_parties_on_their_channels(audio: np.ndarray, rate: int, seconds: float) -> None:
    assert audio.shape[1] == 2
    for channel, freq in enumerate(TONES):
        other = 1 - channel
        assert tone_level_db(audio[:, channel], rate, freq) - tone_level_db(
            audio[:, other], rate, freq) > 25, f"channel {channel} bleeds"
        segments = active_segments(audio[:, channel], rate, freq)
        assert segments, f"no {freq} Hz on channel {channel}"
        covered = sum(b - a for a, b in segments)
        assert covered > seconds - 0.15, f"{freq} Hz for {covered:.2f}s of {seconds}s"


async def test_every_srtp_suite_is_decrypted_and_recorded(server: RunningServer) -> None:
    seconds = 2.0
    plans = [CallPlan(streams=default_streams(2, "PCMU", suite.name), duration=seconds)
             for suite in SUITES]
    report = await run_calls(servers(server), plans, concurrency=len(plans), rate=20)
    assert report.failed == 0, [c.error for c in report.calls]
    for call, suite in zip(report.calls, SUITES, strict=True):
        row = await finished_recording(server, call)
        assert {s["srtp_suite"] for s in row["streams"]} == {suite.name}
        for stream in row["streams"]:
            assert stream["stats"]["srtp_auth_failures"] == 0
            assert stream["stats"]["packets_received"] == seconds * 50
        audio, rate = await decoded(server, row)
        assert_parties_on_their_channels(audio, rate, seconds)


async def test_every_codec_is_decoded_and_recorded(server: RunningServer) -> None:
    seconds = 2.0
    codecs = ("PCMU", "PCMA", "G722", "opus")
    plans = [CallPlan(streams=default_streams(2, codec), duration=seconds) for codec in codecs]
    report = await run_calls(servers(server), plans, concurrency=len(plans), rate=20)
    assert report.failed == 0, [c.error for c in report.calls]
    for call, codec in zip(report.calls, codecs, strict=True):
        row = await finished_recording(server, call)
        assert all(s["codec"].upper().startswith(codec.upper()) for s in row["streams"])
        assert row["sample_rate"] == (16000 if codec in ("G722", "opus") else 8000)
        audio, rate = await decoded(server, row)
        assert_parties_on_their_channels(audio, rate, seconds)


async def test_impaired_network_still_gives_a_recording_of_the_right_length(
    server: RunningServer,
) -> None:
    seconds = 3.0
    plan = CallPlan(streams=default_streams(2, "PCMA", "AES_CM_128_HMAC_SHA1_80"),
                    duration=seconds,
                    impairments=Impairments(loss_percent=5, reorder_percent=5,
                                            duplicate_percent=5, seed=7))
    report = await run_calls(servers(server), [plan], concurrency=1, rate=10)
    assert report.failed == 0, report.calls[0].error
    call = report.calls[0]
    row = await finished_recording(server, call)
    audio, rate = await decoded(server, row)
    assert abs(audio.shape[0] / rate - row["duration_ms"] / 1000) < 0.08
    assert seconds - 0.1 < audio.shape[0] / rate < seconds + 0.6
    for stream, sent in zip(sorted(row["streams"], key=lambda s: s["m_index"]), call.streams,
                            strict=True):
        stats = stream["stats"]
        # Loss is counted below the highest sequence number received (RFC 3550 A.3): packets
        # dropped at the very end of a stream cannot be known to be missing.
        assert sent.dropped - 3 <= stats["packets_lost"] <= sent.dropped
        # Under SRTP a duplicate is stopped by replay protection before the jitter buffer.
        assert stats["duplicates"] + stats["srtp_replays"] == sent.duplicated
    for channel, freq in enumerate(TONES):
        covered = sum(b - a for a, b in active_segments(audio[:, channel], rate, freq))
        # Each lost 20 ms packet is silence, and the tone detector's 20 ms windows around
        # each gap cost a little more; reordered packets arrive within the playout delay.
        dropped = call.streams[channel].dropped
        assert covered > seconds - dropped * 0.08 - 0.1, (covered, dropped)


async def test_hold_is_recorded_as_silence_at_the_right_time(server: RunningServer) -> None:
    plan = CallPlan(streams=default_streams(2, "PCMU"), duration=4.0, hold=Hold(1.0, 2.5))
    report = await run_calls(servers(server), [plan], concurrency=1, rate=10)
    assert report.failed == 0, report.calls[0].error
    row = await finished_recording(server, report.calls[0])
    audio, rate = await decoded(server, row)
    for channel, freq in enumerate(TONES):
        segments = active_segments(audio[:, channel], rate, freq)
        assert len(segments) == 2, segments
        (a0, a1), (b0, b1) = segments
        assert abs(a1 - 1.0) < 0.15 and abs(b0 - 2.5) < 0.2, segments
    (pause,) = row["pauses"]
    assert pause["source"] == "hold"
    assert abs(pause["start_ms"] - 1000) < 250 and abs(pause["end_ms"] - 2500) < 250


async def test_dtmf_keys_are_blanked_and_drive_pause_and_resume(server: RunningServer) -> None:
    keys = (DtmfDigit("*", 1.0), DtmfDigit("1", 1.2), DtmfDigit("*", 2.6), DtmfDigit("2", 2.8))
    plan = CallPlan(streams=default_streams(2, "PCMU", "AES_CM_128_HMAC_SHA1_80"),
                    duration=4.0, dtmf=keys, dtmf_inband="tone")
    report = await run_calls(servers(server), [plan], concurrency=1, rate=10)
    assert report.failed == 0, report.calls[0].error
    row = await finished_recording(server, report.calls[0])
    audio, rate = await decoded(server, row)
    # The in-band key tones (697/941 Hz rows, 1209/1336/1477 Hz columns) are never recorded.
    for freq in (697.0, 941.0, 1209.0, 1336.0):
        assert active_segments(audio[:, 0], rate, freq) == [], f"{freq} Hz key tone recorded"
    # Between the sequences the call is paused: both parties silent.
    for channel, freq in enumerate(TONES):
        segments = active_segments(audio[:, channel], rate, freq)
        assert all(b <= 1.45 or a >= 2.85 for a, b in segments), segments
    (pause,) = row["pauses"]
    assert pause["source"] == "dtmf"
    assert row["dtmf_events"] == 4
    # Digits exist nowhere in the database: only the count of key presses.
    dump = await server.db.fetchval(
        "SELECT string_agg(t::text, ' ') FROM (SELECT * FROM recordings) t")
    assert "*1" not in dump and "*2" not in dump
