"""SIP messages: parsing from the wire, serialising back, and the response rules of RFC 3261 §8.2.6.

The framing (start line, header lines, folding, compact forms, Content-Length) is ours because it
must be tolerant of what SBCs send and strict about sizes; the grammar of individual header values
(name-addr, URIs) comes from `sipmessage`. Header values are kept as received so that responses
copy Via/From/To/Call-ID/CSeq byte for byte, as RFC 3261 requires.

Bytes are decoded with UTF-8 and `surrogateescape`, so any byte sequence survives a parse and a
re-serialisation unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import sipmessage

MAX_DATAGRAM = 65_535
MAX_HEADER_BYTES = 32_768
MAX_BODY_BYTES = 1_048_576
MAX_HEADER_LINES = 256

COMPACT_FORMS = {
    "a": "Accept-Contact",
    "b": "Referred-By",
    "c": "Content-Type",
    "d": "Request-Disposition",
    "e": "Content-Encoding",
    "f": "From",
    "i": "Call-ID",
    "j": "Reject-Contact",
    "k": "Supported",
    "l": "Content-Length",
    "m": "Contact",
    "o": "Event",
    "r": "Refer-To",
    "s": "Subject",
    "t": "To",
    "u": "Allow-Events",
    "v": "Via",
    "x": "Session-Expires",
    "y": "Identity",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        "Accept",
        "Accept-Encoding",
        "Allow",
        "Call-ID",
        "Contact",
        "Content-Disposition",
        "Content-Encoding",
        "Content-Length",
        "Content-Type",
        "CSeq",
        "From",
        "Max-Forwards",
        "Min-SE",
        "Record-Route",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Session-Expires",
        "Supported",
        "Timestamp",
        "To",
        "Unsupported",
        "User-Agent",
        "Via",
        "WWW-Authenticate",
        "MIME-Version",
        "Session-ID",
        "Min-Expires",
        "Warning",
        "Reason",
    )
}

# Headers whose value is a comma-separated list that may also be split over several lines.
_LIST_HEADERS = frozenset(
    {
        "via",
        "route",
        "record-route",
        "contact",
        "supported",
        "require",
        "proxy-require",
        "allow",
        "accept",
        "unsupported",
        "accept-encoding",
    }
)

_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_METHOD_RE = re.compile(_TOKEN)
_HEADER_NAME_RE = re.compile(_TOKEN)
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE)
_DIGITS_RE = re.compile(r"[0-9]+")
_CSEQ_RE = re.compile(r"\s*([0-9]{1,10})\s+(" + _TOKEN + r")\s*")
_VIA_RE = re.compile(
    r"\s*SIP\s*/\s*2\.0\s*/\s*(" + _TOKEN + r")\s+"  # transport
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._]+)"  # host (with "_", which some hostnames carry)
    r"(?:\s*:\s*([0-9]{1,5}))?"  # port
    r"\s*((?:;.*)?)$",  # params
    re.IGNORECASE,
)


class SipParseError(ValueError):
    """A message that cannot be handled. `reason` is safe to put in a reason phrase.

    `partial` is the request as far as it could be read, when enough of it (Via, From, To,
    Call-ID, CSeq) was present to send an error response back; `status` is the response code
    it deserves (400, or 413 / 505 where RFC 3261 §21 has a more precise one).
    """

    def __init__(self, reason: str, partial: SipRequest | None = None, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.partial = partial
        self.status = status


def ascii_digits(value: str, max_len: int = 9) -> int | None:
    """A non-negative decimal number, or None. `str.isdigit` is not enough: it accepts
    characters such as '²' that `int()` then rejects."""
    value = value.strip()
    if len(value) > max_len or not _DIGITS_RE.fullmatch(value):
        return None
    return int(value)


def canonical_name(name: str) -> str:
    lowered = name.lower()
    if len(lowered) == 1 and lowered in COMPACT_FORMS:
        return COMPACT_FORMS[lowered]
    return _CANONICAL.get(lowered, name)


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value, respecting quotes and angle brackets."""
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    i = 0
    while i < len(value):
        ch = value[i]
        if quoted:
            if ch == "\\":
                i += 1
            elif ch == '"':
                quoted = False
        elif ch == '"':
            quoted = True
        elif ch == "<":
            depth += 1
        elif ch == ">":
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            items.append(value[start:i].strip())
            start = i + 1
        i += 1
    items.append(value[start:].strip())
    return [item for item in items if item]


