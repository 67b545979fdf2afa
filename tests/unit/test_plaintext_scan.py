"""The scanner that guards 'no plaintext audio on disk' must itself find plaintext audio."""

from pathlib import Path

from storage.recording_file import MAGIC
from tests.plaintext_scan import plaintext_audio_findings


def test_scanner_finds_ogg_wav_and_unencrypted_recordings(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"junk" + b"OggS" + b"\x00" * 20)
    (tmp_path / "y.dat").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    (tmp_path / "k.key").write_bytes(b"c2VjcmV0ID3xyz")  # base64 may hold "ID3" by chance
    (tmp_path / "z.srec").write_bytes(b"not ours")
    (tmp_path / "t.wav").write_bytes(b"")
    findings = "\n".join(plaintext_audio_findings(tmp_path))
    assert "x.bin" in findings and "y.dat" in findings
    assert "k.key" not in findings
    assert "z.srec: recording file not in the encrypted format" in findings
    assert "t.wav: audio file name" in findings


def test_scanner_accepts_encrypted_recordings(tmp_path: Path) -> None:
    (tmp_path / "ok.srec").write_bytes(MAGIC + bytes(range(200)))
    assert plaintext_audio_findings(tmp_path) == []
