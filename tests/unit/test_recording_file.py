"""The encrypted media file: round trips, tamper and truncation detection, crash recovery."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import struct
from pathlib import Path
from uuid import UUID, uuid4

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from storage.recording_file import (
    MAGIC,
    FileSummary,
    RecordingFileError,
    RecordingFileWriter,
    TamperedRecording,
    TruncatedRecording,
    UnsupportedFormat,
    decrypt_chunks,
    decrypt_range,
    read_header,
    seal_interrupted,
    summarize,
)

RECORDING = UUID("6f1c1d3e-8b0a-4c55-9a57-2f4d3f7f9e21")
OTHER_RECORDING = UUID("0b6e9a4c-1d2f-4e3a-8c5b-7a9d1e2f3c4b")
DEK = bytes(range(32))
OTHER_DEK = bytes(range(1, 33))
KEY_ID = "a1b2c3d4e5f60718"
HEADER_SIZE = 39 + len(KEY_ID)


def record(
    pieces: list[bytes | None],
    *,
    recording_id: UUID = RECORDING,
    data_key: bytes = DEK,
    max_chunk: int = 8,
) -> tuple[bytes, FileSummary]:
    """Write `pieces` (None = flush) and close; return the file bytes and the summary."""
    sink = io.BytesIO()
    writer = RecordingFileWriter(
        sink, recording_id=recording_id, data_key=data_key, key_id=KEY_ID, max_chunk=max_chunk
    )
    for piece in pieces:
        if piece is None:
            writer.flush()
        else:
            writer.write(piece)
    summary = writer.close()
    return sink.getvalue(), summary


def split_records(data: bytes) -> tuple[bytes, list[bytes]]:
    """Split a file into header and chunk records, following the documented format."""
    key_id_size = data[26]
    header_end = 27 + key_id_size + 12
    records = []
    offset = header_end
    while offset < len(data):
        _kind, size = struct.unpack(">BI", data[offset : offset + 5])
        records.append(data[offset : offset + 5 + size])
        offset += 5 + size
    return data[:header_end], records


def decrypt_all(data: bytes, **kwargs: object) -> bytes:
    options: dict[str, object] = {"recording_id": RECORDING, "data_key": DEK}
    options.update(kwargs)
    return b"".join(decrypt_chunks(io.BytesIO(data), **options))  # type: ignore[arg-type]


SMALL = [b"hello, ", b"recorded", None, b" world", None, b"!!"]
SMALL_PLAINTEXT = b"hello, recorded world!!"


# --- round trips --------------------------------------------------------------------------

write_ops = st.lists(
    st.one_of(st.binary(max_size=70), st.none()),
    max_size=25,
)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(ops=write_ops, max_chunk=st.integers(min_value=1, max_value=64))
def test_any_write_and_flush_pattern_round_trips(ops: list[bytes | None], max_chunk: int) -> None:
    data, summary = record(ops, max_chunk=max_chunk)
    plaintext = b"".join(op for op in ops if op is not None)

    assert decrypt_all(data) == plaintext
    assert summary.plaintext_sha256 == hashlib.sha256(plaintext).digest()
    assert summary.ciphertext_sha256 == hashlib.sha256(data).digest()
    assert summary.plaintext_bytes == len(plaintext)
    assert summary.ciphertext_bytes == len(data)
    assert not summary.recovered
    assert summarize(io.BytesIO(data), recording_id=RECORDING, data_key=DEK) == summary

    _, records = split_records(data)
    assert summary.chunks == len(records)
    kinds = [r[0] for r in records]
    assert kinds == [0] * (len(records) - 1) + [1]
    sizes = [len(r) - 5 - 16 for r in records]
    assert all(0 < size <= max_chunk for size in sizes[:-1]), "no empty non-final chunks"
    assert 0 <= sizes[-1] <= max_chunk


def test_header_layout_is_as_documented() -> None:
    data, _ = record([b"x"], max_chunk=4096)
    assert data[0:8] == MAGIC == b"\x89SREC\r\n\x1a"
    assert data[8:10] == b"\x00\x01"
    assert data[10:26] == RECORDING.bytes
    assert data[26] == len(KEY_ID)
    assert data[27 : 27 + len(KEY_ID)] == KEY_ID.encode()
    assert data[27 + len(KEY_ID) : 31 + len(KEY_ID)] == (4096).to_bytes(4, "big")
    header = read_header(io.BytesIO(data))
    assert header.version == 1
    assert header.recording_id == RECORDING
    assert header.key_id == KEY_ID
    assert header.max_chunk == 4096
    assert header.nonce_prefix == data[31 + len(KEY_ID) : HEADER_SIZE]
    assert header.to_bytes() == data[:HEADER_SIZE]


def test_chunks_are_gcm_with_prefix_index_nonce_and_header_hash_aad() -> None:
    data, _ = record([b"12345678", b"abc"], max_chunk=8)
    header, records = split_records(data)
    prefix = header[-8:]
    header_hash = hashlib.sha256(header).digest()
    aead = AESGCM(DEK)
    plain = [
        aead.decrypt(
            prefix + index.to_bytes(4, "big"),
            rec[5:],
            header_hash + index.to_bytes(4, "big") + bytes([rec[0]]),
        )
        for index, rec in enumerate(records)
    ]
    assert plain == [b"12345678", b"abc"]


def test_nonce_prefix_is_fresh_for_every_file() -> None:
    first, _ = record([b"same audio"])
    second, _ = record([b"same audio"])
    assert (
        read_header(io.BytesIO(first)).nonce_prefix != read_header(io.BytesIO(second)).nonce_prefix
    )
    assert first[HEADER_SIZE:] != second[HEADER_SIZE:]


def test_file_never_contains_the_plaintext() -> None:
    audio = os.urandom(4000)
    data, _ = record([audio[:1000], None, audio[1000:]], max_chunk=512)
    for offset in range(0, len(audio) - 16, 16):
        assert audio[offset : offset + 16] not in data


def test_empty_recording_is_a_header_and_an_empty_final_chunk() -> None:
    data, summary = record([])
    assert len(data) == HEADER_SIZE + 5 + 16
    assert summary.chunks == 1
    assert summary.plaintext_bytes == 0
    assert decrypt_all(data) == b""


def test_a_full_last_chunk_is_marked_final_without_an_extra_empty_chunk() -> None:
    _, summary = record([b"12345678" * 3], max_chunk=8)
    assert summary.chunks == 3


def test_flush_with_nothing_buffered_writes_no_chunk() -> None:
    data, summary = record([b"abc", None, None, None, b"def"], max_chunk=8)
    assert summary.chunks == 2
    assert decrypt_all(data) == b"abcdef"


def test_writer_accepts_bytearray_and_memoryview() -> None:
    sink = io.BytesIO()
    writer = RecordingFileWriter(sink, recording_id=RECORDING, data_key=DEK, key_id=KEY_ID)
    writer.write(bytearray(b"ab"))
    writer.write(memoryview(b"cd"))
    writer.close()
    assert decrypt_all(sink.getvalue()) == b"abcd"


def test_writer_refuses_use_after_close_and_bad_parameters() -> None:
    sink = io.BytesIO()
    writer = RecordingFileWriter(sink, recording_id=RECORDING, data_key=DEK, key_id=KEY_ID)
    writer.close()
    assert writer.closed
    with pytest.raises(ValueError):
        writer.write(b"late")
    with pytest.raises(ValueError):
        writer.close()
    for bad in (
        {"data_key": b"short"},
        {"key_id": ""},
        {"key_id": "k" * 256},
        {"max_chunk": 0},
        {"max_chunk": 16 * 1024 * 1024 + 1},
    ):
        options: dict[str, object] = {"recording_id": RECORDING, "data_key": DEK, "key_id": KEY_ID}
        options.update(bad)
        with pytest.raises(ValueError):
            RecordingFileWriter(io.BytesIO(), **options)  # type: ignore[arg-type]


def test_flushed_audio_is_readable_from_disk_while_the_recording_goes_on(
    tmp_path: Path,
) -> None:
    path = tmp_path / "call.rec"
    with open(path, "wb") as sink:
        writer = RecordingFileWriter(
            sink, recording_id=RECORDING, data_key=DEK, key_id=KEY_ID, max_chunk=1024
        )
        writer.write(b"first second of audio")
        writer.flush()
        with open(path, "rb") as reader:
            assert (
                b"".join(
                    decrypt_chunks(
                        reader, recording_id=RECORDING, data_key=DEK, allow_unfinished=True
                    )
                )
                == b"first second of audio"
            )
        writer.write(b", and more")
        writer.close()
    with open(path, "rb") as reader:
        assert summarize(reader, recording_id=RECORDING, data_key=DEK).plaintext_bytes == 31


class ShortReads(io.RawIOBase):
    """A raw stream that hands out at most 3 bytes per read, like a slow pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        chunk = self._data.read(min(3, len(buffer)))
        buffer[: len(chunk)] = chunk
        return len(chunk)