class Headers:
    """An ordered, case-insensitive list of header fields with values kept as received."""

    __slots__ = ("_fields",)

    def __init__(self, fields: Iterable[tuple[str, str]] = ()) -> None:
        self._fields: list[tuple[str, str]] = [(canonical_name(n), v) for n, v in fields]

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def get(self, name: str) -> str | None:
        """The first field's value, or None."""
        wanted = canonical_name(name).lower()
        for n, v in self._fields:
            if n.lower() == wanted:
                return v
        return None

    def get_all(self, name: str) -> list[str]:
        """Every field's value, one entry per header line."""
        wanted = canonical_name(name).lower()
        return [v for n, v in self._fields if n.lower() == wanted]

    def values(self, name: str) -> list[str]:
        """Every element of a list header, across lines and commas."""
        out: list[str] = []
        for value in self.get_all(name):
            out.extend(split_list(value))
        return out

    def tokens(self, name: str) -> set[str]:
        """The option tags / methods of a token-list header, lower-cased."""
        return {v.lower() for v in self.values(name)}

    def add(self, name: str, value: str) -> None:
        self._fields.append((canonical_name(name), value))

    def set(self, name: str, value: str) -> None:
        self.remove(name)
        self.add(name, value)

    def remove(self, name: str) -> None:
        wanted = canonical_name(name).lower()
        self._fields = [(n, v) for n, v in self._fields if n.lower() != wanted]

    def replace_first(self, name: str, value: str) -> None:
        wanted = canonical_name(name).lower()
        for i, (n, _v) in enumerate(self._fields):
            if n.lower() == wanted:
                self._fields[i] = (n, value)
                return
        self.add(name, value)

    def copy(self) -> Headers:
        h = Headers()
        h._fields = list(self._fields)
        return h


@dataclass(frozen=True, slots=True)
class Via:
    transport: str
    host: str
    port: int | None
    params: dict[str, str | None]

    @property
    def branch(self) -> str | None:
        return self.params.get("branch")

    @property
    def sent_by(self) -> str:
        return f"{self.host}:{self.port}" if self.port is not None else self.host


def parse_via(value: str) -> Via:
    m = _VIA_RE.match(value)
    if not m:
        raise SipParseError("Malformed Via")
    params: dict[str, str | None] = {}
    for item in m.group(4).split(";"):
        item = item.strip()
        if not item:
            continue
        k, sep, v = item.partition("=")
        params[k.strip().lower()] = v.strip() if sep else None
    port = int(m.group(3)) if m.group(3) else None
    if port is not None and not 0 < port < 65536:
        raise SipParseError("Malformed Via port")
    return Via(m.group(1).upper(), m.group(2), port, params)


def parse_address(value: str) -> sipmessage.Address:
    """A name-addr or addr-spec (From, To, Contact, Route), or SipParseError."""
    try:
        return sipmessage.Address.parse(value)
    except (ValueError, IndexError, TypeError, KeyError) as exc:
        # TypeError: sipmessage builds Parameters(**params), so a parameter named `self`
        # ("<sip:a@b;self>") collides with the method's own argument.
        raise SipParseError("Malformed address") from exc


def header_param(value: str, name: str) -> str | None:
    """A header parameter (after the URI) such as `tag`, without a full address parse."""
    # Parameters follow the closing '>' when there is one; else they follow the addr-spec.
    tail = value.rsplit(">", 1)[1] if ">" in value else value
    for item in tail.split(";")[1:]:
        k, _, v = item.partition("=")
        if k.strip().lower() == name:
            return v.strip()
    return None


