"""Waveform peaks: computed from the blocks the encoder gets, stored encrypted beside the
recording under a key derived from its data key, and max-pooled for a screen."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

from api.waveform_api import peaks_view
from siprec_server.media.peaks import KeyPress, PeakMeter, Peaks, PeaksFormatError
from storage.keys import new_data_key
from storage.peaks import (
    peaks_key,
    peaks_path,
    read_peaks,
    rekey_peaks,
    remove_peaks,
    write_peaks,
)
from storage.recording_file import TamperedRecording
from tests.plaintext_scan import plaintext_audio_findings


def test_levels_are_the_loudest_sample_of_each_channel_per_interval() -> None:
    meter = PeakMeter(channels=2, rate=8000)  # 50 ms = 400 samples
    pcm = np.zeros((1000, 2), dtype=np.int16)
    pcm[10, 0] = -32768  # abs() of the most negative int16 must not overflow
    pcm[450, 1] = 16384
    pcm[900, 0] = 1  # a whisper still shows
    meter.feed(pcm[:333])  # blocks that do not end on an interval boundary
    meter.feed(pcm[333:])
    peaks = meter.finish()
    assert peaks.interval_ms == 50
    assert list(peaks.levels[0]) == [255, 0, 1]  # the last, partial interval included
    assert list(peaks.levels[1]) == [0, 128, 0]


def test_key_presses_keep_their_time_and_channel_never_the_digit() -> None:
    meter = PeakMeter(channels=2, rate=8000)
    meter.key_press(2.5, 1)
    meter.key_press(1.0, 0)
    meter.key_press(1.0, 7)  # no such channel: ignored
    peaks = meter.finish()
    assert peaks.key_presses == (KeyPress(1000, 0), KeyPress(2500, 1))
    assert "digit" not in KeyPress.__dataclass_fields__


def test_binary_form_round_trips_and_refuses_garbage() -> None:
    peaks = Peaks(50, (b"\x00\x10\xff", b"\x01\x02\x03"), (KeyPress(120, 1),))
    assert Peaks.from_bytes(peaks.to_bytes()) == peaks
    for bad in (b"", b"XXXX" + peaks.to_bytes()[4:], peaks.to_bytes()[:-1]):
        with pytest.raises(PeaksFormatError):
            Peaks.from_bytes(bad)


def test_peaks_are_stored_encrypted_under_a_key_derived_from_the_data_key(
        tmp_path: Path) -> None:
    rid = uuid.uuid4()
    dek = new_data_key()
    recording = tmp_path / f"{rid}.srec"
    payload = Peaks(50, (bytes(range(256)) * 40,)).to_bytes()
    path = write_peaks(recording, rid, dek, payload)
    assert path == peaks_path(recording) and path.name == f"{rid}.peaks"
    assert (path.stat().st_mode & 0o777) == 0o600
    assert payload[:64] not in path.read_bytes()
    assert not plaintext_audio_findings(tmp_path)
    assert peaks_key(dek, rid) != dek
    assert peaks_key(dek, rid) != peaks_key(dek, uuid.uuid4())
    assert read_peaks(recording, rid, dek) == payload
    with pytest.raises(TamperedRecording):
        read_peaks(recording, rid, new_data_key())  # another key: refused, not garbage
    remove_peaks(recording)
    assert read_peaks(recording, rid, dek) is None  # a recording without peaks
    assert not list(tmp_path.iterdir())


def test_a_screen_gets_max_pooled_levels() -> None:
    peaks = Peaks(50, (bytes([0, 9, 1, 0, 0, 200, 3]),))
    view = peaks_view(peaks, points=3)
    assert view["interval_ms"] == 150.0
    assert view["channels"] == [{"index": 0, "levels": [9, 200, 3]}]
    assert peaks_view(peaks, points=100)["channels"][0]["levels"] == [0, 9, 1, 0, 0, 200, 3]


def test_peaks_follow_a_recording_to_its_new_data_key(tmp_path: Path) -> None:
    rid = uuid.uuid4()
    old, new = new_data_key(), new_data_key()
    recording = tmp_path / f"{rid}.srec"
    payload = Peaks(50, (b"\x01\x02",)).to_bytes()
    write_peaks(recording, rid, old, payload)
    rekey_peaks(recording, rid, old, new)
    assert read_peaks(recording, rid, new) == payload
    with pytest.raises(TamperedRecording):
        read_peaks(recording, rid, old)
    rekey_peaks(recording, rid, old, new)  # a second run after a crash changes nothing
    assert read_peaks(recording, rid, new) == payload
    rekey_peaks(recording, rid, new_data_key(), new_data_key())  # opens with neither: gone
    assert read_peaks(recording, rid, new) is None
