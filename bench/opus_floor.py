"""The Opus "floor": CPU ms per second of 2-channel audio spent encoding, nothing else.

The whole-server benchmark (receive SRTP, decode, encode, encrypt) compares itself with this.
Two figures per input rate, with the encoder's default settings:

- libopus: PyAV's libopus encoder alone (frames in, packets out), as the recorder configures it;
- OggOpusEncoder: the recorder's encoder module, i.e. the above plus buffering, Ogg pages and
  a flush every second of audio, as the media pipeline drives it (20 ms blocks).

Measured with time.process_time over synthetic speech-like audio (voiced harmonics, noise
bursts, pauses; a different talker per channel); best and median of several runs.

    .venv/bin/python bench/opus_floor.py [--seconds 60] [--repeat 5] [--sweep]

--sweep also prints libopus cost for complexity 0..10 and 20/40/60 ms frames at each rate.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from siprec_server.media.ogg_opus import (  # noqa: E402
    DEFAULT_APPLICATION,
    DEFAULT_COMPLEXITY,
    DEFAULT_FRAME_MS,
    OggOpusEncoder,
    default_bitrate_per_channel,
)
from tests.audio import speech_like, stereo  # noqa: E402


def libopus_cpu(pcm: np.ndarray, rate: int, complexity: int, frame_ms: int) -> float:
    """CPU seconds to turn `pcm` into Opus packets with the recorder's codec settings."""
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = rate
    codec.layout = "stereo"
    codec.format = "s16"
    codec.bit_rate = 2 * default_bitrate_per_channel(rate)
    codec.time_base = Fraction(1, rate)
    codec.options = {
        "application": DEFAULT_APPLICATION,
        "frame_duration": str(frame_ms),
        "mapping_family": "255",
        "compression_level": str(complexity),
        "vbr": "on",
    }
    size = rate * frame_ms // 1000
    start = time.process_time()
    codec.open()
    for i in range(0, len(pcm) - size + 1, size):
        frame = av.AudioFrame.from_ndarray(
            pcm[i : i + size].reshape(1, -1), format="s16", layout="stereo"
        )
        frame.sample_rate = rate
        frame.pts = i
        for packet in codec.encode(frame):
            bytes(packet)
    for packet in codec.encode(None):
        bytes(packet)
    return time.process_time() - start


def encoder_cpu(pcm: np.ndarray, rate: int) -> tuple[float, int]:
    """CPU seconds for OggOpusEncoder fed 20 ms blocks, flushed each second; and bytes out."""
    written = 0

    def sink(page: bytes) -> None:
        nonlocal written
        written += len(page)

    block = rate // 50
    start = time.process_time()
    encoder = OggOpusEncoder(2, rate, sink)
    for i in range(0, len(pcm), block):
        encoder.encode(pcm[i : i + block])
        if (i // block) % 50 == 49:
            encoder.flush()
    encoder.close()
    return time.process_time() - start, written


def summary(cpu_seconds: list[float], audio_seconds: float) -> str:
    per_second = [1000 * c / audio_seconds for c in cpu_seconds]
    return f"best {min(per_second):6.3f}  median {statistics.median(per_second):6.3f} ms/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()

    print(
        f"defaults: application={DEFAULT_APPLICATION} complexity={DEFAULT_COMPLEXITY} "
        f"frame={DEFAULT_FRAME_MS} ms, one uncoupled stream per channel, VBR; "
        f"{args.seconds:.0f} s of 2-channel speech-like audio, {args.repeat} runs"
    )
    for rate in (8000, 16000):
        pcm = stereo(
            speech_like(args.seconds, rate, seed=1), speech_like(args.seconds, rate, seed=2)
        )
        raw = [
            libopus_cpu(pcm, rate, DEFAULT_COMPLEXITY, DEFAULT_FRAME_MS) for _ in range(args.repeat)
        ]
        runs = [encoder_cpu(pcm, rate) for _ in range(args.repeat)]
        kbit = runs[0][1] * 8 / args.seconds / 1000
        bitrate = default_bitrate_per_channel(rate) // 1000
        print(f"{rate:5d} Hz, {bitrate} kbit/s/ch target")
        print(f"  libopus floor      {summary(raw, args.seconds)}")
        print(
            f"  OggOpusEncoder     {summary([r[0] for r in runs], args.seconds)}   ({kbit:.1f} kbit/s)"
        )

    if args.sweep:
        for rate in (8000, 16000):
            pcm = stereo(
                speech_like(args.seconds, rate, seed=1), speech_like(args.seconds, rate, seed=2)
            )
            for frame_ms in (20, 40, 60):
                cells = []
                for complexity in range(11):
                    best = min(
                        libopus_cpu(pcm, rate, complexity, frame_ms) for _ in range(args.repeat)
                    )
                    cells.append(f"{1000 * best / args.seconds:5.2f}")
                print(f"sweep {rate:5d} Hz {frame_ms:2d} ms  complexity 0..10: {' '.join(cells)}")


if __name__ == "__main__":
    main()
