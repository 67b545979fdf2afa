"""Split a SIP message body into its MIME parts (RFC 2046 multipart, as SRCs really send it).

A SIPREC INVITE carries ``multipart/mixed`` with an SDP part and an ``rs-metadata`` part; an
UPDATE or re-INVITE may carry either alone. SRCs in the field bend RFC 2046 in many small ways
(see SIPREC.md, "Dialects met in the field"), so this splitter is lenient about everything that
can be read unambiguously and strict only about resource limits:

- parts are always found by their boundary lines, never by per-part ``Content-Length``;
- LF-only line endings, whitespace after a boundary line, a missing close delimiter, a missing
  line end after it, preamble text and a quoted boundary are accepted;
- part headers need no space after the colon and may come in any order; a part without headers
  is ``text/plain`` (RFC 2046 5.1.1); a stray blank line before the headers or before the body is
  skipped.

The line ending immediately before a delimiter belongs to the delimiter (RFC 2046 5.1.1), so a
part's body ends where that line ending starts. Unknown parts (Cisco's ``application/gtd``) and
nested multiparts are returned as they are; choosing among them is the caller's business.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_HEADER_BLOCK_BYTES",
    "MAX_PARTS",
    "METADATA_CONTENT_TYPES",
    "BodyPart",
    "MultipartError",
    "find_part",
    "metadata_part",
    "parse_content_type",
    "parse_disposition",
    "split_body",
]

MAX_BODY_BYTES = 1024 * 1024
MAX_PARTS = 16
MAX_HEADER_BLOCK_BYTES = 8 * 1024

# RFC 7866 names application/rs-metadata+xml; RFC 9806 notes that the registered name is
# application/rs-metadata and both are met on the wire.
METADATA_CONTENT_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")
RECORDING_SESSION = "recording-session"

# Types whose content never legitimately starts with an empty line, so a leading blank line is
# a sender's slip (an extra CRLF between headers and body) and is dropped.
_TEXTUAL_TYPES = frozenset({"application/sdp", *METADATA_CONTENT_TYPES})

# RFC 7230 token characters: a header name cannot contain '<', '=' or spaces, which keeps an
# SDP line ("v=0") or an XML tag ("<tns:recording") from being read as a header.
_HEADER_LINE = re.compile(rb"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+[ \t]*:")
_PARAM = re.compile(
    r"""\s*;\s*([^=;\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^;]*))?""",
    re.DOTALL,
)


class MultipartError(ValueError):
    """A body that cannot be split: no boundary, no parts, or over a size limit."""


@dataclass(frozen=True, slots=True)
class BodyPart:
    """One MIME part (or the whole body when it is not multipart)."""

    content_type: str
    """Lower-cased ``type/subtype`` without parameters."""
    params: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Content-Type parameters; names lower-cased, values as sent (unquoted)."""
    disposition: str | None = None
    """Lower-cased disposition type, e.g. ``recording-session``; None when absent."""
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    """Part headers; names lower-cased, the first occurrence wins, folded lines joined."""
    body: bytes = b""