class ShortWrites(io.RawIOBase):
    """A raw stream that accepts at most 5 bytes per write."""

    def __init__(self) -> None:
        self.data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.data += bytes(data[:5])
        return min(5, len(data))


def test_short_reads_and_short_writes_of_raw_streams_are_handled() -> None:
    sink = ShortWrites()
    writer = RecordingFileWriter(
        sink,  # type: ignore[arg-type]
        recording_id=RECORDING,
        data_key=DEK,
        key_id=KEY_ID,
        max_chunk=8,
    )
    writer.write(SMALL_PLAINTEXT)
    summary = writer.close()
    assert summary.ciphertext_bytes == len(sink.data)
    source = ShortReads(bytes(sink.data))
    assert (
        b"".join(decrypt_chunks(source, recording_id=RECORDING, data_key=DEK))  # type: ignore[arg-type]
        == SMALL_PLAINTEXT
    )


# --- tampering ------------------------------------------------------------------------------


def test_flipping_any_byte_is_detected() -> None:
    data, _ = record(SMALL)
    assert decrypt_all(data) == SMALL_PLAINTEXT
    for offset in range(len(data)):
        for mask in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[offset] ^= mask
            expected: tuple[type[RecordingFileError], ...] = (
                (UnsupportedFormat,)
                if offset in (8, 9)
                else (TamperedRecording, TruncatedRecording)
            )
            with pytest.raises(expected):
                decrypt_all(bytes(damaged))
            with pytest.raises(expected):
                summarize(io.BytesIO(bytes(damaged)), recording_id=RECORDING, data_key=DEK)


