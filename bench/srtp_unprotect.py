"""Microseconds per SRTP unprotect of one 172-byte RTP packet (12-byte header, 160-byte payload:
20 ms of G.711), for every suite the recorder accepts, through the public `srtp_receiver`.

A recorded call brings about 100 such packets per second (two streams of 50), so 10 µs per packet
is 0.1 % of a core per call. Extra rows: our AES-CM engine on the 128-bit suite (the engine
`srtp` falls back to for MKI/UNENCRYPTED_SRTCP sessions) and pylibsrtp without our adapter.

    .venv/bin/python bench/srtp_unprotect.py [--packets 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

import pylibsrtp

from siprec_server.media.srtp import srtp_receiver, srtp_sender
from siprec_server.media.srtp_aes_cm import AesCmContext
from siprec_server.media.srtp_suites import SUITES, SrtpSuite, find_suite

_PAYLOAD = bytes(random.Random(0).randbytes(160))
_SSRC = 0x5EC0_4D00


def rtp_packets(count: int) -> list[bytes]:
    return [
        bytes([0x80, 0])
        + (seq & 0xFFFF).to_bytes(2, "big")
        + (seq * 160 & 0xFFFFFFFF).to_bytes(4, "big")
        + _SSRC.to_bytes(4, "big")
        + _PAYLOAD
        for seq in range(count)
    ]


def time_per_packet(
    protected: list[bytes], new_unprotect: Callable[[], Callable[[bytes], bytes]], rounds: int
) -> list[float]:
    """µs per packet, one figure per round, each round on a fresh receiver."""
    figures = []
    for _ in range(rounds):
        unprotect = new_unprotect()
        start = time.perf_counter()
        for packet in protected:
            unprotect(packet)
        figures.append((time.perf_counter() - start) / len(protected) * 1e6)
    return figures


def receiver_of(suite: SrtpSuite, key: bytes) -> Callable[[], Callable[[bytes], bytes]]:
    return lambda: srtp_receiver(suite, key).unprotect_rtp


def engine_of(suite: SrtpSuite) -> str:
    return "ours (srtp_aes_cm)" if suite.key_len == 32 and suite.cipher == "aes-cm" else "pylibsrtp"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    plain = rtp_packets(args.packets)
    print(f"{len(plain[0])}-byte RTP packets, {args.packets} per round, {args.rounds} rounds")
    print(f"{'suite':26} {'engine':26} {'best µs':>8} {'median µs':>10}")

    def report(name: str, engine: str, figures: list[float]) -> None:
        print(f"{name:26} {engine:26} {min(figures):8.2f} {statistics.median(figures):10.2f}")

    for suite in SUITES:
        key = random.Random(suite.name).randbytes(suite.key_salt_len)
        sender = srtp_sender(suite, key)
        protected = [sender.protect_rtp(p) for p in plain]
        report(
            suite.name,
            engine_of(suite),
            time_per_packet(protected, receiver_of(suite, key), args.rounds),
        )

    aes_128 = find_suite("AES_CM_128_HMAC_SHA1_80")
    assert aes_128 is not None
    key = random.Random(aes_128.name).randbytes(aes_128.key_salt_len)
    protected = [srtp_sender(aes_128, key).protect_rtp(p) for p in plain]
    report(
        aes_128.name,
        "ours (srtp_aes_cm)",
        time_per_packet(
            protected,
            lambda: AesCmContext(key[:16], key[16:], 10).unprotect_rtp,
            args.rounds,
        ),
    )

    def raw_libsrtp() -> Callable[[bytes], bytes]:
        policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND)
        session = pylibsrtp.Session(policy)
        return session.unprotect

    report(
        aes_128.name, "pylibsrtp, no adapter", time_per_packet(protected, raw_libsrtp, args.rounds)
    )


if __name__ == "__main__":
    main()
