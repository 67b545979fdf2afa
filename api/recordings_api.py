"""Recordings endpoints of the control API: search (JSON, or CSV for the right of access),
metadata, streamed decrypted playback with byte ranges, erasure, and pausing a live call.

    GET    /api/v1/recordings               search       ?participant= &number= &aor= &name=
                                                         &tag= &call_id= &session_id= &state= &from=
                                                         &to= &limit= &cursor= [&format=csv:
                                                         export]
    GET    /api/v1/recordings/{id}          search       ?verify=true checks signature + file
    GET    /api/v1/recordings/{id}/audio    play         Range: bytes=a-b | a- | -n
    DELETE /api/v1/recordings/{id}          delete       {"reason": "..."}
    POST   /api/v1/calls/{ref}/pause        pause        ref = Call-ID, SIPREC session id or
    POST   /api/v1/calls/{ref}/resume       pause        recording id

A user's scope is applied inside every statement: a recording outside it answers exactly like
one that does not exist (404), and a search never counts what it does not return. Every access
writes an audit event whose details name the kinds of filter used, never the searched values.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import unquote, unquote_plus
from uuid import UUID

from aiohttp import web
from multidict import MultiDict, MultiMapping

from api.app import DB_KEY, ApiInputError, parse_timestamp, read_json_object
from api.deliveries_api import setup_deliveries
from api.jobs_api import setup_jobs
from api.lifecycle_api import setup_lifecycle
from api.openapi import setup_openapi
from api.rules_api import setup_rules
from api.security import audit_denied, principal_of, require
from api.views import detail_view, recording_view, tombstone_view
from siprec_server.access import Permission, Principal
from siprec_server.logs import get_logger
from siprec_server.numbers import normalize_number
from siprec_server.siprec.metadata import normalize_aor
from storage import search
from storage.audit import AuditEvent, record_audit
from storage.erasure import (
    MAX_REASON_LENGTH,
    NoRecordingToErase,
    RecordingActive,
    RecordingHeld,
    erase_recording,
)
from storage.keys import KeyRing, KeyStoreError
from storage.playback import RecordingUnreadable, open_recording
from storage.recording_file import RecordingFileError
from storage.verification import verify_recording

__all__ = [
    "KEYS_KEY",
    "MEDIA_KEY",
    "MediaControl",
    "RangeNotSatisfiable",
    "byte_range",
    "search_query",
    "setup_recordings",
]

log = get_logger("api.recordings")


class MediaControl(Protocol):
    """What the API needs of the media service (siprec_server.media_service.MediaService)."""

    def pause(self, recording_id: UUID, source: str) -> bool | None: ...

    def resume(self, recording_id: UUID, source: str) -> bool | None: ...


MEDIA_KEY = web.AppKey("media", MediaControl)
KEYS_KEY = web.AppKey("keys", KeyRing)

MAX_JSON_BODY = 16 * 1024
MAX_FILTER_VALUES = 10
MAX_VALUE_LENGTH = 256
MIN_NAME_LENGTH = 3  # shorter substrings cannot use the trigram index and match nearly all
CSV_BATCH = 500
_SEARCH_PARAMS = frozenset({"participant", "number", "aor", "name", "call_id", "session_id",
                            "state", "from", "to", "limit", "cursor", "format", "tag"})


def _not_found() -> ApiInputError:
    return ApiInputError("no such recording", status=404, code="not_found")


def _recording_id(request: web.Request) -> UUID:
    try:
        return UUID(request.match_info["id"])
    except ValueError:
        raise _not_found() from None


def _scope(principal: Principal) -> search.ScopeSql:
    return principal.recording_scope()


def _source(request: web.Request) -> str:
    return request.remote or "unknown"


async def _audit(request: web.Request, principal: Principal, action: str, *,
                 target: str | None = None, outcome: str = "success",
                 details: Mapping[str, Any] | None = None) -> None:
    await record_audit(request.app[DB_KEY], AuditEvent(
        actor=str(principal.user_id), action=action, outcome=outcome, target=target,
        source=_source(request), details=details,
    ))


# ------------------------------------------------------------------------------ search


def _values(params: MultiMapping[str], name: str) -> list[str]:
    values = params.getall(name, [])
    if len(values) > MAX_FILTER_VALUES:
        raise ApiInputError(f"{name}: at most {MAX_FILTER_VALUES} values")
    for value in values:
        if not value.strip() or len(value) > MAX_VALUE_LENGTH:
            raise ApiInputError(f"{name}: 1 to {MAX_VALUE_LENGTH} characters")
        if "\x00" in value:
            raise ApiInputError(f"{name}: must not contain NUL")
    return values


def _single(params: MultiMapping[str], name: str) -> str | None:
    values = _values(params, name)
    if len(values) > 1:
        raise ApiInputError(f"{name}: give it once")
    return values[0] if values else None


def _timestamp(name: str, text: str | None) -> datetime | None:
    return None if text is None else parse_timestamp(name, text)


def _aor(text: str) -> str:
    return normalize_aor(text).lower()


_LITERAL_PLUS = frozenset({"participant", "number", "aor"})


def search_params(request: web.Request) -> MultiMapping[str]:
    """The query string, except where a `+` typed by a person is a plus: `?participant=
    +442079460000` pasted into curl or a browser means the E.164 number, not a number after a
    space (what form encoding would make of it). In numbers a leading `+` is a plus and the
    others are spaces (clients that encode send a plus as %2B); in SIP URIs, which hold no
    spaces, every `+` is a plus."""
    params: MultiDict[str] = MultiDict()
    for pair in request.rel_url.raw_query_string.split("&"):
        if not pair:
            continue
        raw_name, _, raw_value = pair.partition("=")
        name = unquote_plus(raw_name)
        params.add(name, _party(raw_value) if name in _LITERAL_PLUS else unquote_plus(raw_value))
    return params


def _party(raw: str) -> str:
    upper = raw.upper()
    if any(mark in upper for mark in (":", "@", "%3A", "%40")):
        return unquote(raw)
    value = unquote_plus(raw)
    return "+" + value[1:] if raw.startswith("+") else value


def search_query(params: MultiMapping[str]) -> search.RecordingQuery:
    """The search a query string asks for. A `participant` is a number when it holds one
    (`+44 20 7946 0000`, `00442079460000`, `sip:+442079460000@host` alike), else an AOR."""
    unknown = sorted(set(params) - _SEARCH_PARAMS)
    if unknown:
        raise ApiInputError(f"unknown parameters: {', '.join(unknown)[:200]}")
    numbers: list[str] = []
    aors: list[str] = []
    for value in _values(params, "participant"):
        number = normalize_number(value)
        if number is not None:
            numbers.append(number)
        else:
            aors.append(_aor(value))
    for value in _values(params, "number"):
        number = normalize_number(value)
        if number is None:
            raise ApiInputError("number: not a phone number")
        numbers.append(number)
    aors += [_aor(value) for value in _values(params, "aor")]
    names = _values(params, "name")
    if any(len(name.strip()) < MIN_NAME_LENGTH for name in names):
        raise ApiInputError(f"name: at least {MIN_NAME_LENGTH} characters")
    states = [s.strip() for value in _values(params, "state") for s in value.split(",")]
    limit_text = _single(params, "limit")
    if limit_text is not None and not (limit_text.isdigit() and len(limit_text) <= 6):
        raise ApiInputError(f"limit: a number from 1 to {search.MAX_LIMIT}")
    cursor_text = _single(params, "cursor")
    return search.RecordingQuery(
        numbers=tuple(numbers),
        aors=tuple(aors),
        names=tuple(name.strip() for name in names),
        tags=tuple(tag.strip().lower() for tag in _values(params, "tag")),
        call_id=_single(params, "call_id"),
        session_id=_single(params, "session_id"),
        states=tuple(states),
        started_from=_timestamp("from", _single(params, "from")),
        started_to=_timestamp("to", _single(params, "to")),
        limit=int(limit_text) if limit_text is not None else search.DEFAULT_LIMIT,
        after=search.Cursor.decode(cursor_text) if cursor_text is not None else None,
    )


def _wants_csv(request: web.Request) -> bool:
    chosen = request.query.get("format")
    if chosen is not None:
        if chosen not in ("json", "csv"):
            raise ApiInputError("format: json or csv")
        return chosen == "csv"
    accept = request.headers.get("Accept", "")
    return "text/csv" in accept and "json" not in accept


async def list_recordings(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    as_csv = _wants_csv(request)
    needed = Permission.EXPORT if as_csv else Permission.SEARCH
    action = "recording.export" if as_csv else "recording.search"
    if not principal.can(needed):
        await audit_denied(request, principal, action, needed)
        raise ApiInputError(f"this needs the {needed.value} permission", status=403,
                            code="forbidden")
    query = search_query(search_params(request))
    if as_csv:
        return await _export_csv(request, principal, query)
    page = await search.search_recordings(request.app[DB_KEY], query, _scope(principal))
    await _audit(request, principal, "recording.search",
                 details={"filters": query.filter_kinds, "returned": len(page.items)})
    return web.json_response({"items": [recording_view(found) for found in page.items],
                              "next_cursor": page.next_cursor})


CSV_COLUMNS = ("id", "call_id", "session_id", "state", "started_at", "ended_at", "duration_s",
               "participant_aors", "participant_names", "participant_numbers", "pauses")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9.]+")


def _csv_cell(value: object) -> str:
    text = "" if value is None else str(value)
    # A spreadsheet runs a cell starting with = + - @ as a formula; a caller's display name
    # is attacker-chosen. Numbers such as +442079460000 are left as they are.
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def _csv_row(item: Mapping[str, Any]) -> list[str]:
    parties = item["participants"]
    return [_csv_cell(v) for v in (
        item["id"], item["call_id"], item["session_id"], item["state"], item["started_at"],
        item["ended_at"], item["duration_s"],
        "; ".join(p["aor"] or "" for p in parties),
        "; ".join(p["name"] or "" for p in parties),
        "; ".join(p["number"] or "" for p in parties),
        "; ".join(f"{p['start_s']}-{p['end_s']} {p['source']}" for p in item["pauses"]),
    )]


def _csv_text(rows: list[list[str]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerows(rows)
    return buffer.getvalue().encode("utf-8")


async def _export_csv(request: web.Request, principal: Principal,
                      query: search.RecordingQuery) -> web.StreamResponse:
    """Every match (up to `limit` when given), streamed in pages of CSV_BATCH."""
    cap = query.limit if "limit" in request.query else None
    response = web.StreamResponse(headers={
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": 'attachment; filename="recordings.csv"',
        "Cache-Control": "no-store",
    })
    response.enable_chunked_encoding()
    exported = 0

    async def audit(outcome: str) -> None:
        await _audit(request, principal, "recording.export", outcome=outcome,
                     details={"filters": query.filter_kinds, "exported": exported,
                              "format": "csv"})

    page_query = dataclasses.replace(
        query, limit=CSV_BATCH if cap is None else min(CSV_BATCH, cap))
    # The first page is read before the status goes out: a query that cannot run is answered
    # with an error, not with a 200 whose body breaks off.
    page = await search.search_recordings(request.app[DB_KEY], page_query, _scope(principal))
    try:
        await response.prepare(request)
        await response.write(_csv_text([list(CSV_COLUMNS)]))
        while True:
            if exported:
                batch = CSV_BATCH if cap is None else min(CSV_BATCH, cap - exported)
                page_query = dataclasses.replace(page_query, limit=batch)
                page = await search.search_recordings(request.app[DB_KEY], page_query,
                                                      _scope(principal))
            if page.items:
                await response.write(_csv_text(
                    [_csv_row(recording_view(found)) for found in page.items]))
            exported += len(page.items)
            if page.next_cursor is None or (cap is not None and exported >= cap):
                break
            page_query = dataclasses.replace(
                page_query, after=search.Cursor.decode(page.next_cursor))
    except BaseException:
        await audit("failure")  # what left before the failure was exported all the same
        raise
    # Audited before the body ends, so the event exists once the client has the whole file.
    await audit("success")
    await response.write_eof()
    return response


# ------------------------------------------------------------------------------ metadata


def _flag(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise ApiInputError(f"{name}: true or false")
    return value in ("true", "1")


@require(Permission.SEARCH, action="recording.view")
async def show_recording(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    recording_id = _recording_id(request)
    unknown = sorted(set(request.query) - {"verify"})
    if unknown:
        raise ApiInputError(f"unknown parameters: {', '.join(unknown)[:200]}")
    verify = _flag(request, "verify")
    db = request.app[DB_KEY]
    found = await search.find_recording(db, recording_id, _scope(principal))
    if found is None:
        raise _not_found()
    view = detail_view(found)
    details: dict[str, Any] = {"verify": verify}
    if verify:
        keys = request.app.get(KEYS_KEY)
        if keys is None:
            raise ApiInputError("this server cannot verify recordings (no key ring)",
                                status=503, code="unavailable")
        check = await verify_recording(db, keys, recording_id)
        signature = view["signature"]
        if check.skipped is not None:
            signature["skipped"] = check.skipped
        else:
            signature["verified"] = check.ok
            signature["state"] = "verified" if check.ok else "failed"
            signature["problems"] = list(check.problems)
        details["verified"] = signature["verified"]
    await _audit(request, principal, "recording.view", target=str(recording_id),
                 details=details)
    return web.json_response(view)


# ------------------------------------------------------------------------------ playback


class RangeNotSatisfiable(ValueError):
    """A Range header this server refuses (malformed, or outside the recording)."""


_BYTES_RANGE = re.compile(r"\s*([0-9]{0,18})\s*-\s*([0-9]{0,18})\s*")


def byte_range(header: str | None, size: int | None) -> tuple[int, int] | None:
    """The part of a `size`-byte body a Range header asks for, as [start, end); None for the
    whole body (no header, size not known yet, another unit, or several ranges — all of which
    RFC 9110 §14.2 lets a server answer with 200). RangeNotSatisfiable for a malformed byte
    range or one that starts past the end."""
    if header is None or size is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    if "," in spec:
        return None
    match = _BYTES_RANGE.fullmatch(spec)
    if match is None or not (match[1] or match[2]):
        raise RangeNotSatisfiable("malformed byte range")
    first, last = match[1], match[2]
    if not first:  # bytes=-n: the last n bytes
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiable("empty suffix range")
        return max(0, size - suffix), size
    start = int(first)
    if last and int(last) < start:
        raise RangeNotSatisfiable("range ends before it starts")
    if start >= size:
        raise RangeNotSatisfiable("range starts past the end")
    return start, size if not last else min(int(last) + 1, size)


async def _next_piece(pieces: Iterator[bytes]) -> bytes | None:
    # File reads and AES-GCM run off the event loop; other requests keep flowing.
    return await asyncio.get_running_loop().run_in_executor(None, next, pieces, None)


@require(Permission.PLAY, action="recording.play")
async def play_recording(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    recording_id = _recording_id(request)
    db = request.app[DB_KEY]
    state = await search.recording_state(db, recording_id, _scope(principal))
    if state is None:
        raise _not_found()
    if state["state"] == "erased" or state["erased_at"] is not None:
        raise ApiInputError("the recording was erased", status=410, code="erased")
    if not state["has_audio"]:
        raise ApiInputError("the recording has no audio", status=404, code="no_audio")
    keys = request.app.get(KEYS_KEY)
    if keys is None:
        raise ApiInputError("this server cannot play recordings (no key ring)",
                            status=503, code="unavailable")
    try:
        opened = await open_recording(db, keys, recording_id)
    except RecordingUnreadable:
        # The key went between the two reads: an erasure in progress.
        raise ApiInputError("the recording was erased", status=410, code="erased") from None
    except KeyStoreError:
        log.error("playback_key_unavailable", recording_id=str(recording_id))
        raise ApiInputError("the recording's key cannot be opened on this server",
                            status=503, code="key_unavailable") from None
    size = opened.plaintext_bytes if opened.state not in ("offered", "recording") else None
    header = request.headers.get("Range")
    try:
        wanted = byte_range(header, size)
    except RangeNotSatisfiable as exc:
        await _audit(request, principal, "recording.play", target=str(recording_id),
                     outcome="failure", details={"range": header[:100] if header else None,
                                                 "status": 416})
        raise ApiInputError(f"Range: {exc}", status=416, code="range_not_satisfiable",
                            headers={"Content-Range": f"bytes */{size}"}) from None
    start, end = wanted if wanted is not None else (0, None)
    pieces = opened.read(start, end)
    try:
        first = await _next_piece(pieces)
    except (RecordingFileError, OSError) as exc:
        log.error("playback_unreadable", recording_id=str(recording_id), error=repr(exc))
        await _audit(request, principal, "recording.play", target=str(recording_id),
                     outcome="failure", details={"error": type(exc).__name__})
        raise ApiInputError("the recording file is damaged or missing", status=500,
                            code="recording_unreadable") from None
    status = 206 if wanted is not None else 200
    await _audit(request, principal, "recording.play", target=str(recording_id),
                 details={"range": header[:100] if wanted is not None and header else None,
                          "status": status})
    response = web.StreamResponse(status=status, headers={
        "Content-Type": "audio/ogg",
        "Accept-Ranges": "bytes",
        "Cache-Control": "no-store",
    })
    if wanted is not None:
        response.headers["Content-Range"] = f"bytes {start}-{wanted[1] - 1}/{size}"
        response.content_length = wanted[1] - start
    elif size is not None:
        response.content_length = size
    else:
        response.enable_chunked_encoding()  # still being recorded: the size is not known
    await response.prepare(request)
    piece = first
    try:
        while piece is not None:
            await response.write(piece)
            piece = await _next_piece(pieces)
    except (RecordingFileError, OSError) as exc:
        # Headers are sent: all that is left is to cut the stream short, which the client
        # sees as a truncated body.
        log.error("playback_failed_mid_stream", recording_id=str(recording_id),
                  error=repr(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


# ------------------------------------------------------------------------------ erasure


def held_response(matters: list[str]) -> web.Response:
    """409 naming the matters of the legal holds that keep a recording."""
    return web.json_response({"error": {
        "code": "legal_hold",
        "message": f"the recording is under legal hold ({'; '.join(matters)}): it cannot be "
                   "erased until the hold is released",
        "matters": matters,
    }}, status=409)


@require(Permission.DELETE, action="recording.erase")
async def erase(request: web.Request) -> web.StreamResponse:
    principal = principal_of(request)
    recording_id = _recording_id(request)
    body = await read_json_object(request, frozenset({"reason"}), MAX_JSON_BODY)
    reason = body.get("reason")
    if (not isinstance(reason, str) or not reason.strip() or len(reason) > MAX_REASON_LENGTH
            or "\x00" in reason):
        raise ApiInputError(f"reason: a string of 1 to {MAX_REASON_LENGTH} characters is "
                            "required (why the recording is erased, without personal data)")
    db = request.app[DB_KEY]
    if not await search.visible_recording_ids(db, [recording_id], _scope(principal)):
        raise _not_found()
    try:
        erasure = await erase_recording(db, recording_id, actor=str(principal.user_id),
                                        reason=reason, now=datetime.now(UTC),
                                        source=_source(request))
    except NoRecordingToErase:
        raise _not_found() from None
    except RecordingActive:
        raise ApiInputError("the call is still being recorded; erase it once it has ended",
                            status=409, code="recording_active") from None
    except RecordingHeld as exc:
        await _audit(request, principal, "recording.erase", target=str(recording_id),
                     outcome="failure", details={"refused": "legal_hold"})
        return held_response(exc.matters)
    log.info("recording_erased", recording_id=str(recording_id),
             already=erasure.already_erased)
    return web.json_response({"recording": tombstone_view(erasure.tombstone),
                              "already_erased": erasure.already_erased})


# ------------------------------------------------------------------------------ pause/resume


async def _control(request: web.Request, action: str) -> web.StreamResponse:
    principal = principal_of(request)
    ref = request.match_info["ref"]
    if not ref or len(ref) > MAX_VALUE_LENGTH or "\x00" in ref:
        raise ApiInputError("no such call", status=404, code="not_found")
    db = request.app[DB_KEY]
    matches = await search.find_by_reference(db, ref, _scope(principal))
    if not matches:
        raise ApiInputError("no such call", status=404, code="not_found")
    live = [m for m in matches if m["state"] in ("offered", "recording")]
    if not live:
        raise ApiInputError(f"the call has ended ({matches[0]['state']})", status=409,
                            code="call_ended")
    media = request.app.get(MEDIA_KEY)
    results = []
    for match in live:
        control = None if media is None else getattr(media, action)
        changed = None if control is None else control(match["id"], "api")
        if changed is None:
            continue  # no media on this node (not answered yet, or another node's call)
        results.append({"id": str(match["id"]), "changed": changed})
        await _audit(request, principal, f"recording.{action}", target=str(match["id"]),
                     details={"changed": changed, "ref": match["matched"]})
    if not results:
        raise ApiInputError("the call has no media being recorded on this server",
                            status=409, code="no_media")
    paused = action == "pause"
    word = "paused" if paused else "resumed"
    already = "already paused" if paused else "not paused"
    return web.json_response({
        "paused": paused,
        "status": word if any(r["changed"] for r in results) else already,
        "recordings": results,
    })


@require(Permission.PAUSE, action="recording.pause")
async def pause_call(request: web.Request) -> web.StreamResponse:
    return await _control(request, "pause")


@require(Permission.PAUSE, action="recording.resume")
async def resume_call(request: web.Request) -> web.StreamResponse:
    return await _control(request, "resume")


# ------------------------------------------------------------------------------ wiring


def setup_recordings(app: web.Application) -> None:
    """Add the recordings and call-control routes and the OpenAPI document to an app from
    create_api() (after setup_identity). Set MEDIA_KEY and KEYS_KEY on the app for pause/resume,
    playback and verification; /metrics is api.metrics.setup_metrics."""
    router = app.router
    router.add_get("/api/v1/recordings", list_recordings, allow_head=False)
    router.add_get("/api/v1/recordings/{id}", show_recording, allow_head=False)
    router.add_get("/api/v1/recordings/{id}/audio", play_recording, allow_head=False)
    router.add_delete("/api/v1/recordings/{id}", erase)
    router.add_post("/api/v1/calls/{ref}/pause", pause_call)
    router.add_post("/api/v1/calls/{ref}/resume", resume_call)
    from api.waveform_api import setup_waveform  # it uses this module's KEYS_KEY

    setup_waveform(app)
    setup_lifecycle(app)
    setup_rules(app)
    setup_deliveries(app)
    setup_jobs(app)
    setup_openapi(app)
