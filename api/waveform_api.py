"""GET /api/v1/recordings/{id}/peaks: the waveform of a recording as JSON, from the peak data the
media core computed while encoding (siprec_server/media/peaks.py), decrypted with a key derived
from the recording's data key (storage/peaks.py). Nothing is decoded to draw it.

    {"recording_id", "available": true|false, "interval_ms": 50.0,
     "channels": [{"index": 0, "levels": [0..255, ...]}, ...],
     "key_presses": [{"start_s": 1.25, "channel": 0}, ...]}

Same permission, scope and answers as the audio itself (play; 404 outside the scope, 410 once
erased); every read is audited as recording.waveform. A recording made before peaks existed
answers "available": false, and the browser draws its lanes without a waveform.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any
from uuid import UUID

import numpy as np
from aiohttp import web

from api.app import DB_KEY, ApiInputError
from api.recordings_api import KEYS_KEY
from api.security import principal_of, require
from siprec_server.access import Permission, scope_filter
from siprec_server.logs import get_logger
from siprec_server.media.peaks import Peaks, PeaksFormatError
from storage import search
from storage.audit import AuditEvent, record_audit
from storage.keys import KeyStoreError
from storage.peaks import read_peaks
from storage.playback import RecordingUnreadable, open_recording
from storage.recording_file import RecordingFileError

__all__ = ["DEFAULT_POINTS", "peaks_view", "setup_waveform"]

log = get_logger("api.waveform")

DEFAULT_POINTS = 20_000
MAX_POINTS = 100_000
MIN_POINTS = 10


def peaks_view(peaks: Peaks, points: int) -> dict[str, Any]:
    """The levels, max-pooled to at most `points` per channel (a screen needs no more)."""
    count = len(peaks.levels[0]) if peaks.levels else 0
    factor = max(1, -(-count // points))
    channels = []
    for index, lane in enumerate(peaks.levels):
        levels = np.frombuffer(lane, dtype=np.uint8)
        if factor > 1:
            padded = np.zeros(-(-count // factor) * factor, dtype=np.uint8)
            padded[:count] = levels
            levels = padded.reshape(-1, factor).max(axis=1)
        channels.append({"index": index, "levels": levels.tolist()})
    return {
        "available": True,
        "interval_ms": float(peaks.interval_ms * factor),
        "channels": channels,
        "key_presses": [{"start_s": p.start_ms / 1000, "channel": p.channel}
                        for p in peaks.key_presses],
    }


def _points(request: web.Request) -> int:
    unknown = sorted(set(request.query) - {"points"})
    if unknown:
        raise ApiInputError(f"unknown parameters: {', '.join(unknown)[:200]}")
    text = request.query.get("points")
    if text is None:
        return DEFAULT_POINTS
    if not text.isdigit() or not MIN_POINTS <= int(text) <= MAX_POINTS:
        raise ApiInputError(f"points: a number from {MIN_POINTS} to {MAX_POINTS}")
    return int(text)


@require(Permission.PLAY, action="recording.waveform")
async def show_peaks(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    try:
        recording_id = UUID(request.match_info["id"])
    except ValueError:
        raise ApiInputError("no such recording", status=404, code="not_found") from None
    points = _points(request)
    db = request.app[DB_KEY]
    state = await search.recording_state(db, recording_id,
                                         functools.partial(scope_filter, principal))
    if state is None:
        raise ApiInputError("no such recording", status=404, code="not_found")
    if state["state"] == "erased" or state["erased_at"] is not None:
        raise ApiInputError("the recording was erased", status=410, code="erased")
    body: dict[str, Any] = {"recording_id": str(recording_id), "available": False,
                            "channels": [], "key_presses": []}
    keys = request.app.get(KEYS_KEY)
    if state["has_audio"] and keys is not None:
        try:
            opened = await open_recording(db, keys, recording_id)
            payload = await asyncio.get_running_loop().run_in_executor(
                None, read_peaks, opened.path, recording_id, opened.data_key)
            if payload is not None:
                body.update(peaks_view(Peaks.from_bytes(payload), points))
        except RecordingUnreadable:
            raise ApiInputError("the recording was erased", status=410, code="erased") from None
        except KeyStoreError:
            raise ApiInputError("the recording's key cannot be opened on this server",
                                status=503, code="key_unavailable") from None
        except (RecordingFileError, PeaksFormatError, OSError, ValueError) as exc:
            # The audio may be fine: the waveform is missing, not the recording.
            log.error("peaks_unreadable", recording_id=str(recording_id),
                      error=type(exc).__name__)
    await record_audit(db, AuditEvent(
        actor=str(principal.user_id), action="recording.waveform", target=str(recording_id),
        source=request.remote or "unknown", details={"available": body["available"]}))
    response = web.json_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def setup_waveform(app: web.Application) -> None:
    app.router.add_get("/api/v1/recordings/{id}/peaks", show_peaks, allow_head=False)