@dataclass(slots=True)
class SipMessage:
    headers: Headers
    body: bytes = b""

    @property
    def call_id(self) -> str:
        return self.headers.get("Call-ID") or ""

    @property
    def cseq(self) -> tuple[int, str]:
        m = _CSEQ_RE.fullmatch(self.headers.get("CSeq") or "")
        if not m:
            raise SipParseError("Malformed CSeq")
        return int(m.group(1)), m.group(2).upper()

    @property
    def from_tag(self) -> str | None:
        return header_param(self.headers.get("From") or "", "tag")

    @property
    def to_tag(self) -> str | None:
        return header_param(self.headers.get("To") or "", "tag")

    @property
    def top_via(self) -> Via:
        vias = self.headers.values("Via")
        if not vias:
            raise SipParseError("Missing Via")
        return parse_via(vias[0])

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def _serialise(self, start_line: str) -> bytes:
        lines = [_one_line(start_line)]
        for name, value in self.headers:
            if name.lower() == "content-length":
                continue
            lines.append(f"{name}: {_one_line(value)}")
        lines.append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines) + "\r\n\r\n"
        return head.encode("utf-8", "surrogateescape") + self.body


def _one_line(text: str) -> str:
    """A value set by our own code (a reason phrase, a header from the transaction user) must
    not smuggle a line break, and with it a header or a body, onto the wire."""
    if "\r" in text or "\n" in text:
        return text.replace("\r", " ").replace("\n", " ")
    return text


@dataclass(slots=True)
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def to_bytes(self) -> bytes:
        return self._serialise(f"{self.method} {self.uri} SIP/2.0")

    @property
    def is_in_dialog(self) -> bool:
        return self.to_tag is not None


@dataclass(slots=True)
class SipResponse(SipMessage):
    status: int = 0
    reason: str = ""

    def to_bytes(self) -> bytes:
        return self._serialise(f"SIP/2.0 {self.status} {self.reason}")


_REASONS = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    422: "Session Interval Too Small",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def reason_phrase(status: int) -> str:
    return _REASONS.get(status, "Unknown")


@dataclass(frozen=True, slots=True)
class _Raw:
    start_line: str
    headers: Headers
    body: bytes = field(default=b"")


def _split_head(data: bytes, *, datagram: bool) -> tuple[bytes, bytes]:
    """Split at the first empty line (CRLF CRLF, tolerating bare LF). A datagram that lacks the
    empty line is taken as headers only: UDP delivers whole datagrams, so nothing is missing
    but the sender's final CRLF."""
    crlf = data.find(b"\r\n\r\n")
    lf = data.find(b"\n\n")
    if crlf == -1 and lf == -1:
        if datagram:
            return data, b""
        raise SipParseError("No end of headers")
    if crlf != -1 and (lf == -1 or crlf <= lf):
        return data[:crlf], data[crlf + 4 :]
    return data[:lf], data[lf + 2 :]


def _parse_head(head: bytes) -> tuple[str, Headers, str | None]:
    """The start line, the headers, and the first problem with a header line if any: a bad
    line is skipped so that the rest can still carry an error response back."""
    if len(head) > MAX_HEADER_BYTES:
        raise SipParseError("Header block too large")
    text = head.decode("utf-8", "surrogateescape")
    lines = text.replace("\r\n", "\n").split("\n")
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise SipParseError("Empty message")
    start_line = lines[0].strip()
    problem: str | None = None
    unfolded: list[str] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t"):
            if not unfolded:
                problem = problem or "Continuation line before any header"
                continue
            # RFC 3261 §7.3.1: folding is equivalent to a single SP.
            unfolded[-1] += " " + line.strip()
        elif line.strip():
            unfolded.append(line)
    if len(unfolded) > MAX_HEADER_LINES:
        raise SipParseError("Too many header lines")
    headers = Headers()
    for line in unfolded:
        name, sep, value = line.partition(":")
        name = name.strip()
        if not sep or not _HEADER_NAME_RE.fullmatch(name):
            problem = problem or "Malformed header line"
            continue
        headers.add(name, value.strip())
    return start_line, headers, problem


