"""Finding recordings: a search as a value, its SQL, the opaque page cursor, and the rows it
finds (their JSON shape is the API's business: api/views.py).

Every filter value is a bound parameter. The caller's scope (which recordings a user may see at
all) is an SQL expression over one `participants` row, supplied by the caller and ANDed into the
same statement, so nothing outside it is ever read into Python: no rows, no counts, no cursor.

Pages are keyset pages in (started_at DESC, id ASC) order — the order of the
`recordings_started_at` index — so page 10,000 costs what page 1 costs. The cursor is the
(started_at, id) of the last row shown, opaque to clients.

Participants carry a copy of their recording's started_at (migration 0005, kept by triggers).
A scoped search that otherwise only narrows by time, and a search for one number or AOR, pick
their page among the matching participants in that order and read only the page's recordings;
other searches join the scope as a semi-join that the planner may start from either side.

Values arrive already normalised (numbers by `normalize_number`, AORs lower-cased): the API
layer knows SIP spellings, storage does not.
"""

from __future__ import annotations

import base64
import binascii
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeAlias
from uuid import UUID

import asyncpg

from storage.sql import Statement, like_escape

__all__ = [
    "MAX_LIMIT",
    "Cursor",
    "RecordingQuery",
    "ScopeSql",
    "SearchError",
    "FoundRecording",
    "SearchPage",
    "find_by_reference",
    "find_recording",
    "like_substring",
    "recording_state",
    "search_recordings",
    "search_sql",
    "sees_restricted",
    "visible_recording_ids",
]

MAX_LIMIT = 500
DEFAULT_LIMIT = 50
STATES = ("offered", "recording", "complete", "interrupted", "failed", "erased")

ScopeSql = Callable[[str, int], tuple[str, list[object]]]
"""(participants alias, first parameter number) -> (SQL boolean over that row, its parameters);
"TRUE" means unrestricted and "FALSE" nothing (siprec_server.access.scope_filter). A scope
that has a true `sees_restricted` attribute (siprec_server.access.RecordingScope) also sees
restricted recordings; any other scope does not (None — the server's own reads — sees all)."""


def sees_restricted(scope: ScopeSql | None) -> bool:
    """Whether restricted recordings are within `scope` (fails closed: a scope must say so)."""
    return scope is None or getattr(scope, "sees_restricted", False) is True

Executor: TypeAlias = asyncpg.Pool | asyncpg.Connection


class SearchError(ValueError):
    """A search that cannot be run: a bad cursor, limit, state or time range."""


# ------------------------------------------------------------------------------------- cursor

_CURSOR_VERSION = 1
_CURSOR = struct.Struct(">Bq16s")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where the next page starts: after the row (started_at, recording_id)."""

    started_at: datetime
    recording_id: UUID

    def encode(self) -> str:
        micros = (self.started_at - _EPOCH) // timedelta(microseconds=1)
        raw = _CURSOR.pack(_CURSOR_VERSION, micros, self.recording_id.bytes)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        if not text or len(text) > 64:
            raise SearchError("invalid cursor")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, micros, rid = _CURSOR.unpack(raw)
            started_at = _EPOCH + timedelta(microseconds=micros)
        except (binascii.Error, struct.error, ValueError, OverflowError):
            raise SearchError("invalid cursor") from None
        if version != _CURSOR_VERSION:
            raise SearchError("invalid cursor")
        return cls(started_at, UUID(bytes=rid))


# ------------------------------------------------------------------------------------- query


@dataclass(frozen=True, slots=True)
class RecordingQuery:
    """A search. Every given filter must hold (AND); each participant filter may be met by a
    different party of the call, so numbers=(a, b) finds the calls between a and b."""

    numbers: tuple[str, ...] = ()
    """Normalised numbers (normalize_number); compared with participants.number."""
    aors: tuple[str, ...] = ()
    """Lower-cased normalised AORs; compared with lower(participants.aor)."""
    names: tuple[str, ...] = ()
    """Case-insensitive substrings of a participant's name."""
    tags: tuple[str, ...] = ()
    """Annotation tags (case-insensitive); every one must be on the recording."""
    call_id: str | None = None
    session_id: str | None = None
    states: tuple[str, ...] = ()
    started_from: datetime | None = None
    """Inclusive lower bound of started_at."""
    started_to: datetime | None = None
    """Exclusive upper bound of started_at."""
    limit: int = DEFAULT_LIMIT
    after: Cursor | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_LIMIT:
            raise SearchError(f"limit must be between 1 and {MAX_LIMIT}")
        for state in self.states:
            if state not in STATES:
                raise SearchError(f"unknown state {state[:40]!r} (known: {', '.join(STATES)})")
        for bound in (self.started_from, self.started_to):
            if bound is not None and bound.tzinfo is None:
                raise SearchError("times need a time zone (RFC 3339, e.g. 2024-05-01T00:00:00Z)")
        if (self.started_from and self.started_to and self.started_from >= self.started_to):
            raise SearchError("from must be before to")
        for name in self.names:
            if not name.strip():
                raise SearchError("a name filter must not be empty")

    @property
    def filter_kinds(self) -> list[str]:
        """Which kinds of filter the search used, for the audit trail (never the values: a
        number or a name is personal data)."""
        kinds = [
            ("number", bool(self.numbers)),
            ("aor", bool(self.aors)),
            ("name", bool(self.names)),
            ("tag", bool(self.tags)),
            ("call_id", self.call_id is not None),
            ("session_id", self.session_id is not None),
            ("state", bool(self.states)),
            ("from", self.started_from is not None),
            ("to", self.started_to is not None),
            ("cursor", self.after is not None),
        ]
        return [kind for kind, used in kinds if used]


