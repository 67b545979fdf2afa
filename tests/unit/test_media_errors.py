"""Every error the media core raises is a MediaError (one class for a caller that must outlive
any media failure), and those that were ValueErrors still are."""

from __future__ import annotations

import pytest

from siprec_server.media.codecs import CodecError
from siprec_server.media.dtmf import DtmfFormatError
from siprec_server.media.errors import MediaError
from siprec_server.media.jitter import TimelineError
from siprec_server.media.ogg_opus import OggOpusError
from siprec_server.media.ports import PortsExhausted
from siprec_server.media.rtp import RtpFormatError
from siprec_server.media.srtp import SrtpAuthError, SrtpError, SrtpFormatError, SrtpReplayError


@pytest.mark.parametrize("kind", [CodecError, DtmfFormatError, TimelineError, OggOpusError,
                                  PortsExhausted, RtpFormatError, SrtpError, SrtpAuthError,
                                  SrtpFormatError, SrtpReplayError])
def test_every_media_error_is_a_media_error(kind: type[Exception]) -> None:
    assert issubclass(kind, MediaError)


@pytest.mark.parametrize("kind", [CodecError, DtmfFormatError, TimelineError, OggOpusError,
                                  RtpFormatError])
def test_malformed_input_errors_stay_value_errors(kind: type[Exception]) -> None:
    assert issubclass(kind, ValueError)
