"""The current recording metadata of one SIPREC session, derived from its event log.

Every metadata document an SRC sends (INVITE, re-INVITE, UPDATE) is an event; the state is a
fold over them (:func:`replay_metadata`), so the database can keep the log and rebuild the state
at any time. :func:`apply_metadata` is the one step of that fold, and follows RFC 7865 6.1.1:

``complete``
    A snapshot that replaces. Participants absent from it are kept but marked
    ``present=False`` with ``left_at`` = the time the snapshot arrived, so the history still
    shows them (Avaya SBCE's placeholder far end, replaced by the real party in an UPDATE).
    Streams are replaced by the snapshot's. A participant without any send/recv statement in a
    snapshot sends and receives nothing.

``partial``
    A delta merged by id. Participant and stream fields that the document states replace the
    old ones; fields it does not mention are kept. A participant's send or recv statement
    replaces that participant's *full* sets (RFC 7865 6.8: omitted ``<send>`` beside a
    ``<recv>`` means it now sends nothing). A disassociate-time marks the participant left.

Stream senders and receivers are derived from the participants' send/recv sets, including those
of participants who have left: a channel's history keeps who was heard on it. Use
:meth:`RecordingMetadata.current_participants` for who is in the call now. A participant who
comes back keeps the first ``joined_at`` and loses ``left_at``.

Pure functions over frozen values: no I/O, no clock (``received_at`` is a parameter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType

from .metadata import (
    MAX_EXTENSIONS,
    Extension,
    MetadataDocument,
    ParticipantInfo,
    StreamInfo,
)

__all__ = [
    "Participant",
    "RecordingMetadata",
    "Stream",
    "apply_metadata",
    "replay_metadata",
]


@dataclass(frozen=True, slots=True)
class Participant:
    """A party of the recorded call, present now or in the past."""

    id: str
    aor: str | None = None
    aor_raw: str | None = None
    name: str | None = None
    joined_at: datetime | None = None
    """associate-time from the metadata, else when the SRS first heard of the participant."""
    left_at: datetime | None = None
    present: bool = True
    name_lang: str | None = None
    send: tuple[str, ...] = ()
    """Stream ids the participant currently sends (its last known set once it has left)."""
    recv: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Stream:
    """A recorded media stream and the participants heard / hearing on it."""

    id: str
    label: str | None = None
    mode: str | None = None
    senders: tuple[str, ...] = ()
    """Participant ids whose send set contains this stream, in joining order."""
    receivers: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class RecordingMetadata:
    """The metadata state of one recording session after some events."""

    session_id: str | None = None
    sip_session_id: str | None = None
    recording_id: str | None = None
    participants: Mapping[str, Participant] = field(default_factory=lambda: MappingProxyType({}))
    streams: Mapping[str, Stream] = field(default_factory=lambda: MappingProxyType({}))
    extensions: tuple[Extension, ...] = ()
    updated_at: datetime | None = None
    """When the last applied document arrived."""

    def stream_by_label(self, label: str) -> Stream | None:
        """The first stream carried on SDP ``a=label`` ``label`` (labels compare as strings)."""
        wanted = label.strip()
        return next((s for s in self.streams.values() if s.label == wanted), None)

    def senders_of_label(self, label: str) -> tuple[Participant, ...]:
        """Who is heard on the stream with this label; empty when unknown or unresolvable."""
        stream = self.stream_by_label(label)
        if stream is None:
            return ()
        return tuple(self.participants[p] for p in stream.senders if p in self.participants)

    def current_participants(self) -> tuple[Participant, ...]:
        return tuple(p for p in self.participants.values() if p.present)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _aware_or_none(moment: datetime | None) -> datetime | None:
    return _aware(moment) if moment is not None else None


def _merge_fields(old: Participant, info: ParticipantInfo) -> Participant:
    return replace(
        old,
        aor=info.aor if info.aor is not None else old.aor,
        aor_raw=info.aor_raw if info.aor_raw is not None else old.aor_raw,
        name=info.name if info.name is not None else old.name,
        name_lang=info.name_lang if info.name is not None else old.name_lang,
    )


def _arrive(
    old: Participant | None, info: ParticipantInfo, received_at: datetime, complete: bool
) -> Participant:
    """The participant after a document that mentions it."""
    base = old if old is not None else Participant(id=info.id, present=False)
    merged = _merge_fields(base, info)
    if info.send is not None or info.recv is not None:
        send, recv = info.send or (), info.recv or ()
    elif complete:
        send, recv = (), ()
    else:
        send, recv = merged.send, merged.recv
    if info.disassociated or info.disassociate_time is not None:
        present = False
        left_at = _aware_or_none(info.disassociate_time) or (
            base.left_at if not base.present and old is not None else received_at
        )
    elif complete or old is None or info.associate_time is not None:
        present, left_at = True, None
    else:
        # A partial mention without association times keeps the presence as it was.
        present, left_at = merged.present, merged.left_at
    # The earliest association known wins: a rejoin keeps the first joined_at, and a later
    # snapshot stating an earlier associate-time corrects a received_at guess.
    joined_at = base.joined_at if old is not None else None
    if info.associate_time is not None:
        stated = _aware(info.associate_time)
        if joined_at is None or stated < joined_at:
            joined_at = stated
    if joined_at is None:
        joined_at = received_at
    return replace(
        merged,
        send=send,
        recv=recv,
        present=present,
        left_at=left_at,
        joined_at=joined_at,
    )


def _depart(old: Participant, received_at: datetime) -> Participant:
    if not old.present:
        return old
    return replace(old, present=False, left_at=received_at)


def _merge_stream(old: Stream | None, info: StreamInfo) -> Stream:
    if old is None:
        return Stream(id=info.id, label=info.label, mode=info.mode)
    return replace(
        old,
        label=info.label if info.label is not None else old.label,
        mode=info.mode if info.mode is not None else old.mode,
    )


def _with_derived_streams(
    participants: Mapping[str, Participant], streams: dict[str, Stream]
) -> dict[str, Stream]:
    derived: dict[str, Stream] = {}
    for stream_id, stream in streams.items():
        derived[stream_id] = replace(
            stream,
            senders=tuple(p.id for p in participants.values() if stream_id in p.send),
            receivers=tuple(p.id for p in participants.values() if stream_id in p.recv),
        )
    return derived


def _extension_key(extension: Extension) -> tuple[str, str | None, str, str]:
    return (extension.parent_kind, extension.parent_id, extension.namespace, extension.element)


def _merge_extensions(
    old: tuple[Extension, ...], new: tuple[Extension, ...], complete: bool
) -> tuple[Extension, ...]:
    if complete:
        return new
    merged = {_extension_key(e): e for e in old}
    for extension in new:
        merged[_extension_key(extension)] = extension
    return tuple(merged.values())[-MAX_EXTENSIONS:]


def apply_metadata(
    state: RecordingMetadata | None, doc: MetadataDocument, received_at: datetime
) -> RecordingMetadata:
    """The state after ``doc`` arrived at ``received_at`` (naive times are taken as UTC)."""
    received_at = _aware(received_at)
    previous = state if state is not None else RecordingMetadata()
    complete = not doc.is_partial
    old_participants = previous.participants

    mentioned = {info.id: info for info in doc.participants}
    participants: dict[str, Participant] = {}
    for participant_id, old in old_participants.items():
        info = mentioned.get(participant_id)
        if info is not None:
            participants[participant_id] = _arrive(old, info, received_at, complete)
        elif complete:
            participants[participant_id] = _depart(old, received_at)
        else:
            participants[participant_id] = old
    for info in mentioned.values():
        if info.id not in participants:
            participants[info.id] = _arrive(None, info, received_at, complete)

    streams: dict[str, Stream] = {} if complete else dict(previous.streams)
    for stream_info in doc.streams:
        streams[stream_info.id] = _merge_stream(previous.streams.get(stream_info.id), stream_info)

    first_session = doc.sessions[0] if doc.sessions else None
    return RecordingMetadata(
        session_id=doc.session_id or previous.session_id,
        sip_session_id=(first_session.sip_session_id if first_session else None)
        or previous.sip_session_id,
        recording_id=doc.recording_id or previous.recording_id,
        participants=MappingProxyType(participants),
        streams=MappingProxyType(_with_derived_streams(participants, streams)),
        extensions=_merge_extensions(previous.extensions, doc.extensions, complete),
        updated_at=received_at,
    )


def replay_metadata(
    events: Iterable[tuple[datetime, MetadataDocument]],
) -> RecordingMetadata | None:
    """Fold an event log (arrival time, document) into the state; None for an empty log."""
    state: RecordingMetadata | None = None
    for received_at, doc in events:
        state = apply_metadata(state, doc, received_at)
    return state
