"""What a SIPREC request carries: recognising a recording session (RFC 7866 §6.1, tolerantly)
and taking its body apart into the SDP offer and the rs-metadata document.

Pure functions over a parsed SipRequest; a request that cannot be accepted raises `Rejection`
with the status the RFCs prescribe (415 with Accept, 400, 403).
"""

from __future__ import annotations

from dataclasses import dataclass

from siprec_server.sip.message import SipRequest, parse_address
from siprec_server.siprec.multipart import MultipartError, find_part, metadata_part, split_body

SDP_TYPE = "application/sdp"
METADATA_TYPES = ("application/rs-metadata+xml", "application/rs-metadata")
ACCEPT = "application/sdp, application/rs-metadata+xml, application/rs-metadata, multipart/mixed"


class Rejection(Exception):
    """The request is answered with this final response and nothing else happens."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers


@dataclass(frozen=True, slots=True)
class SiprecBody:
    sdp: bytes | None
    """The SDP offer, when the request carries one."""
    metadata: bytes | None
    """The rs-metadata XML, when the request carries one."""


def read_body(request: SipRequest) -> SiprecBody:
    if not request.body:
        return SiprecBody(None, None)
    encoding = (request.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise Rejection(415, "Unsupported Content-Encoding", (("Accept-Encoding", "identity"),))
    content_type = request.content_type
    if not content_type:
        raise Rejection(400, "Body without Content-Type")
    try:
        parts = split_body(content_type, request.body, request.headers.get("Content-Disposition"))
    except MultipartError as exc:
        raise Rejection(400, f"Malformed body: {exc}") from None
    sdp = find_part(parts, SDP_TYPE)
    metadata = metadata_part(parts)
    if sdp is None and metadata is None:
        raise Rejection(415, "Unsupported Media Type", (("Accept", ACCEPT),))
    return SiprecBody(sdp.body if sdp else None, metadata.body if metadata else None)


def has_siprec_indicator(request: SipRequest) -> bool:
    """Require: siprec, or +sip.src on the Contact (as a header parameter, inside the URI, or
    spelled `;src`, all seen in the field)."""
    if "siprec" in request.headers.tokens("Require"):
        return True
    for contact in request.headers.values("Contact"):
        try:
            address = parse_address(contact)
        except ValueError:
            continue
        names = {k.lower() for k in address.parameters} | {
            k.lower() for k in address.uri.parameters
        }
        if names & {"+sip.src", "src"}:
            return True
    return False


def check_recording_session(request: SipRequest, body: SiprecBody, *, strict: bool) -> None:
    """Strict mode wants an RFC 7866 marker; tolerant mode (the default) also takes a request
    whose body carries recording metadata, or any INVITE with an SDP offer."""
    if has_siprec_indicator(request):
        return
    if strict:
        raise Rejection(403, "Not a recording session (Require: siprec or +sip.src expected)")
    if body.metadata is None and body.sdp is None:
        raise Rejection(488, "Not a recording session")
