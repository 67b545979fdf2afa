"""Recording metadata XML (RFC 7865 and the dialects SRCs really send) -> MetadataDocument.

One parse of one ``rs-metadata`` body. The result says what *this document* states, nothing
more: a field that the document does not mention is ``None`` (for send/recv sets too), which is
what lets :mod:`siprec_server.siprec.metadata_state` merge a ``partial`` update correctly.

Safety comes first, because the body comes from the network: the document is parsed with
``xml.parsers.expat`` directly, and any DOCTYPE, entity or notation declaration is refused on
sight (no DTD is ever read, so no entity is ever expanded or fetched). Size, nesting depth and
element count are bounded. Every failure is a :class:`MetadataError`.

Tolerance comes second, and is wide (SIPREC.md, "Dialects met in the field"):

- namespaces ``urn:ietf:params:xml:ns:recording:1``, ``...:recording`` (pre-RFC drafts),
  ``urn:ietf:params:xml:ns:siprec`` (BroadWorks/Webex ``recording_metadata`` root), none at
  all, any prefix, even an undeclared one; SIPREC elements are matched by local name,
  case-insensitively (``datamode``/``dataMode``, ``nameID``/``nameid``);
- ids as ``participant_id``/``stream_id``/``session_id``/``group_id`` or plain ``id``;
  references as ``session_id`` or ``session``;
- ``<send>``/``<recv>`` holding the stream id as text or in ``<id>`` children, inside
  ``<participant>`` (drafts, Oracle, BroadWorks) or ``<participantstreamassoc>`` (RFC), both
  merged (union) per participant;
- ``<aor>`` as a child element or ``nameID@aor``; AORs normalised by :func:`normalize_aor`
  with the raw text kept;
- lenient timestamps (:func:`parse_timestamp`), which never fail the document.

Elements the model does not know become :class:`Extension` values (bounded in number and size),
whatever their namespace: vendors put extension data in foreign namespaces (RFC 7865 6.11), in
the SIPREC namespace itself (Metaswitch) or under an ``<extensiondata>`` wrapper (Oracle,
BroadWorks, Metaswitch), whose children are the extensions.

A ``<stream>`` or ``<participant>`` with no usable id (Avaya SBCE sends ``stream_id=""`` for a
stream that has no media yet) cannot be referred to by anything, so it is left out of the
document; a note (no personal data) goes into :attr:`MetadataDocument.warnings` so the caller
can log and count it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any, TypeVar
from xml.parsers import expat

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_ELEMENTS",
    "MAX_EXTENSIONS",
    "SIPREC_NAMESPACES",
    "Extension",
    "MetadataDocument",
    "MetadataError",
    "ParticipantInfo",
    "SessionInfo",
    "StreamInfo",
    "normalize_aor",
    "parse_metadata",
    "parse_timestamp",
]

SIPREC_NAMESPACES = frozenset(
    {
        "urn:ietf:params:xml:ns:recording:1",  # RFC 7865
        "urn:ietf:params:xml:ns:recording",  # draft-ietf-siprec-metadata (Oracle, Metaswitch)
        "urn:ietf:params:xml:ns:siprec",  # BroadWorks / Webex Calling
    }
)
_XML_NAMESPACE = "http://www.w3.org/XML/1998/namespace"
_ROOT_NAMES = frozenset({"recording", "recording_metadata"})

MAX_DOCUMENT_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_ELEMENTS = 10_000
MAX_EXTENSIONS = 64
MAX_EXTENSION_VALUES = 32
MAX_VALUE_CHARS = 512
MAX_WARNINGS = 32

COMPLETE = "complete"
PARTIAL = "partial"


class MetadataError(ValueError):
    """A body that is not acceptable recording metadata (malformed, hostile or too big)."""


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A recorded communication session (RFC 7865 6.2) as stated by one document."""

    id: str
    sip_session_id: str | None = None
    """The first ``<sipSessionID>``, whitespace collapsed (``"a;remote=b"``)."""
    group_ref: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    associate_time: datetime | None = None
    """From ``<sessionrecordingassoc>`` or the session element itself."""
    disassociate_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class ParticipantInfo:
    """A participant as stated by one document; ``None`` means "not mentioned here"."""

    id: str
    aor: str | None = None
    """Normalised AOR (:func:`normalize_aor`)."""
    aor_raw: str | None = None
    """The AOR exactly as sent (stripped)."""
    name: str | None = None
    name_lang: str | None = None
    session: str | None = None
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    disassociated: bool = False
    """A disassociate-time was present, even if its timestamp could not be read."""
    send: tuple[str, ...] | None = None
    """Stream ids this participant sends; None when no send/recv was stated for it."""
    recv: tuple[str, ...] | None = None
    """Stream ids this participant receives; None when no send/recv was stated for it."""