def content_length(headers: Headers) -> int | None:
    value = headers.get("Content-Length")
    if value is None:
        return None
    length = ascii_digits(value)
    if length is None:
        raise SipParseError("Malformed Content-Length")
    return length


def parse_message(data: bytes, *, datagram: bool = True) -> SipRequest | SipResponse:
    """Parse one complete message. With `datagram`, the body is whatever follows the headers,
    cut to Content-Length (RFC 3261 §18.3); a Content-Length larger than the data is an error.

    Raises SipParseError only; its `partial` is set when the request can still be answered.
    """
    if len(data) > MAX_DATAGRAM + MAX_BODY_BYTES:
        raise SipParseError("Message too large")
    # RFC 3261 §7.5: CRLFs before the start line are ignored.
    data = data.lstrip(b"\r\n")
    if not data:
        raise SipParseError("Empty message")
    head, body = _split_head(data, datagram=datagram)
    start_line, headers, problem = _parse_head(head)
    message = _build(start_line, headers, b"")
    partial = _respondable(message) if isinstance(message, SipRequest) else None
    try:
        length = content_length(headers)
    except SipParseError as exc:
        raise SipParseError(exc.reason, partial) from None
    if length is not None:
        if length > MAX_BODY_BYTES:
            raise SipParseError("Body too large", partial, 413)
        if length > len(body):
            raise SipParseError("Content-Length larger than the body", partial)
        body = body[:length]
    elif not datagram:
        body = b""
    if len(body) > MAX_BODY_BYTES:
        raise SipParseError("Body too large", partial, 413)
    message.body = body
    if problem is not None:
        raise SipParseError(problem, partial)
    if isinstance(message, SipRequest):
        _validate_request(message, start_line)
    return message


def _build(start_line: str, headers: Headers, body: bytes) -> SipRequest | SipResponse:
    if start_line.upper().startswith("SIP/"):
        m = _STATUS_RE.fullmatch(start_line)
        if not m:
            raise SipParseError("Malformed status line")
        return SipResponse(headers, body, int(m.group(1)), (m.group(2) or "").strip())
    parts = start_line.split()
    if len(parts) != 3 or not _METHOD_RE.fullmatch(parts[0]):
        raise SipParseError("Malformed request line")
    method, uri, _version = parts
    return SipRequest(headers, body, method.upper(), uri)


def _respondable(request: SipRequest) -> SipRequest | None:
    """The request if an error response can be built for it (RFC 3261 §8.2.6 needs these)."""
    h = request.headers
    if not all(h.get(n) for n in ("Via", "From", "To", "Call-ID", "CSeq")):
        return None
    try:
        request.top_via  # noqa: B018 - validates
        request.cseq  # noqa: B018
    except SipParseError:
        return None
    return request


def _validate_request(request: SipRequest, start_line: str) -> None:
    h = request.headers
    for name in ("Via", "From", "To", "Call-ID", "CSeq"):
        if not h.get(name):
            # Without all five no response can be built (RFC 3261 §8.2.6.2): drop silently.
            raise SipParseError(f"Missing {name}")
    try:
        request.top_via  # noqa: B018
        number, method = request.cseq
    except SipParseError as exc:
        raise SipParseError(exc.reason, None) from exc
    if start_line.split()[2].upper() != "SIP/2.0":
        raise SipParseError("Unsupported SIP version", request, 505)
    if method != request.method:
        raise SipParseError("CSeq method does not match the request", request)
    if number >= 2**31:
        raise SipParseError("CSeq number out of range", request)
    if ":" not in request.uri:
        raise SipParseError("Malformed Request-URI", request)
    max_forwards = h.get("Max-Forwards")
    if max_forwards is not None and ascii_digits(max_forwards) is None:
        raise SipParseError("Malformed Max-Forwards", request)
    # A missing From tag (RFC 2543 peers) is tolerated: the dialog layer treats it as empty.


