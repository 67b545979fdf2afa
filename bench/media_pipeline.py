"""The media pipeline alone: CPU per recorded call-second of one call's runner, without sockets.

Builds N calls as a media worker holds them (siprec_server/workers/call_runner.py: SRTP in,
jitter buffer, G.711/G.722 decode, time alignment, Opus encode, Ogg pages, AES-256-GCM file
writing) and plays 20 ms packets of speech-like audio (about a quarter silence, as
tests.audio.speech_like makes it) into them on a virtual clock, ticking every 100 ms as the
worker does. CPU time is measured with time.process_time, so what other processes do on the
machine changes the figures less than wall time would; the libopus floor (the same encoders
alone, on the same audio) is measured in the same run and the ratio is printed.

    .venv/bin/python bench/media_pipeline.py [--calls 50] [--seconds 20] [--codec PCMU]
        [--srtp AES_CM_128_HMAC_SHA1_80] [--profile]

--profile prints where the time goes (cProfile, the 25 biggest functions by own time).
Socket reads are not included here: bench/media_load.py measures the whole server.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from siprec_server.media.call import SrtpSpec, StreamSpec  # noqa: E402
from siprec_server.media.codecs import RtpCodec, encode_ulaw  # noqa: E402
from siprec_server.media.libopus import OpusEncoder  # noqa: E402
from siprec_server.media.ogg_opus import (  # noqa: E402
    DEFAULT_APPLICATION,
    DEFAULT_COMPLEXITY,
    DEFAULT_FRAME_MS,
    default_bitrate_per_channel,
)
from siprec_server.media.srtp import srtp_sender  # noqa: E402
from siprec_server.media.srtp_suites import find_suite  # noqa: E402
from siprec_server.workers.call_runner import CallPlan, CallRunner  # noqa: E402
from tests.audio import speech_like  # noqa: E402

RATE = 8000
PTIME = 0.02


def stream_packets(seconds: float, seed: int, srtp: str | None,
                   key: bytes) -> list[bytes]:
    pcm = speech_like(seconds, RATE, seed=seed)
    frames = [encode_ulaw(pcm[i:i + 160]) for i in range(0, len(pcm) - 159, 160)]
    sender = srtp_sender(find_suite(srtp), key) if srtp else None  # type: ignore[arg-type]
    out = []
    for i, payload in enumerate(frames):
        header = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, i * 160, 0x1000 + seed)
        packet = header + payload
        out.append(sender.protect_rtp(packet) if sender else packet)
    return out


def spec(index: int, srtp: str | None, key: bytes) -> StreamSpec:
    return StreamSpec(
        index, index, {0: RtpCodec("PCMU", 8000), 13: RtpCodec("CN", 8000)}, None,
        SrtpSpec(find_suite(srtp), key) if srtp else None,  # type: ignore[arg-type]
        remote_address="127.0.0.1",
    )


def run(calls: int, seconds: float, srtp: str | None, profile: bool) -> float:
    key = os.urandom(30)
    streams = [stream_packets(seconds, seed, srtp, key) for seed in (1, 2)]
    directory = Path(tempfile.mkdtemp(prefix="siprec-bench-pipeline-"))
    start = 1000.0
    runners = [
        CallRunner(CallPlan(
            recording_id=uuid.uuid4(), path=directory / f"{i}.srec",
            specs=(spec(0, srtp, key), spec(1, srtp, key)), channels=2, rate=RATE,
            data_key=os.urandom(32), started=start, dtmf_control=None,
            rtp_source="offer-address", inactivity_timeout=300))
        for i in range(calls)
    ]
    source = ("127.0.0.1", 40000)
    packets = len(streams[0])
    profiler = cProfile.Profile() if profile else None
    began = time.process_time()
    if profiler:
        profiler.enable()
    next_tick = start + 0.1
    for n in range(packets):
        now = start + n * PTIME
        for runner in runners:
            runner.receive_rtp(0, streams[0][n], now, source)
            runner.receive_rtp(1, streams[1][n], now, source)
        if now >= next_tick:
            for runner in runners:
                runner.tick(now)
            next_tick += 0.1
    for runner in runners:
        runner.close(start + packets * PTIME + 0.2)
    if profiler:
        profiler.disable()
    cpu = time.process_time() - began
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    return cpu * 1000 / (calls * packets * PTIME)


def floor(seconds: float) -> float:
    """The same two encoders on the same audio, nothing else: ms per call-second."""
    size = RATE * DEFAULT_FRAME_MS // 1000
    pcms = [speech_like(seconds, RATE, seed=seed) for seed in (1, 2)]
    encoders = [OpusEncoder(RATE, size, application=DEFAULT_APPLICATION,
                            bitrate=default_bitrate_per_channel(RATE),
                            complexity=DEFAULT_COMPLEXITY) for _ in pcms]
    began = time.process_time()
    for encoder, pcm in zip(encoders, pcms, strict=True):
        for i in range(0, len(pcm) - size + 1, size):
            encoder.encode(np.ascontiguousarray(pcm[i:i + size]))
    return (time.process_time() - began) * 1000 / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--srtp", default="AES_CM_128_HMAC_SHA1_80")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    srtp = None if args.srtp == "none" else args.srtp
    floor_ms = min(floor(args.seconds) for _ in range(3))
    pipeline = run(args.calls, args.seconds, srtp, args.profile)
    print(f"libopus alone (every frame encoded): {floor_ms:.2f} ms CPU per call-second")
    print(f"pipeline ({args.calls} calls, {srtp or 'plain RTP'}, PCMU, speech with pauses): "
          f"{pipeline:.2f} ms CPU per call-second, ratio {pipeline / floor_ms:.2f}")


if __name__ == "__main__":
    main()
