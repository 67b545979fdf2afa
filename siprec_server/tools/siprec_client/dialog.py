"""The SRC's side of one SIP dialog as data (sans-IO): Call-ID, tags, CSeq, the remote target,
and the requests (INVITE, re-INVITE, BYE) and ACKs built from them (RFC 3261, RFC 7866 6.1)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from siprec_server.sip.message import Headers, SipRequest, SipResponse
from siprec_server.tools.siprec_client.invite import build_invite_body


def _branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


class SrcDialog:
    """The SRC's side of one dialog as data (sans-IO): our identity and the recorder's, the
    CSeq counter, and the requests and ACKs built from them."""

    def __init__(
        self,
        *,
        transport: str,
        local: tuple[str, int],
        server: tuple[str, int],
        call_id: str | None = None,
        from_tag: str | None = None,
    ) -> None:
        self.transport = transport
        self.local = local
        self.call_id = call_id or f"{secrets.token_hex(12)}@{_uri_host(local[0])}"
        self.from_tag = from_tag or secrets.token_hex(6)
        self.cseq = 0
        self.remote_target = _host_uri(server, transport)
        self.to_header = f"<{self.remote_target}>"
        params = ";transport=tcp" if transport == "tcp" else ""
        self.contact = f"<sip:src@{_host_port(*local)}{params}>;+sip.src"
        self.from_header = f"<sip:src@{_uri_host(local[0])}>;tag={self.from_tag}"

    def request(
        self,
        method: str,
        *,
        cseq: int | None = None,
        branch: str | None = None,
        body: bytes = b"",
        content_type: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        uri: str | None = None,
        to_header: str | None = None,
    ) -> SipRequest:
        """A request in this dialog; a new CSeq unless one is given (ACK, CANCEL)."""
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        via = f"SIP/2.0/{self.transport.upper()} {_host_port(*self.local)}"
        headers = Headers(
            [
                ("Via", f"{via};branch={branch or _branch()};rport"),
                ("Max-Forwards", "70"),
                ("From", self.from_header),
                ("To", to_header or self.to_header),
                ("Call-ID", self.call_id),
                ("CSeq", f"{cseq} {method}"),
            ]
        )
        if method in ("INVITE", "UPDATE"):
            headers.add("Contact", self.contact)
        for name, value in extra:
            headers.add(name, value)
        if content_type:
            headers.add("Content-Type", content_type)
        return SipRequest(headers, body, method, uri or self.remote_target)

    def invite(self, sdp: bytes, metadata: bytes, boundary: str | None = None) -> SipRequest:
        """The initial SIPREC INVITE (RFC 7866 6.1): Require: siprec, +sip.src in Contact,
        multipart/mixed body with the SDP offer and the metadata."""
        content_type, body = build_invite_body(
            sdp, metadata, boundary or "siprec-" + secrets.token_hex(8)
        )
        return self.request(
            "INVITE", body=body, content_type=content_type,
            extra=[("Require", "siprec"),
                   ("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE"),
                   ("Accept", "application/sdp, application/rs-metadata"),
                   ("User-Agent", "siprec-server-loadgen")],
        )

    def ack(self, invite: SipRequest, response: SipResponse) -> SipRequest:
        """The ACK of a final response to `invite`. A 2xx confirms the dialog: its To tag and
        Contact are kept and the ACK is a new transaction (RFC 3261 13.2.2.4); for other
        statuses the ACK belongs to the INVITE's transaction (17.1.1.3)."""
        cseq = invite.cseq[0]
        if 200 <= response.status < 300:
            self.to_header = response.headers.get("To") or self.to_header
            contact = response.headers.get("Contact") or ""
            if "<" in contact and ">" in contact:
                self.remote_target = contact[contact.find("<") + 1 : contact.find(">")]
            return self.request("ACK", cseq=cseq)
        return self.request(
            "ACK", cseq=cseq, branch=invite.top_via.branch, uri=invite.uri,
            to_header=response.headers.get("To") or self.to_header,
        )


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _host_port(host: str, port: int) -> str:
    return f"{_uri_host(host)}:{port}"


def _host_uri(server: tuple[str, int], transport: str) -> str:
    params = ";transport=tcp" if transport == "tcp" else ""
    return f"sip:srs@{_host_port(*server)}{params}"
