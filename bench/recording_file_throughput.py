"""Throughput of the encrypted recording file: write (encrypt) and read (decrypt) in MB/s.

Writes are 4 KiB pieces (about one Ogg page) with a flush every 16 pieces, the pattern of
a media pipeline; the sink and source are in memory, so this measures CPU cost only.

    .venv/bin/python bench/recording_file_throughput.py [--seconds 10] [--max-chunk 65536]
"""

from __future__ import annotations

import argparse
import io
import os
import time
from collections.abc import Callable
from uuid import UUID, uuid4

from storage.recording_file import RecordingFileWriter, decrypt_chunks, summarize

PIECE = 4096
FLUSH_EVERY = 16
FILE_BYTES = 64 * 1024 * 1024


def write_once(payload: bytes, max_chunk: int, recording_id: UUID, key: bytes) -> bytes:
    sink = io.BytesIO()
    writer = RecordingFileWriter(
        sink, recording_id=recording_id, data_key=key, key_id="bench", max_chunk=max_chunk
    )
    view = memoryview(payload)
    for n, offset in enumerate(range(0, len(payload), PIECE), start=1):
        writer.write(view[offset : offset + PIECE])
        if n % FLUSH_EVERY == 0:
            writer.flush()
    writer.close()
    return sink.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="total time budget")
    parser.add_argument("--max-chunk", type=int, default=65536)
    args = parser.parse_args()

    recording_id = uuid4()
    key = os.urandom(32)
    payload = os.urandom(FILE_BYTES)  # random, in memory only
    phase = args.seconds / 3

    def measure(step: Callable[[], object]) -> float:
        done = 0
        started = time.perf_counter()
        while True:
            step()
            done += FILE_BYTES
            elapsed = time.perf_counter() - started
            if elapsed >= phase:
                return done / elapsed / 1e6

    blob = write_once(payload, args.max_chunk, recording_id, key)

    def read() -> None:
        for _ in decrypt_chunks(io.BytesIO(blob), recording_id=recording_id, data_key=key):
            pass

    def verify() -> None:
        summarize(io.BytesIO(blob), recording_id=recording_id, data_key=key)

    write_mbs = measure(lambda: write_once(payload, args.max_chunk, recording_id, key))
    read_mbs = measure(read)
    verify_mbs = measure(verify)
    overhead = (len(blob) - FILE_BYTES) / FILE_BYTES * 100
    print(
        f"file {FILE_BYTES / 1e6:.0f} MB, max_chunk {args.max_chunk}, "
        f"{PIECE} B writes, flush every {FLUSH_EVERY} writes, overhead {overhead:.3f}%"
    )
    print(f"write (encrypt + 2x SHA-256): {write_mbs:8.1f} MB/s")
    print(f"read  (decrypt_chunks)      : {read_mbs:8.1f} MB/s")
    print(f"verify (summarize)          : {verify_mbs:8.1f} MB/s")


if __name__ == "__main__":
    main()