def test_a_future_format_version_is_unsupported() -> None:
    data, _ = record([b"x"])
    future = data[:8] + b"\x00\x02" + data[10:]
    with pytest.raises(UnsupportedFormat):
        read_header(io.BytesIO(future))


def test_a_file_that_is_not_a_recording_is_rejected() -> None:
    with pytest.raises(TamperedRecording):
        decrypt_all(b"OggS\x00\x02" + bytes(100))


@pytest.mark.parametrize(
    "rearrange",
    [
        pytest.param(lambda r: [r[1], r[0], *r[2:]], id="swapped"),
        pytest.param(lambda r: [r[0], *r], id="duplicated"),
        pytest.param(lambda r: r[1:], id="first-dropped"),
        pytest.param(lambda r: [r[0], *r[2:]], id="middle-dropped"),
        pytest.param(lambda r: [*r[:-2], r[-1]], id="before-final-dropped"),
        pytest.param(lambda r: [*r[:-1], r[-2], r[-1]], id="replayed-before-final"),
    ],
)
def test_reordered_duplicated_or_dropped_chunks_are_detected(rearrange: object) -> None:
    data, _ = record([b"a" * 8, b"b" * 8, b"c" * 8, b"d" * 3], max_chunk=8)
    header, records = split_records(data)
    assert len(records) == 4
    altered = header + b"".join(rearrange(records))  # type: ignore[operator]
    with pytest.raises(TamperedRecording):
        decrypt_all(altered)


def test_dropping_the_final_chunk_is_truncation() -> None:
    data, _ = record([b"a" * 8, b"b" * 8], max_chunk=8)
    header, records = split_records(data)
    with pytest.raises(TruncatedRecording):
        decrypt_all(header + b"".join(records[:-1]))