@dataclass(frozen=True, slots=True)
class StreamInfo:
    """A media stream (RFC 7865 6.5) as stated by one document."""

    id: str
    label: str | None = None
    """The SDP ``a=label`` (RFC 4574) this stream is carried on; a string, never a number."""
    mode: str | None = None
    """``separate`` / ``mixed`` when the sender says so (draft and BroadWorks dialects)."""
    session: str | None = None
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class Extension:
    """Vendor data the model does not interpret, flattened to bounded strings."""

    parent_kind: str
    """Local name of the element it hangs off: recording, group, session, participant, ..."""
    parent_id: str | None
    namespace: str
    """The element's namespace; "" when it has none."""
    element: str
    """Local name (prefix dropped)."""
    values: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Leaf texts by path relative to the element ("callType/origCall/callingPartyNumber");
    attributes as "@name" (or "path@name"); a leaf extension maps its own name to its text."""


@dataclass(frozen=True, slots=True)
class MetadataDocument:
    """Everything one metadata document states."""

    datamode: str = COMPLETE
    """``complete`` (a snapshot) or ``partial`` (a delta), RFC 7865 6.1.1."""
    recording_id: str | None = None
    namespace: str = ""
    sessions: tuple[SessionInfo, ...] = ()
    group_ids: tuple[str, ...] = ()
    participants: tuple[ParticipantInfo, ...] = ()
    streams: tuple[StreamInfo, ...] = ()
    extensions: tuple[Extension, ...] = ()
    warnings: tuple[str, ...] = ()
    """Things dropped or distrusted while reading, worded without personal data."""

    @property
    def session_id(self) -> str | None:
        """The first session's id, or None for a document without a session (partial)."""
        return self.sessions[0].id if self.sessions else None

    @property
    def is_partial(self) -> bool:
        return self.datamode == PARTIAL

    def participant(self, participant_id: str) -> ParticipantInfo | None:
        return next((p for p in self.participants if p.id == participant_id), None)

    def stream(self, stream_id: str) -> StreamInfo | None:
        return next((s for s in self.streams if s.id == stream_id), None)


# --- lenient scalar readers -------------------------------------------------------------------

_TIMESTAMP = re.compile(
    r"""^(\d{4})-(\d{1,2})-(\d{1,2})
        (?:[Tt\ ]+(\d{1,2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?
        \s*(Z|z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$""",
    re.VERBOSE,
)


