"""Finds plaintext audio on disk: Ogg/Opus/WAV/FLAC/MP3 signatures anywhere in any file, audio
file names, and recording files that are not in our encrypted format."""

from __future__ import annotations

from pathlib import Path

from storage.recording_file import MAGIC

SIGNATURES = (b"OggS", b"OpusHead", b"OpusTags")
"""Found anywhere: an Ogg stream can start at any offset of a file that holds one."""
FILE_MAGIC = (b"RIFF", b"fLaC", b"ID3", b"\xff\xfb", b".snd")
"""Found at the start only: short enough to occur by chance inside key files' base64."""
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
        for magic in FILE_MAGIC:
            if data.startswith(magic):
                findings.append(f"{path}: starts with {magic!r}")
    return findings
