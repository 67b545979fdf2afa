"""Our own SIPREC client: it plays the SBC (the SRC of RFC 7866) towards the recorder.

It exists for end-to-end tests and as the load generator of the media benchmark: SIPp can
neither encrypt (SRTP) nor send media on more than the first m-line, and a recorder is only
tested by what an SBC really sends. A call is described by a `CallPlan` (streams, codecs, SRTP
suites, DTMF, hold, network impairments) and `run_calls` places many of them and returns what
was sent, per call and per stream, in a `RunReport`.

This package exports what it takes to plan calls, run them and read the reports. Its modules,
in layers as in the server:

- sans-IO, with no clock and no socket:
  `plan` (the call as data), `payloads` (codecs, tones, `PayloadEncoder`: G.711 by the
  encoders of media.codecs, PyAV for G.722 and Opus), `rtp` (`RtpStream`: the packets of one
  stream tick by tick, RFC 4733 telephone events; `Impairment`: seeded loss / reorder /
  duplication), `invite` (SDP offer, RFC 7865 metadata, multipart/mixed body, reading the
  answer), `dialog` (`SrcDialog`: the requests of one dialog), `reports` and `errors`;
- the asyncio edge: `sip_link` (one SIP link per transport shared by every call, a small
  client transaction per request: RFC 3261 17.1 retransmission on T1 doubling over UDP),
  `pacer` (ONE task that sends the due packets of every stream of every call on a common grid
  of packet times, each call on one of a few phases of it), `call` (one call's life) and
  `run` (`run_calls`).

The only exception raised for bad plans or unreadable answers is `SiprecClientError`; network
failures end up in the reports, not as exceptions.
"""

from __future__ import annotations

from siprec_server.tools.siprec_client.errors import SiprecClientError
from siprec_server.tools.siprec_client.payloads import CODECS, AudioSource, CodecSpec, codec_spec
from siprec_server.tools.siprec_client.plan import (
    CallPlan,
    DtmfDigit,
    Hold,
    Impairments,
    Participant,
    StreamPlan,
    default_streams,
)
from siprec_server.tools.siprec_client.reports import (
    CallReport,
    DtmfSent,
    RunReport,
    SenderStats,
    SipExchange,
    StreamReport,
)
from siprec_server.tools.siprec_client.run import ServerAddress, parse_server, run_calls
from siprec_server.tools.siprec_client.sip_link import T1

__all__ = [
    "CODECS",
    "T1",
    "AudioSource",
    "CallPlan",
    "CallReport",
    "CodecSpec",
    "DtmfDigit",
    "DtmfSent",
    "Hold",
    "Impairments",
    "Participant",
    "RunReport",
    "SenderStats",
    "ServerAddress",
    "SipExchange",
    "SiprecClientError",
    "StreamPlan",
    "StreamReport",
    "codec_spec",
    "default_streams",
    "parse_server",
    "run_calls",
]
