"""libopus, called directly (ctypes): one mono encoder per recorded party.

PyAV wraps the same library but costs about 10 µs per frame in frame objects and codec-context
bookkeeping, which is a tenth of the encoding itself at our settings; and it only offers
libopus's multistream encoder, which encodes every channel of every frame. Calling libopus
directly, per channel, lets the recording skip a party's encoder while that party is silent
(siprec_server/media/ogg_opus.py) and assemble the multistream packet itself
(`self_delimited`, RFC 6716 Appendix B).

The library is the one PyAV ships (its wheel bundles libopus, so no system package is needed);
a system libopus (Debian libopus0) is used when PyAV's cannot be found.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import glob
import os
from typing import Final

import numpy as np
import numpy.typing as npt

from siprec_server.media.errors import MediaError

__all__ = ["LibopusError", "OpusEncoder", "libopus_version", "self_delimited"]

APPLICATIONS: Final = {"voip": 2048, "audio": 2049, "lowdelay": 2051}
_SET_BITRATE: Final = 4002
_SET_VBR: Final = 4006
_SET_COMPLEXITY: Final = 4010
_GET_LOOKAHEAD: Final = 4027
_RESET_STATE: Final = 4028
_MAX_PACKET: Final = 4000


class LibopusError(MediaError, RuntimeError):
    """libopus is missing, or refused a call."""


@functools.cache
def _library() -> ctypes.CDLL:
    candidates: list[str] = []
    try:
        import av

        bundled = os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs")
        candidates += sorted(glob.glob(os.path.join(bundled, "libopus*.so*")))
    except ImportError:  # pragma: no cover - av is a dependency
        pass
    system = ctypes.util.find_library("opus")
    if system:
        candidates.append(system)
    for candidate in candidates:
        try:
            lib = ctypes.CDLL(candidate)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_int)]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
                                    ctypes.c_void_p, ctypes.c_int32]
        lib.opus_encoder_ctl.restype = ctypes.c_int
        lib.opus_get_version_string.restype = ctypes.c_char_p
        lib.opus_strerror.restype = ctypes.c_char_p
        return lib
    raise LibopusError("libopus not found (neither PyAV's bundled copy nor a system libopus)")


def libopus_version() -> str:
    return bytes(_library().opus_get_version_string()).decode()


def _check(code: int, what: str) -> int:
    if code < 0:
        message = bytes(_library().opus_strerror(code)).decode()
        raise LibopusError(f"libopus {what}: {message}")
    return code


class OpusEncoder:
    """One mono Opus stream."""

    __slots__ = ("_lib", "_state", "_out", "frame_size", "lookahead")

    def __init__(self, rate: int, frame_size: int, *, application: str, bitrate: int,
                 complexity: int, vbr: bool = True) -> None:
        self._lib = _library()
        error = ctypes.c_int()
        state = self._lib.opus_encoder_create(rate, 1, APPLICATIONS[application],
                                              ctypes.byref(error))
        _check(error.value, "encoder_create")
        self._state = ctypes.c_void_p(state)
        self._out = ctypes.create_string_buffer(_MAX_PACKET)
        self.frame_size = frame_size
        ctl = self._lib.opus_encoder_ctl
        _check(ctl(self._state, _SET_BITRATE, ctypes.c_int32(bitrate)), "set bitrate")
        _check(ctl(self._state, _SET_VBR, ctypes.c_int32(int(vbr))), "set vbr")
        _check(ctl(self._state, _SET_COMPLEXITY, ctypes.c_int32(complexity)), "set complexity")
        lookahead = ctypes.c_int32()
        _check(ctl(self._state, _GET_LOOKAHEAD, ctypes.byref(lookahead)), "get lookahead")
        self.lookahead = lookahead.value
        """Samples at the input rate the decoder must drop (the pre-skip, before scaling)."""

    def encode(self, pcm: npt.NDArray[np.int16]) -> bytes:
        """One frame of `frame_size` samples (C-contiguous int16) -> one Opus packet."""
        size = self._lib.opus_encode(self._state, pcm.ctypes.data, self.frame_size, self._out,
                                     _MAX_PACKET)
        return self._out.raw[: _check(size, "encode")]

    def reset(self) -> None:
        """Forget the signal so far (as a new stream would start)."""
        _check(self._lib.opus_encoder_ctl(self._state, _RESET_STATE), "reset")

    def __del__(self) -> None:
        state = getattr(self, "_state", None)
        if state is not None and state.value:
            self._lib.opus_encoder_destroy(state)
            self._state = ctypes.c_void_p(None)


def _length(n: int) -> bytes:
    """A frame length as RFC 6716 §3.2.1 codes it (one byte below 252, else two)."""
    if n < 252:
        return bytes((n,))
    first = 252 + (n & 3)
    return bytes((first, (n - first) >> 2))


def _read_length(packet: bytes, at: int) -> tuple[int, int]:
    first = packet[at]
    if first < 252:
        return first, at + 1
    return first + 4 * packet[at + 1], at + 2


def self_delimited(packet: bytes) -> bytes:
    """The same Opus packet in self-delimiting framing (RFC 6716 Appendix B): the length of its
    last frame is written out, so packets can follow each other in one multistream packet."""
    if not packet:
        raise LibopusError("an empty Opus packet cannot be framed")
    toc = packet[0]
    code = toc & 3
    if code == 0:
        return bytes((toc,)) + _length(len(packet) - 1) + packet[1:]
    if code == 1:
        return bytes((toc,)) + _length((len(packet) - 1) // 2) + packet[1:]
    if code == 2:
        first, data = _read_length(packet, 1)
        last = len(packet) - data - first
        return packet[:data] + _length(last) + packet[data:]
    count = packet[1]
    frames, vbr, padded = count & 0x3F, count & 0x80, count & 0x40
    if padded:
        raise LibopusError("padded code 3 packets are not framed here")  # libopus VBR: never
    at = 2
    if vbr:
        sizes = 0
        for _ in range(frames - 1):
            size, at = _read_length(packet, at)
            sizes += size
        last = len(packet) - at - sizes
    else:
        last = (len(packet) - at) // frames
    return packet[:at] + _length(last) + packet[at:]