def test_data_appended_after_the_final_chunk_is_detected() -> None:
    data, _ = record(SMALL)
    _, records = split_records(data)
    with pytest.raises(TamperedRecording):
        decrypt_all(data + records[-1])
    with pytest.raises(TamperedRecording):
        decrypt_all(data + b"\x00")


def test_chunk_spliced_from_another_recording_under_the_same_key_is_detected() -> None:
    ours, _ = record([b"a" * 8, b"b" * 8, b"c"], max_chunk=8)
    theirs, _ = record([b"x" * 8, b"y" * 8, b"z"], recording_id=OTHER_RECORDING, max_chunk=8)
    header, records = split_records(ours)
    _, foreign = split_records(theirs)
    with pytest.raises(TamperedRecording):
        decrypt_all(header + records[0] + foreign[1] + records[2])


def test_chunk_from_another_file_of_the_same_recording_and_key_is_detected() -> None:
    # E.g. a re-recorded file: same recording id and DEK, but a fresh header.
    first, _ = record([b"a" * 8, b"b" * 8, b"c"], max_chunk=8)
    second, _ = record([b"a" * 8, b"B" * 8, b"c"], max_chunk=8)
    header, records = split_records(first)
    _, other = split_records(second)
    with pytest.raises(TamperedRecording):
        decrypt_all(header + records[0] + other[1] + records[2])


def test_header_of_another_file_is_detected() -> None:
    ours, _ = record(SMALL)
    theirs, _ = record(SMALL, recording_id=OTHER_RECORDING)
    their_header, _ = split_records(theirs)
    _, our_records = split_records(ours)
    with pytest.raises(TamperedRecording):
        decrypt_all(their_header + b"".join(our_records), recording_id=OTHER_RECORDING)
    with pytest.raises(TamperedRecording):
        decrypt_all(their_header + b"".join(our_records))


def test_file_of_another_recording_is_refused() -> None:
    theirs, _ = record(SMALL, recording_id=OTHER_RECORDING)
    with pytest.raises(TamperedRecording, match="another recording"):
        decrypt_all(theirs)


def test_wrong_data_key_is_refused_before_any_plaintext() -> None:
    data, _ = record(SMALL)
    chunks = decrypt_chunks(io.BytesIO(data), recording_id=RECORDING, data_key=OTHER_DEK)
    with pytest.raises(TamperedRecording):
        next(chunks)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(garbage=st.binary(max_size=300), keep_header=st.booleans())
def test_garbage_raises_only_recording_file_errors(garbage: bytes, keep_header: bool) -> None:
    data, _ = record(SMALL)
    candidate = (data[:HEADER_SIZE] + garbage) if keep_header else garbage
    for allow_unfinished in (False, True):
        with contextlib.suppress(RecordingFileError):
            decrypt_all(candidate, allow_unfinished=allow_unfinished)
    with contextlib.suppress(RecordingFileError):
        seal_interrupted(io.BytesIO(candidate), recording_id=RECORDING, data_key=DEK)


# --- truncation and crash recovery ----------------------------------------------------------


def complete_chunks_plaintext(data: bytes, cut: int) -> bytes:
    """Plaintext of the chunks lying wholly within data[:cut]."""
    _, records = split_records(data)
    offset = HEADER_SIZE
    plain = b""
    full = decrypt_chunks(io.BytesIO(data), recording_id=RECORDING, data_key=DEK)
    for rec, chunk in zip(records, full, strict=False):
        offset += len(rec)
        if offset > cut:
            break
        plain += chunk
    return plain


def test_truncation_at_every_offset_is_detected() -> None:
    data, _ = record(SMALL)
    for cut in range(len(data)):
        with pytest.raises(TruncatedRecording):
            decrypt_all(data[:cut])
        with pytest.raises(TruncatedRecording):
            summarize(io.BytesIO(data[:cut]), recording_id=RECORDING, data_key=DEK)