def like_substring(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, its own % _ \\ taken literally."""
    return f"%{like_escape(text.lower())}%"


_RECORDING_COLUMNS = """r.id, r.call_id, r.session_id, r.sip_session_id, r.state, r.started_at,
    r.answered_at, r.ended_at, r.end_reason, r.duration_ms, r.channels, r.pauses, r.dtmf_events,
    r.erased_at, r.erased_by, r.erasure_reason, r.no_media, r.restricted, r.recording_mode,
    r.opted_out_at"""


def _scope_predicate(scope: ScopeSql | None, statement: Statement, alias: str) -> str | None:
    """The scope as a condition on one participants row `alias`; None when it restricts
    nothing, "FALSE" when it admits nothing."""
    if scope is None:
        return None
    text, params = scope(alias, len(statement.params) + 1)
    normalised = text.strip().upper()
    if normalised == "TRUE":
        return None
    if normalised == "FALSE":
        return "FALSE"
    statement.params.extend(params)
    return text


def _scope_condition(scope: ScopeSql | None, statement: Statement, alias: str) -> str | None:
    """The scope as a condition on recordings r; None when it restricts nothing."""
    predicate = _scope_predicate(scope, statement, alias)
    if predicate is None or predicate == "FALSE":
        return predicate
    # IN (semi-join) rather than a correlated EXISTS: the planner may then start from the
    # participants index when the scope is narrow, or from recordings when it is wide.
    return f"r.id IN (SELECT {alias}.recording_id FROM participants {alias} WHERE {predicate})"


def _within_scope(condition: str, scope: ScopeSql | None, statement: Statement) -> str:
    """`condition` on recordings r (its parameters already bound) ANDed with the scope's."""
    scoped = _scope_condition(scope, statement, "sp")
    if not sees_restricted(scope):
        condition = f"{condition} AND NOT r.restricted"
    return condition if scoped is None else f"{condition} AND {scoped}"


@dataclass(frozen=True, slots=True)
class _Window:
    """The time filters and the cursor of a query as parameters, to be applied to any
    started_at column: recordings' own, or the copy participants keep of it (0005)."""

    started_from: str | None
    started_to: str | None
    after_at: str | None
    after_id: str | None

    @classmethod
    def of(cls, query: RecordingQuery, st: Statement) -> _Window:
        return cls(
            None if query.started_from is None else st.param(query.started_from),
            None if query.started_to is None else st.param(query.started_to),
            None if query.after is None else st.param(query.after.started_at),
            None if query.after is None else st.param(query.after.recording_id),
        )

    def conditions(self, started_at: str, recording_id: str | None) -> list[str]:
        """Conditions on (started_at, recording_id) columns; with recording_id None, only the
        cursor's time bound (a looser condition that still lets an index range start there)."""
        where: list[str] = []
        if self.started_from is not None:
            where.append(f"{started_at} >= {self.started_from}")
        if self.started_to is not None:
            where.append(f"{started_at} < {self.started_to}")
        if self.after_at is not None:
            # (started_at DESC, id ASC): later pages have earlier times, or the same time and a
            # greater id. The first term is what an index range scan uses.
            where.append(f"{started_at} <= {self.after_at}")
            if recording_id is not None:
                where.append(f"({started_at} < {self.after_at} OR {recording_id} > {self.after_id})")
        return where


def _page_in_participants(
    query: RecordingQuery, scope: str | None, st: Statement
) -> str | None:
    """The condition on one participants row that alone decides the page, when there is one.

    A search that only narrows by time (or pages on) within a scope, or that looks for one
    number or AOR, finds its page among the matching participants: their copy of started_at
    orders them, so the newest limit + 1 distinct recordings can be picked there, and only
    those rows of recordings are read. Joining every match to recordings first and sorting
    afterwards costs a row lookup per match (thousands for an agent's own calls)."""
    if (query.names or query.tags or query.call_id is not None or query.session_id is not None
            or query.states):
        return None
    if scope is not None:
        if scope == "FALSE" or query.numbers or query.aors:
            return None
        return scope
    if len(query.numbers) + len(query.aors) != 1:
        return None
    if query.numbers:
        return f"sp.number = {st.param(query.numbers[0])}"
    return f"lower(sp.aor) = {st.param(query.aors[0].lower())}"


def search_sql(query: RecordingQuery, scope: ScopeSql | None) -> tuple[str, list[object]]:
    """The statement of one page of `query` (limit + 1 rows: the extra one says whether there
    is a next page) within `scope`."""
    st = Statement()
    window = _Window.of(query, st)
    predicate = _scope_predicate(scope, st, "sp")
    rows = st.param(query.limit + 1)
    order = "ORDER BY r.started_at DESC, r.id ASC"

    driver = _page_in_participants(query, predicate, st)
    hide_restricted = not sees_restricted(scope)
    if driver is not None:
        # DISTINCT: two parties of one call may both match. participants.started_at equals
        # recordings.started_at (kept so by triggers), so this order is the page's order.
        terms = [driver, *window.conditions("sp.started_at", "sp.recording_id")]
        if hide_restricted:
            # Probes the small partial index recordings_restricted (0011) per candidate.
            terms.append("NOT EXISTS (SELECT 1 FROM recordings rr WHERE rr.id = sp.recording_id"
                         " AND rr.restricted)")
        inner = " AND ".join(terms)
        sql = (
            f"SELECT {_RECORDING_COLUMNS} FROM recordings r WHERE r.id IN ("
            "SELECT page.recording_id FROM ("
            "SELECT DISTINCT sp.started_at, sp.recording_id FROM participants sp "
            f"WHERE {inner} ORDER BY sp.started_at DESC, sp.recording_id LIMIT {rows}) page)"
            f" {order} LIMIT {rows}"
        )
        return sql, st.params

    where: list[str] = []
    for number in query.numbers:
        where.append(
            f"r.id IN (SELECT p.recording_id FROM participants p WHERE p.number = {st.param(number)})"
        )
    for aor in query.aors:
        where.append(
            "r.id IN (SELECT p.recording_id FROM participants p "
            f"WHERE lower(p.aor) = {st.param(aor.lower())})"
        )
    for name in query.names:
        where.append(
            "r.id IN (SELECT p.recording_id FROM participants p "
            f"WHERE lower(p.name) LIKE {st.param(like_substring(name))})"
        )
    for tag in query.tags:
        where.append(
            "r.id IN (SELECT a.recording_id FROM annotations a "
            f"WHERE a.kind = 'tag' AND lower(a.value) = {st.param(tag.lower())})"
        )
    if query.call_id is not None:
        where.append(f"r.call_id = {st.param(query.call_id)}")
    if query.session_id is not None:
        where.append(f"r.session_id = {st.param(query.session_id)}")
    if query.states:
        where.append(f"r.state = ANY({st.param(list(query.states))}::text[])")
    where.extend(window.conditions("r.started_at", "r.id"))
    if hide_restricted:
        where.append("NOT r.restricted")
    if predicate == "FALSE":
        where.append("FALSE")
    elif predicate is not None:
        # The window on the participants' copy of started_at lets a narrow scope's index
        # range stop at the query's time bounds.
        inner = " AND ".join([predicate, *window.conditions("sp.started_at", None)])
        where.append(f"r.id IN (SELECT sp.recording_id FROM participants sp WHERE {inner})")
    sql = (
        f"SELECT {_RECORDING_COLUMNS} FROM recordings r"
        + (" WHERE " + " AND ".join(where) if where else "")
        + f" {order} LIMIT {rows}"
    )
    return sql, st.params


# ------------------------------------------------------------------------------------- reads


@dataclass(frozen=True, slots=True)
class FoundRecording:
    """One recording as a search reads it: its row (_RECORDING_COLUMNS; find_recording adds the
    file, hash and signature columns and a metadata_events count), its participants by
    participant_id and its streams by m_index."""

    row: Mapping[str, Any]
    participants: Sequence[Mapping[str, Any]]
    streams: Sequence[Mapping[str, Any]]

    @property
    def id(self) -> UUID:
        recording_id: UUID = self.row["id"]
        return recording_id


@dataclass(frozen=True, slots=True)
class SearchPage:
    items: list[FoundRecording]
    next_cursor: str | None


async def _children(
    db: Executor, ids: list[UUID]
) -> tuple[dict[UUID, list[Any]], dict[UUID, list[Any]]]:
    participants: dict[UUID, list[Any]] = {i: [] for i in ids}
    streams: dict[UUID, list[Any]] = {i: [] for i in ids}
    if not ids:
        return participants, streams
    for row in await db.fetch(
        """SELECT recording_id, participant_id, aor, name, number, present, joined_at, left_at
           FROM participants WHERE recording_id = ANY($1::uuid[])
           ORDER BY recording_id, participant_id""",
        ids,
    ):
        participants[row["recording_id"]].append(row)
    for row in await db.fetch(
        """SELECT recording_id, m_index, label, kind, accepted, channel, codec, srtp_suite, stats
           FROM streams WHERE recording_id = ANY($1::uuid[]) ORDER BY recording_id, m_index""",
        ids,
    ):
        streams[row["recording_id"]].append(row)
    return participants, streams


async def search_recordings(
    db: Executor, query: RecordingQuery, scope: ScopeSql | None
) -> SearchPage:
    """One page of the recordings matching `query` within `scope`, newest first."""
    sql, params = search_sql(query, scope)
    rows = await db.fetch(sql, *params)
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    participants, streams = await _children(db, [r["id"] for r in rows])
    items = [FoundRecording(r, participants[r["id"]], streams[r["id"]]) for r in rows]
    next_cursor = Cursor(rows[-1]["started_at"], rows[-1]["id"]).encode() if more else None
    return SearchPage(items, next_cursor)


async def visible_recording_ids(
    db: Executor, recording_ids: Sequence[UUID], scope: ScopeSql | None
) -> set[UUID]:
    """Which of these recordings exist within `scope`."""
    st = Statement()
    ids = st.param(list(recording_ids))
    where = _within_scope(f"r.id = ANY({ids}::uuid[])", scope, st)
    rows = await db.fetch(f"SELECT r.id FROM recordings r WHERE {where}", *st.params)
    return {row["id"] for row in rows}


async def find_recording(
    db: Executor, recording_id: UUID, scope: ScopeSql | None
) -> FoundRecording | None:
    """One recording with everything its detail shows, or None when it does not exist or is out
    of scope (the two must look the same to the caller)."""
    st = Statement()
    where = _within_scope(f"r.id = {st.param(recording_id)}", scope, st)
    row = await db.fetchrow(
        f"""SELECT {_RECORDING_COLUMNS}, r.transport, r.node_id, r.sample_rate, r.recovered,
                   r.file_path, r.plaintext_bytes, r.ciphertext_bytes, r.plaintext_sha256,
                   r.ciphertext_sha256, r.summary, r.signature, r.signing_key_id,
                   (SELECT count(*) FROM metadata_events m WHERE m.recording_id = r.id)
                       AS metadata_events
            FROM recordings r WHERE {where}""",
        *st.params,
    )
    if row is None:
        return None
    participants, streams = await _children(db, [recording_id])
    return FoundRecording(row, participants[recording_id], streams[recording_id])


async def recording_state(
    db: Executor, recording_id: UUID, scope: ScopeSql | None
) -> dict[str, Any] | None:
    """State, erasure stamp and audio facts of one recording within `scope` (None when absent
    or out of scope)."""
    st = Statement()
    where = _within_scope(f"r.id = {st.param(recording_id)}", scope, st)
    row = await db.fetchrow(
        f"""SELECT r.id, r.state, r.erased_at, r.file_path IS NOT NULL AS has_audio,
                   r.plaintext_bytes
            FROM recordings r WHERE {where}""",
        *st.params,
    )
    return None if row is None else dict(row)


async def find_by_reference(
    db: Executor, ref: str, scope: ScopeSql | None, *, limit: int = 20
) -> list[dict[str, Any]]:
    """Recordings a caller's reference names — a SIP Call-ID, a SIPREC session id or a
    recording id — within `scope`, newest first, each with how the reference matched."""
    st = Statement()
    text = st.param(ref)
    terms = [f"r.call_id = {text}", f"r.session_id = {text}"]
    try:
        as_id: UUID | None = UUID(ref)
    except ValueError:
        as_id = None
    if as_id is not None:
        terms.append(f"r.id = {st.param(as_id)}")
    where = _within_scope("(" + " OR ".join(terms) + ")", scope, st)
    rows = await db.fetch(
        f"""SELECT r.id, r.state, r.call_id = {text} AS by_call_id,
                   r.session_id IS NOT DISTINCT FROM {text} AS by_session_id
            FROM recordings r WHERE {where}
            ORDER BY r.started_at DESC LIMIT {st.param(limit)}""",
        *st.params,
    )
    return [
        {"id": row["id"], "state": row["state"],
         "matched": "call_id" if row["by_call_id"] else
                    "session_id" if row["by_session_id"] else "recording_id"}
        for row in rows
    ]
