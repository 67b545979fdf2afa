"""Where SIP messages go: the top Via of what arrives is stamped with `received` and `rport`
(RFC 3261 §18.2.1, RFC 3581 §4), responses go where §18.2.2 and RFC 3581 say, and the requests we
send within a dialog go to the first Route or the remote target (§12.2.1.1, loose routing).

Pure functions of a message and the address it came from: routing keeps no state, so unlike the
transaction, dialog and session-timer modules it has no state table.
"""

from __future__ import annotations

import ipaddress
import re

from siprec_server.sip.events import Peer
from siprec_server.sip.message import (
    SipParseError,
    SipRequest,
    parse_address,
    parse_via,
    split_list,
)

_HOST_RE = re.compile(r"\[[0-9A-Fa-f:.]+\]|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*|[A-Za-z0-9\-.]+")


def stamp_via(request: SipRequest, peer: Peer) -> None:
    """RFC 3261 §18.2.1 received= and RFC 3581 §4 rport= on the top Via."""
    vias = request.headers.get_all("Via")
    if not vias:
        raise SipParseError("Missing Via")
    values = split_list(vias[0])
    if not values:
        raise SipParseError("Missing Via")
    top = values[0]
    via = parse_via(top)
    stamped = top
    if "rport" in via.params:
        # RFC 3581 §4: received is added even when it equals the sent-by host.
        stamped = _set_param(stamped, "rport", str(peer.port))
        stamped = _set_param(stamped, "received", peer.host)
    elif _host_differs(via.host, peer.host):
        stamped = _set_param(stamped, "received", peer.host)
    if stamped != top:
        values[0] = stamped
        request.headers.replace_first("Via", ", ".join(values))


def reply_destination(request: SipRequest, peer: Peer) -> Peer:
    """RFC 3261 §18.2.2 and RFC 3581 §4: where an unreliable response goes.

    Reliable transports answer on the connection the request came on. Over UDP the host is
    the source address: `received` equals it once stamped, and a `received` or `rport`
    value the client wrote itself must not redirect our responses elsewhere."""
    if peer.reliable:
        return peer
    via = request.top_via
    maddr = via.params.get("maddr")
    if maddr and _HOST_RE.fullmatch(maddr):
        return Peer("udp", maddr.strip("[]"), via.port or 5060)
    if "rport" in via.params:
        return Peer("udp", peer.host, peer.port)
    return Peer("udp", peer.host, via.port or 5060)


def request_destination(peer: Peer, route_set: list[str], remote_target: str) -> Peer:
    """The next hop of a request within a dialog whose requests come from `peer`: the connection
    itself on TCP/TLS, else the first Route (loose routing) or the remote target."""
    if peer.reliable:
        return peer
    target = route_set[0] if route_set else f"<{remote_target}>"
    try:
        uri = parse_address(target).uri
    except SipParseError:
        return peer
    host = uri.host.strip("[]")
    port = uri.port or 5060
    if not host or not 0 < port < 65536:
        return peer  # e.g. a tel: Contact: the SRC's source address is all we have
    return Peer("udp", host, port)


def bracket_host(host: str) -> str:
    """An IPv6 literal in brackets, as a Via sent-by or a URI host needs it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _set_param(via: str, name: str, value: str) -> str:
    head, *params = via.split(";")
    kept = [p for p in params if p.strip().split("=", 1)[0].strip().lower() != name]
    return ";".join([head.rstrip(), *kept, f"{name}={value}"])


def _host_differs(via_host: str, source: str) -> bool:
    try:
        return ipaddress.ip_address(via_host.strip("[]")) != ipaddress.ip_address(source)
    except ValueError:
        return True