def test_unfinished_file_yields_exactly_its_complete_chunks() -> None:
    data, _ = record(SMALL)
    for cut in range(len(data)):
        if cut < HEADER_SIZE:
            with pytest.raises(TruncatedRecording):
                decrypt_all(data[:cut], allow_unfinished=True)
        else:
            assert decrypt_all(data[:cut], allow_unfinished=True) == complete_chunks_plaintext(
                data, cut
            )


def test_seal_interrupted_at_every_offset_keeps_every_complete_chunk() -> None:
    data, _ = record(SMALL)
    for cut in range(HEADER_SIZE, len(data)):
        f = io.BytesIO(data[:cut])
        summary = seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
        sealed = f.getvalue()
        expected = complete_chunks_plaintext(data, cut)
        assert decrypt_all(sealed) == expected
        assert summary.recovered
        assert summary.ciphertext_sha256 == hashlib.sha256(sealed).digest()
        assert summary.ciphertext_bytes == len(sealed)
        assert summary.plaintext_sha256 == hashlib.sha256(expected).digest()
        assert summary.plaintext_bytes == len(expected)
        assert summarize(io.BytesIO(sealed), recording_id=RECORDING, data_key=DEK) == summary


def test_seal_interrupted_on_a_file_cut_mid_chunk(tmp_path: Path) -> None:
    path = tmp_path / "crashed.rec"
    with open(path, "wb") as sink:
        writer = RecordingFileWriter(
            sink, recording_id=RECORDING, data_key=DEK, key_id=KEY_ID, max_chunk=1000
        )
        writer.write(b"A" * 300)
        writer.flush()
        writer.write(b"B" * 300)
        writer.flush()
        writer.write(b"C" * 300)
        writer.flush()
    # The crash: the third flush reached the disk only in part.
    size = path.stat().st_size
    os.truncate(path, size - 100)
    with pytest.raises(TruncatedRecording):
        summarize(path.open("rb"), recording_id=RECORDING, data_key=DEK)

    with open(path, "r+b") as f:
        summary = seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
    sealed = path.read_bytes()
    assert summary.recovered
    assert summary.chunks == 3
    assert summary.plaintext_bytes == 600
    assert summary.ciphertext_sha256 == hashlib.sha256(sealed).digest()
    with open(path, "rb") as f:
        assert b"".join(decrypt_chunks(f, recording_id=RECORDING, data_key=DEK)) == (
            b"A" * 300 + b"B" * 300
        )

    # Start-up recovery may run again after another crash: nothing changes.
    with open(path, "r+b") as f:
        assert seal_interrupted(f, recording_id=RECORDING, data_key=DEK) == summary
    assert path.read_bytes() == sealed


def test_seal_interrupted_leaves_a_cleanly_closed_file_untouched() -> None:
    data, summary = record(SMALL)
    f = io.BytesIO(data)
    assert seal_interrupted(f, recording_id=RECORDING, data_key=DEK) == summary
    assert f.getvalue() == data


def test_seal_interrupted_on_a_file_with_only_a_header_gives_an_empty_recording() -> None:
    data, _ = record(SMALL)
    f = io.BytesIO(data[:HEADER_SIZE])
    summary = seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
    assert summary.plaintext_bytes == 0
    assert summary.chunks == 1
    assert decrypt_all(f.getvalue()) == b""


def test_seal_interrupted_without_a_whole_header_fails_as_truncated() -> None:
    data, _ = record(SMALL)
    with pytest.raises(TruncatedRecording):
        seal_interrupted(io.BytesIO(data[:20]), recording_id=RECORDING, data_key=DEK)


def test_seal_interrupted_refuses_a_tampered_file_and_leaves_it_alone() -> None:
    data, _ = record(SMALL)
    damaged = bytearray(data[:-10])
    damaged[HEADER_SIZE + 7] ^= 1
    f = io.BytesIO(bytes(damaged))
    with pytest.raises(TamperedRecording):
        seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
    assert f.getvalue() == bytes(damaged)