def parse_content_type(value: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type value into lower-cased ``type/subtype`` and its parameters.

    An empty value gives ``text/plain`` (RFC 2046 5.1.1 default). Quoted parameter values are
    unquoted; a value that is cut off in the middle of its quotes is taken as far as it goes.
    """
    media, _, rest = value.partition(";")
    media = "".join(media.split()).lower() or "text/plain"
    return media, _parse_params(";" + rest if rest else "")


def parse_disposition(value: str | None) -> str | None:
    """The lower-cased disposition type of a Content-Disposition value (parameters dropped)."""
    if value is None:
        return None
    kind = value.partition(";")[0].strip().lower()
    return kind or None


def _parse_params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for match in _PARAM.finditer(text):
        name = match.group(1).lower()
        raw = (match.group(2) or "").strip()
        if raw.startswith('"'):
            inner = raw[1:-1] if len(raw) > 1 and raw.endswith('"') else raw[1:]
            raw = re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)
        params.setdefault(name, raw)
    return params


def split_body(
    content_type: str, body: bytes, disposition: str | None = None
) -> tuple[BodyPart, ...]:
    """Split a message body into parts.

    ``content_type`` and ``disposition`` are the message-level header values. A body that is
    not ``multipart/*`` comes back as a single part carrying them. Raises only
    :class:`MultipartError`.
    """
    if len(body) > MAX_BODY_BYTES:
        raise MultipartError(f"body of {len(body)} bytes exceeds {MAX_BODY_BYTES}")
    media, params = parse_content_type(content_type)
    if not media.startswith("multipart/"):
        headers = {"content-type": content_type.strip()}
        if disposition is not None:
            headers["content-disposition"] = disposition.strip()
        return (
            BodyPart(
                content_type=media,
                params=MappingProxyType(params),
                disposition=parse_disposition(disposition),
                headers=MappingProxyType(headers),
                body=bytes(body),
            ),
        )
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError(f"{media} without a boundary parameter")
    try:
        dash_boundary = b"--" + boundary.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates from a caller's decode
        raise MultipartError("boundary is not encodable") from exc
    return tuple(_parse_part(raw) for raw in _raw_parts(body, dash_boundary))


def _raw_parts(body: bytes, dash_boundary: bytes) -> list[bytes]:
    """The byte ranges between delimiter lines, preamble and epilogue dropped."""
    spans: list[bytes] = []
    part_start: int | None = None
    pos = 0
    while True:
        hit = body.find(dash_boundary, pos)
        if hit < 0:
            break
        pos = hit + 1
        if hit > 0 and body[hit - 1] != 0x0A:
            continue  # not at the start of a line
        after = hit + len(dash_boundary)
        is_close = body.startswith(b"--", after)
        if is_close:
            line_end = after + 2
        else:
            line_end = after
            while line_end < len(body) and body[line_end] in b" \t":
                line_end += 1
            if line_end < len(body) and body[line_end] not in b"\r\n":
                continue  # "--foobar" is not a delimiter of boundary "foo"
        # The line ending before the delimiter belongs to the delimiter.
        body_end = hit
        if body_end > 0 and body[body_end - 1] == 0x0A:
            body_end -= 1
            if body_end > 0 and body[body_end - 1] == 0x0D:
                body_end -= 1
        if part_start is not None:
            spans.append(body[part_start : max(body_end, part_start)])
            if len(spans) > MAX_PARTS:
                raise MultipartError(f"more than {MAX_PARTS} parts")
        if is_close:
            part_start = None
            break
        newline = body.find(b"\n", line_end)
        part_start = len(body) if newline < 0 else newline + 1
        pos = part_start
    if part_start is not None and body[part_start:].strip():
        # No close delimiter: the last part runs to the end of the body.
        spans.append(body[part_start:])
    if len(spans) > MAX_PARTS:
        raise MultipartError(f"more than {MAX_PARTS} parts")
    if not spans:
        raise MultipartError("no part delimited by the boundary")
    return spans


def _header_block(raw: bytes) -> tuple[list[bytes], int]:
    """The header lines at the start of ``raw`` and the offset where the body starts.

    The header block ends at the first blank line (which is skipped), or at the first line
    that cannot be a header: a part whose sender forgot the blank line, or a part with no
    headers at all, whose body then starts at that line.
    """
    lines: list[bytes] = []
    pos = 0
    while pos < len(raw):
        newline = raw.find(b"\n", pos)
        end = len(raw) if newline < 0 else newline + 1
        line = raw[pos:end].rstrip(b"\r\n")
        if not line:
            return lines, end
        if lines and line[:1] in (b" ", b"\t"):
            lines[-1] = lines[-1] + b" " + line.strip()
        elif _HEADER_LINE.match(line):
            lines.append(line)
        else:
            return lines, pos
        if end > MAX_HEADER_BLOCK_BYTES:
            raise MultipartError(f"part header block exceeds {MAX_HEADER_BLOCK_BYTES} bytes")
        pos = end
    return lines, len(raw)


def _parse_part(raw: bytes) -> BodyPart:
    lines, body_start = _header_block(raw)
    if not lines and 0 < body_start < len(raw):
        # A blank line straight after the delimiter, then what looks like the real headers:
        # take them when they name the content (a stray CRLF rather than a header-less part).
        retry, retry_start = _header_block(raw[body_start:])
        if any(line[:8].lower() == b"content-" for line in retry):
            lines, body_start = retry, body_start + retry_start
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.decode("latin-1").partition(":")
        headers.setdefault(name.strip().lower(), value.strip())
    # RFC 2046 5.1.1: a part without Content-Type (or without any header) is text/plain.
    media, params = parse_content_type(headers.get("content-type", ""))
    body = raw[body_start:]
    if media in _TEXTUAL_TYPES:
        body = _skip_blank_lines(body)
    return BodyPart(
        content_type=media,
        params=MappingProxyType(params),
        disposition=parse_disposition(headers.get("content-disposition")),
        headers=MappingProxyType(headers),
        body=body,
    )


def _skip_blank_lines(body: bytes) -> bytes:
    while True:
        if body.startswith(b"\r\n"):
            body = body[2:]
        elif body.startswith(b"\n"):
            body = body[1:]
        else:
            return body


def find_part(parts: Iterable[BodyPart], *content_types: str) -> BodyPart | None:
    """The first part whose content type is one of ``content_types`` (case-insensitive)."""
    wanted = {content_type.lower() for content_type in content_types}
    return next((part for part in parts if part.content_type in wanted), None)


def metadata_part(parts: Iterable[BodyPart]) -> BodyPart | None:
    """The recording metadata part, preferring one with disposition ``recording-session``.

    Falls back to any XML part marked ``recording-session`` when no part carries an
    rs-metadata type, since some SRCs label the metadata ``application/xml``.
    """
    candidates = [part for part in parts if part.content_type in METADATA_CONTENT_TYPES]
    for part in candidates:
        if part.disposition == RECORDING_SESSION:
            return part
    if candidates:
        return candidates[0]
    return next(
        (
            part
            for part in parts
            if part.disposition == RECORDING_SESSION and part.content_type.endswith("xml")
        ),
        None,
    )