def build_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response per RFC 3261 §8.2.6: Via, From, Call-ID and CSeq copied, To tagged."""
    out = Headers()
    for via in request.headers.get_all("Via"):
        out.add("Via", via)
    out.add("From", request.headers.get("From") or "")
    to = request.headers.get("To") or ""
    if to_tag and status != 100 and header_param(to, "tag") is None:
        to = f"{to};tag={to_tag}"
    out.add("To", to)
    out.add("Call-ID", request.call_id)
    out.add("CSeq", request.headers.get("CSeq") or "")
    if status == 100 and (ts := request.headers.get("Timestamp")):
        out.add("Timestamp", ts)
    for name, value in headers:
        out.add(name, value)
    return SipResponse(out, body, status, reason or reason_phrase(status))


class StreamFramer:
    """Cuts a TCP/TLS byte stream into messages by Content-Length (RFC 3261 §18.3).

    `feed()` returns complete messages as bytes; keep-alive CRLFs between messages are skipped
    and every double CRLF is counted in `pings` (RFC 5626 §4.4.1: the ping is CRLF CRLF, the
    pong a single CRLF), however the bytes were split across reads. The end of the headers may
    be CRLF CRLF or, tolerated, LF LF. A framing error is fatal for the connection: the caller
    answers if it can and closes.
    """

    def __init__(self, max_message: int = MAX_HEADER_BYTES + MAX_BODY_BYTES) -> None:
        self._buffer = bytearray()
        self._max = max_message
        self._scanned = 0
        """How far the search for the end of the headers has already looked."""
        self._total: int | None = None
        """Length of the message at the head of the buffer, once its headers are complete."""
        self._crlfs = 0
        """CRLFs seen between messages since the last ping was counted."""
        self.pings = 0

    @property
    def in_progress(self) -> bool:
        """Whether part of a message is buffered (the sender owes us the rest)."""
        return bool(self._buffer.strip(b"\r\n"))

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        messages: list[bytes] = []
        while True:
            if self._total is None and not self._skip_keepalives():
                return messages
            if self._total is None:
                total = self._frame_length()
                if total is None:
                    return messages
                self._total = total
            if len(self._buffer) < self._total:
                return messages
            messages.append(bytes(self._buffer[: self._total]))
            del self._buffer[: self._total]
            self._total = None
            self._scanned = 0
            self._crlfs = 0

    def _skip_keepalives(self) -> bool:
        """Drop CRLFs (and bare LFs) before a message; False when nothing else is buffered."""
        buf = self._buffer
        i = 0
        while i < len(buf):
            if buf[i : i + 2] == b"\r\n":
                i += 2
                self._crlfs += 1
                if self._crlfs == 2:
                    self.pings += 1
                    self._crlfs = 0
            elif buf[i] == 0x0A:
                i += 1
            else:
                break
        if i:
            del buf[:i]
        if not buf or buf == b"\r":  # nothing, or the first half of a CRLF
            return False
        self._crlfs = 0
        return True

    def _frame_length(self) -> int | None:
        buf = self._buffer
        # Resume the search a few bytes back: the terminator may straddle two reads.
        start = max(0, self._scanned - 3)
        crlf = buf.find(b"\r\n\r\n", start)
        lf = buf.find(b"\n\n", start)
        if crlf == -1 and lf == -1:
            self._scanned = len(buf)
            if len(buf) > MAX_HEADER_BYTES:
                raise SipParseError("Header block too large")
            return None
        if crlf != -1 and (lf == -1 or crlf <= lf):
            end, gap = crlf, 4
        else:
            end, gap = lf, 2
        _start, headers, _problem = _parse_head(bytes(buf[:end]))
        length = content_length(headers)
        if length is None:
            raise SipParseError("Missing Content-Length on a stream transport")
        total = end + gap + length
        if total > self._max:
            raise SipParseError("Message too large", status=513)
        return total