def test_recovery_chunk_skips_the_index_the_interrupted_chunk_used() -> None:
    # The interrupted chunk may have been partly written with nonce index n; reusing that
    # nonce for the recovery chunk would break GCM. The recovery chunk uses n + 1.
    data, _ = record([b"a" * 8, b"b" * 8, b"c" * 8], max_chunk=8)
    header, records = split_records(data)
    f = io.BytesIO(header + records[0] + records[1][:9])
    seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
    _, sealed_records = split_records(f.getvalue())
    final = sealed_records[-1]
    assert final[0] == 2
    index = (2).to_bytes(4, "big")
    AESGCM(DEK).decrypt(
        header[-8:] + index, final[5:], hashlib.sha256(header).digest() + index + b"\x02"
    )


def test_recovery_chunk_cannot_replace_a_real_final_chunk() -> None:
    data, _ = record([b"a" * 8, b"b" * 8, b"c" * 8], max_chunk=8)
    header, records = split_records(data)
    f = io.BytesIO(header + records[0])
    seal_interrupted(f, recording_id=RECORDING, data_key=DEK)
    _, sealed_records = split_records(f.getvalue())
    with pytest.raises(TamperedRecording):
        decrypt_all(header + records[0] + records[1] + sealed_records[-1])


# --- range playback -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    ops=write_ops,
    max_chunk=st.integers(min_value=1, max_value=32),
    start=st.integers(min_value=0, max_value=400),
    length=st.one_of(st.none(), st.integers(min_value=0, max_value=400)),
)
def test_range_returns_the_same_bytes_as_slicing_the_plaintext(
    ops: list[bytes | None], max_chunk: int, start: int, length: int | None
) -> None:
    data, _ = record(ops, max_chunk=max_chunk)
    plaintext = b"".join(op for op in ops if op is not None)
    end = None if length is None else start + length
    pieces = list(
        decrypt_range(io.BytesIO(data), recording_id=RECORDING, data_key=DEK, start=start, end=end)
    )
    assert all(pieces)
    assert b"".join(pieces) == plaintext[start:end]


def test_bounded_range_stops_reading_once_served() -> None:
    data, _ = record([os.urandom(100_000)], max_chunk=1000)
    source = io.BytesIO(data)
    served = b"".join(
        decrypt_range(source, recording_id=RECORDING, data_key=DEK, start=1500, end=2500)
    )
    assert len(served) == 1000
    assert source.tell() < 4000


def test_open_ended_range_detects_truncation() -> None:
    data, _ = record([b"x" * 100], max_chunk=10)
    with pytest.raises(TruncatedRecording):
        b"".join(
            decrypt_range(
                io.BytesIO(data[:-3]), recording_id=RECORDING, data_key=DEK, start=50, end=None
            )
        )


def test_range_of_a_tampered_file_fails() -> None:
    data, _ = record([b"x" * 100], max_chunk=10)
    damaged = bytearray(data)
    damaged[HEADER_SIZE + 8] ^= 1
    with pytest.raises(TamperedRecording):
        b"".join(
            decrypt_range(
                io.BytesIO(bytes(damaged)), recording_id=RECORDING, data_key=DEK, start=50, end=60
            )
        )


def test_invalid_range_is_a_caller_error() -> None:
    data, _ = record(SMALL)
    with pytest.raises(ValueError):
        decrypt_range(io.BytesIO(data), recording_id=RECORDING, data_key=DEK, start=-1, end=None)
    with pytest.raises(ValueError):
        decrypt_range(io.BytesIO(data), recording_id=RECORDING, data_key=DEK, start=5, end=4)


def test_read_header_needs_no_key_and_reports_truncation() -> None:
    data, _ = record(SMALL, recording_id=uuid4())
    assert read_header(io.BytesIO(data)).key_id == KEY_ID
    with pytest.raises(TruncatedRecording):
        read_header(io.BytesIO(data[: HEADER_SIZE - 1]))


def test_a_data_key_of_the_wrong_size_is_a_caller_error() -> None:
    data, _ = record(SMALL)
    with pytest.raises(ValueError):
        decrypt_chunks(io.BytesIO(data), recording_id=RECORDING, data_key=DEK[:16])
    with pytest.raises(ValueError):
        decrypt_range(io.BytesIO(data), recording_id=RECORDING, data_key=b"", start=0, end=None)