def parse_timestamp(text: str | None) -> datetime | None:
    """An aware datetime from an xs:dateTime-ish string, or None when it cannot be read.

    Accepts no zone (taken as UTC), ``Z``, ``+00:00``, ``+0300``, fractional seconds, a space
    instead of ``T``, a bare date, and any year (1970 is kept: some SRCs have no clock).
    """
    if text is None:
        return None
    match = _TIMESTAMP.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    sec = min(int(second or 0), 59)  # a leap second is read as :59
    tz: timezone = UTC
    if zone and zone[0] in "+-":
        digits = zone[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        if offset >= timedelta(hours=24):
            return None
        tz = timezone(-offset if zone[0] == "-" else offset)
    try:
        return datetime(
            int(year), int(month), int(day), int(hour or 0), int(minute or 0), sec, micro, tz
        )
    except (ValueError, OverflowError):
        return None


_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_PHONE = re.compile(r"^\+?[\d\s().\-/]*\d[\d\s().\-/]*$")


def normalize_aor(raw: str) -> str:
    """A comparable AOR: ``sip:``/``sips:``/``tel:`` kept (scheme lower-cased); no scheme with
    ``@`` -> ``sip:`` + raw; bare digits (optional ``+``, visual separators) -> ``tel:`` +
    digits; anything else returned stripped."""
    aor = raw.strip()
    if aor.startswith("<") and aor.endswith(">"):
        aor = aor[1:-1].strip()
    scheme = _SCHEME.match(aor)
    if scheme is not None:
        name = scheme.group(1).lower()
        if name in ("sip", "sips", "tel"):
            return name + aor[len(name) :]
        return aor
    if "@" in aor:
        return "sip:" + aor
    if _PHONE.match(aor):
        digits = re.sub(r"\D", "", aor)
        return "tel:" + ("+" if aor.startswith("+") else "") + digits
    return aor


def _collapse_session_id(text: str) -> str:
    text = re.sub(r"\s*;\s*", ";", text.strip())
    return re.sub(r"\s+", " ", text)


# --- safe XML -> small tree ---------------------------------------------------------------------


@dataclass(slots=True)
class _Node:
    namespace: str | None
    name: str
    attrs: dict[str, str]
    children: list[_Node] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    @property
    def key(self) -> str:
        return self.name.lower()

    @property
    def text(self) -> str:
        return "".join(self.texts).strip()

    def attr(self, *names: str) -> str | None:
        """The first of ``names`` (case-insensitive) with a non-blank value, stripped."""
        lowered = {k.lower(): v for k, v in self.attrs.items()}
        for name in names:
            value = lowered.get(name)
            if value is not None and value.strip():
                return value.strip()
        return None


class _Refused(Exception):
    """Raised inside expat callbacks to stop parsing at once."""


def _split_qname(qname: str) -> tuple[str | None, str]:
    prefix, sep, local = qname.rpartition(":")
    return (prefix if sep else None), local


def _build_tree(data: bytes, unbound: list[str]) -> _Node:
    # Namespace processing is done here rather than by expat so that an undeclared prefix
    # (seen from SRCs that paste fragments together) degrades to "no namespace" instead of
    # failing the whole document.
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    stack: list[tuple[_Node, dict[str, str]]] = []
    roots: list[_Node] = []
    count = 0

    def refuse(*_args: object) -> None:
        raise _Refused("DTDs, entities and notations are not accepted")

    def start(qname: str, attrs: dict[str, str]) -> None:
        nonlocal count
        count += 1
        if count > MAX_ELEMENTS:
            raise _Refused(f"more than {MAX_ELEMENTS} elements")
        if len(stack) >= MAX_DEPTH:
            raise _Refused(f"nesting deeper than {MAX_DEPTH}")
        scope = stack[-1][1] if stack else {"xml": _XML_NAMESPACE}
        declared = {k: v for k, v in attrs.items() if k == "xmlns" or k.startswith("xmlns:")}
        if declared:
            scope = dict(scope)
            for key, uri in declared.items():
                scope[key[6:] if key != "xmlns" else ""] = uri.strip()
        prefix, local = _split_qname(qname)
        if prefix is None:
            namespace = scope.get("") or None
        else:
            namespace = scope.get(prefix)
            if namespace is None and len(unbound) < 4:
                unbound.append(prefix)
        plain: dict[str, str] = {}
        for key, value in attrs.items():
            if key in declared:
                continue
            attr_prefix, attr_local = _split_qname(key)
            if attr_prefix is None or attr_local not in plain:
                plain[attr_local] = value
        node = _Node(namespace or None, local, plain)
        if stack:
            stack[-1][0].children.append(node)
        else:
            roots.append(node)
        stack.append((node, scope))

    def end(_qname: str) -> None:
        stack.pop()

    def chars(text: str) -> None:
        if stack:
            stack[-1][0].texts.append(text)

    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.NotationDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse  # type: ignore[assignment]
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        parser.Parse(data, True)
    except _Refused as exc:
        raise MetadataError(str(exc)) from None
    except expat.ExpatError as exc:
        raise MetadataError(f"malformed XML: {expat.ErrorString(exc.code)}") from None
    except Exception as exc:  # e.g. LookupError for an unknown declared encoding
        raise MetadataError(f"unreadable XML: {type(exc).__name__}") from None
    if not roots:
        raise MetadataError("no root element")
    return roots[0]


# --- tree -> document ---------------------------------------------------------------------------


_Info = TypeVar("_Info", SessionInfo, ParticipantInfo, StreamInfo)


def _freeze(
    draft: _ParticipantDraft | _SessionDraft | _StreamDraft, info: type[_Info], **derived: Any
) -> _Info:
    """The immutable `info` of a draft: every field of the draft under its own name, lists as
    tuples, plus the `derived` fields the draft does not hold. A draft field `info` lacks is a
    TypeError, so the two cannot drift apart unnoticed."""
    values: dict[str, Any] = {}
    for spec in fields(draft):
        value = getattr(draft, spec.name)
        values[spec.name] = tuple(value) if isinstance(value, list) else value
    return info(**values, **derived)


@dataclass(slots=True)
class _ParticipantDraft:
    id: str
    aor_raw: str | None = None
    name: str | None = None
    name_lang: str | None = None
    session: str | None = None
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None
    disassociated: bool = False
    send: list[str] | None = None
    recv: list[str] | None = None

    def mention_streams(self) -> tuple[list[str], list[str]]:
        if self.send is None:
            self.send = []
        if self.recv is None:
            self.recv = []
        return self.send, self.recv

    def freeze(self) -> ParticipantInfo:
        aor = (normalize_aor(self.aor_raw) or None) if self.aor_raw else None
        return _freeze(self, ParticipantInfo, aor=aor)


@dataclass(slots=True)
class _SessionDraft:
    id: str
    sip_session_id: str | None = None
    group_ref: str | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None

    def freeze(self) -> SessionInfo:
        return _freeze(self, SessionInfo)


@dataclass(slots=True)
class _StreamDraft:
    id: str
    label: str | None = None
    mode: str | None = None
    session: str | None = None
    associate_time: datetime | None = None
    disassociate_time: datetime | None = None

    def freeze(self) -> StreamInfo:
        return _freeze(self, StreamInfo)


@dataclass(slots=True)
class _PendingExtension:
    node: _Node
    parent_kind: str | None  # None: resolve parent_id against the ids read
    parent_id: str | None


class _Reader:
    """Walks the tree once, collecting drafts keyed by id in document order."""

    def __init__(self, siprec_namespaces: frozenset[str]) -> None:
        self.namespaces = siprec_namespaces
        self.recording_id: str | None = None
        self.datamode: str | None = None
        self.groups: dict[str, None] = {}
        self.sessions: dict[str, _SessionDraft] = {}
        self.participants: dict[str, _ParticipantDraft] = {}
        self.streams: dict[str, _StreamDraft] = {}
        self.extensions: list[_PendingExtension] = []
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        if len(self.warnings) < MAX_WARNINGS and message not in self.warnings:
            self.warnings.append(message)

    def is_siprec(self, node: _Node) -> bool:
        return node.namespace is None or node.namespace in self.namespaces

    def siprec_children(self, node: _Node) -> Iterator[_Node]:
        return (child for child in node.children if self.is_siprec(child))

    # Unknown children of any SIPREC element are kept as extensions of that element.
    def extension_or_wrapper(self, node: _Node, parent_kind: str, parent_id: str | None) -> None:
        if self.is_siprec(node) and node.key == "extensiondata":
            explicit_parent = node.attr("parent")
            for child in node.children:
                if explicit_parent is not None:
                    self.extensions.append(_PendingExtension(child, None, explicit_parent))
                else:
                    self.extensions.append(_PendingExtension(child, parent_kind, parent_id))
            return
        self.extensions.append(_PendingExtension(node, parent_kind, parent_id))

    def participant(self, participant_id: str) -> _ParticipantDraft:
        draft = self.participants.get(participant_id)
        if draft is None:
            draft = self.participants[participant_id] = _ParticipantDraft(participant_id)
        return draft

    def session(self, session_id: str) -> _SessionDraft:
        draft = self.sessions.get(session_id)
        if draft is None:
            draft = self.sessions[session_id] = _SessionDraft(session_id)
        return draft

    def read_root(self, root: _Node) -> None:
        self.recording_id = root.attr("id", "recording_id")
        mode_attr = root.attr("datamode")
        if mode_attr is not None:
            self.datamode = mode_attr
        for node in root.children:
            if not self.is_siprec(node):
                self.extension_or_wrapper(node, "recording", None)
                continue
            reader = self._ROOT_ELEMENTS.get(node.key)
            if reader is None:
                self.extension_or_wrapper(node, "recording", None)
            else:
                reader(self, node)

    def read_datamode(self, node: _Node) -> None:
        if self.datamode is None:
            self.datamode = node.text

    def read_recording(self, node: _Node) -> None:
        # BroadWorks: <recording id="..."> inside the <recording_metadata> root.
        if self.recording_id is None:
            self.recording_id = node.attr("id", "recording_id")
        for child in node.children:
            if not (self.is_siprec(child) and child.key in ("requestor", "type")):
                self.extension_or_wrapper(child, "recording", self.recording_id)

    def read_group(self, node: _Node) -> None:
        group_id = node.attr("group_id", "id")
        if group_id is None:
            self.warn("group without an id ignored")
            return
        self.groups.setdefault(group_id, None)
        if self.recording_id is None:
            self.recording_id = node.attr("recording")
        for child in node.children:
            if self.is_siprec(child) and child.key in ("associate-time", "disassociate-time"):
                continue
            self.extension_or_wrapper(child, "group", group_id)

    def read_session(self, node: _Node) -> None:
        session_id = node.attr("session_id", "id", "sessionid", "session")
        if session_id is None:
            self.warn("session without an id ignored")
            return
        draft = self.session(session_id)
        draft.group_ref = draft.group_ref or node.attr("group", "group_ref", "group-ref")
        for child in node.children:
            key = child.key if self.is_siprec(child) else ""
            if key == "sipsessionid":
                if draft.sip_session_id is None and child.text:
                    draft.sip_session_id = _collapse_session_id(child.text)
            elif key == "group-ref":
                draft.group_ref = draft.group_ref or child.text or None
            elif key == "start-time":
                draft.start_time = parse_timestamp(child.text)
            elif key == "end-time":
                draft.end_time = parse_timestamp(child.text)
            elif key == "associate-time":
                draft.associate_time = parse_timestamp(child.text)
            elif key == "disassociate-time":
                draft.disassociate_time = parse_timestamp(child.text)
            else:
                self.extension_or_wrapper(child, "session", session_id)

    def read_participant(self, node: _Node) -> None:
        participant_id = node.attr("participant_id", "id", "participantid")
        if participant_id is None:
            self.warn("participant without an id ignored")
            return
        draft = self.participant(participant_id)
        draft.session = node.attr("session_id", "session") or draft.session
        if draft.aor_raw is None:
            draft.aor_raw = node.attr("aor")
        for child in node.children:
            key = child.key if self.is_siprec(child) else ""
            if key == "nameid":
                self._read_name_id(draft, child)
            elif key == "aor":
                draft.aor_raw = draft.aor_raw or child.text or None
            elif key == "name":
                self._read_name(draft, child)
            elif key in ("send", "recv"):
                send, recv = draft.mention_streams()
                _add_unique(send if key == "send" else recv, _stream_refs(child))
            elif key in ("associate-time", "disassociate-time"):
                self._read_association_time(draft, key, child)
            else:
                self.extension_or_wrapper(child, "participant", participant_id)
        if draft.name is None and node.attr("name") is not None:
            draft.name = " ".join((node.attr("name") or "").split())

    def _read_name_id(self, draft: _ParticipantDraft, node: _Node) -> None:
        if draft.aor_raw is None:
            draft.aor_raw = node.attr("aor")
        for child in self.siprec_children(node):
            if child.key == "name":
                self._read_name(draft, child)
            elif child.key == "aor" and draft.aor_raw is None:
                draft.aor_raw = child.text or None

    @staticmethod
    def _read_name(draft: _ParticipantDraft, node: _Node) -> None:
        if draft.name is None and node.text:
            draft.name = " ".join(node.text.split())
            draft.name_lang = node.attr("lang")

    @staticmethod
    def _read_association_time(draft: _ParticipantDraft, key: str, node: _Node) -> None:
        if key == "associate-time":
            draft.associate_time = parse_timestamp(node.text) or draft.associate_time
        else:
            draft.disassociated = True
            draft.disassociate_time = parse_timestamp(node.text) or draft.disassociate_time

    def read_stream(self, node: _Node) -> None:
        stream_id = node.attr("stream_id", "id", "streamid")
        label_node = next((c for c in self.siprec_children(node) if c.key == "label"), None)
        label = (label_node.text if label_node is not None else node.attr("label")) or None
        if stream_id is None:
            self.warn(f"stream without an id ignored (label {label!r})")
            return
        draft = self.streams.get(stream_id)
        if draft is None:
            draft = self.streams[stream_id] = _StreamDraft(stream_id)
        draft.label = label or draft.label
        draft.mode = draft.mode or (node.attr("mode") or "").lower() or None
        draft.session = node.attr("session_id", "session") or draft.session
        for child in node.children:
            key = child.key if self.is_siprec(child) else ""
            if key == "label":
                continue
            if key == "mode":
                draft.mode = child.text.lower() or draft.mode
            elif key == "associate-time":
                draft.associate_time = parse_timestamp(child.text)
            elif key == "disassociate-time":
                draft.disassociate_time = parse_timestamp(child.text)
            else:
                self.extension_or_wrapper(child, "stream", stream_id)

    def read_session_recording_assoc(self, node: _Node) -> None:
        session_id = node.attr("session_id", "session", "id")
        if session_id is None:
            self.warn("sessionrecordingassoc without a session ignored")
            return
        draft = self.session(session_id)
        for child in self.siprec_children(node):
            if child.key == "associate-time":
                draft.associate_time = parse_timestamp(child.text) or draft.associate_time
            elif child.key == "disassociate-time":
                draft.disassociate_time = parse_timestamp(child.text) or draft.disassociate_time

    def read_participant_session_assoc(self, node: _Node) -> None:
        participant_id = node.attr("participant_id", "participant")
        if participant_id is None:
            self.warn("participantsessionassoc without a participant ignored")
            return
        draft = self.participant(participant_id)
        draft.session = draft.session or node.attr("session_id", "session")
        for child in self.siprec_children(node):
            if child.key in ("associate-time", "disassociate-time"):
                self._read_association_time(draft, child.key, child)

    def read_participant_stream_assoc(self, node: _Node) -> None:
        participant_id = node.attr("participant_id", "participant")
        if participant_id is None:
            self.warn("participantstreamassoc without a participant ignored")
            return
        # RFC 7865 6.8: the element states the participant's full send and recv sets, so an
        # element with no <send> means "sends nothing", not "unchanged".
        send, recv = self.participant(participant_id).mention_streams()
        for child in self.siprec_children(node):
            if child.key == "send":
                _add_unique(send, _stream_refs(child))
            elif child.key == "recv":
                _add_unique(recv, _stream_refs(child))

    _ROOT_ELEMENTS = {
        "datamode": read_datamode,
        "recording": read_recording,
        "group": read_group,
        "session": read_session,
        "participant": read_participant,
        "stream": read_stream,
        "sessionrecordingassoc": read_session_recording_assoc,
        "participantsessionassoc": read_participant_session_assoc,
        "participantstreamassoc": read_participant_stream_assoc,
    }

    def document(self, namespace: str) -> MetadataDocument:
        mode = (self.datamode or "").strip().lower()
        if mode not in ("", COMPLETE, PARTIAL):
            self.warn("unknown datamode taken as complete")
        return MetadataDocument(
            datamode=PARTIAL if mode == PARTIAL else COMPLETE,
            recording_id=self.recording_id,
            namespace=namespace,
            sessions=tuple(d.freeze() for d in self.sessions.values()),
            group_ids=tuple(self.groups),
            participants=tuple(d.freeze() for d in self.participants.values()),
            streams=tuple(d.freeze() for d in self.streams.values()),
            extensions=self._extensions(),
            warnings=tuple(self.warnings),
        )

    def _extensions(self) -> tuple[Extension, ...]:
        if len(self.extensions) > MAX_EXTENSIONS:
            self.warn(f"only the first {MAX_EXTENSIONS} extension elements kept")
        kept: list[Extension] = []
        for pending in self.extensions[:MAX_EXTENSIONS]:
            kind = pending.parent_kind or self._kind_of(pending.parent_id)
            values = _flatten(pending.node)
            if len(values) > MAX_EXTENSION_VALUES:
                self.warn(f"extension values cut to {MAX_EXTENSION_VALUES} per element")
                values = dict(list(values.items())[:MAX_EXTENSION_VALUES])
            kept.append(
                Extension(
                    parent_kind=kind,
                    parent_id=pending.parent_id
                    if pending.parent_id is not None
                    else (self.recording_id if kind == "recording" else None),
                    namespace=pending.node.namespace or "",
                    element=pending.node.name,
                    values=MappingProxyType(values),
                )
            )
        return tuple(kept)

    def _kind_of(self, parent_id: str | None) -> str:
        if parent_id is not None:
            for kind, ids in (
                ("session", self.sessions),
                ("participant", self.participants),
                ("stream", self.streams),
                ("group", self.groups),
            ):
                if parent_id in ids:
                    return kind
        return "recording"


def _add_unique(target: list[str], values: list[str]) -> None:
    for value in values:
        if value not in target:
            target.append(value)


def _stream_refs(node: _Node) -> list[str]:
    """Stream ids in a <send>/<recv>: its own text and/or <id> children (BroadWorks)."""
    refs = [node.text] if node.text else []
    refs.extend(c.text for c in node.children if c.key in ("id", "stream_id") and c.text)
    attr = node.attr("stream_id", "id")
    if attr is not None:
        refs.append(attr)
    return refs


def _clip(text: str) -> str:
    return text if len(text) <= MAX_VALUE_CHARS else text[:MAX_VALUE_CHARS]


def _flatten(node: _Node) -> dict[str, str]:
    values: dict[str, str] = {}
    if not node.children:
        if node.text:
            values[node.name] = _clip(node.text)
        for name, value in node.attrs.items():
            values[f"@{name}"] = _clip(value.strip())
        return values

    def walk(current: _Node, path: str) -> None:
        for name, value in current.attrs.items():
            if len(values) < MAX_EXTENSION_VALUES + 1:
                values[f"{path}@{name}"] = _clip(value.strip())
        for child in current.children:
            if len(values) > MAX_EXTENSION_VALUES:
                return
            child_path = f"{path}/{child.name}" if path else child.name
            if child.children:
                walk(child, child_path)
            else:
                for name, value in child.attrs.items():
                    values[f"{child_path}@{name}"] = _clip(value.strip())
                if child.text:
                    values.setdefault(child_path, _clip(child.text))

    walk(node, "")
    return values


def parse_metadata(xml: bytes) -> MetadataDocument:
    """Read one recording metadata document. Raises only :class:`MetadataError`."""
    if not isinstance(xml, bytes | bytearray | memoryview):
        raise MetadataError("metadata must be bytes")
    data = bytes(xml)
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MetadataError(f"document of {len(data)} bytes exceeds {MAX_DOCUMENT_BYTES}")
    # An XML declaration must be the very first thing; some SRCs put a blank line first.
    if not data.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        data = data.lstrip(b" \t\r\n")
    unbound: list[str] = []
    root = _build_tree(data, unbound)
    root_namespace = root.namespace or ""
    if root.key not in _ROOT_NAMES:
        raise MetadataError(f"root element {root.name!r} is not recording metadata")
    namespaces = SIPREC_NAMESPACES
    reader = _Reader(namespaces)
    if root.namespace is not None and root.namespace not in SIPREC_NAMESPACES:
        # The root is named like ours: trust its namespace rather than drop the document.
        reader.namespaces = namespaces | {root.namespace}
        reader.warn("unknown root namespace accepted")
    if unbound:
        reader.warn("undeclared namespace prefix read as no namespace")
    reader.read_root(root)
    return reader.document(root_namespace)
