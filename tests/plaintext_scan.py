"""Finds plaintext audio on disk: Ogg/Opus/WAV/FLAC/MP3 signatures anywhere in any file, audio
file names, and recording files that are not in our encrypted format."""

from __future__ import annotations

from pathlib import Path

from storage.recording_file import MAGIC

SIGNATURES = (b"OggS", b"OpusHead", b"OpusTags", b"RIFF", b"WAVE", b"fLaC", b"ID3")
AUDIO_SUFFIXES = {".wav", ".ogg", ".opus", ".oga", ".raw", ".pcm", ".mp3", ".flac", ".au"}


def plaintext_audio_findings(root: Path) -> list[str]:
    findings: list[str] = []
    for path in root.rglob("*"):
        if not path.is_file() or path.is_symlink():
            continue
        if path.suffix.lower() in AUDIO_SUFFIXES:
            findings.append(f"{path}: audio file name")
        try:
            data = path.read_bytes()
        except PermissionError:
            continue
        if path.suffix == ".srec":
            if data.startswith(MAGIC):
                # AEAD ciphertext: a 4-byte signature may occur in it by chance; the chunks
                # authenticate or the file is not readable at all (tests/unit/test_recording_file).
                continue
            findings.append(f"{path}: recording file not in the encrypted format")
        for signature in SIGNATURES:
            if signature in data:
                findings.append(f"{path}: contains {signature!r}")
    return findings
