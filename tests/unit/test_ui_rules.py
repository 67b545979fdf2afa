"""Small rules of the web interface: browser-local times to the API's UTC, CSRF tokens, origin
checks, error words, and the participant timeline from a metadata log."""

from __future__ import annotations

from datetime import UTC, datetime

from aiohttp.test_utils import make_mocked_request

from api.ui.pages import _utc
from api.ui.session import csrf_token, same_origin
from api.ui.timeline import participant_timeline
from api.ui.words import in_words
from storage.metadata_log import MetadataLogEntry


def test_a_browser_local_time_becomes_utc_for_the_api() -> None:
    assert _utc("2024-05-01T09:00", "120") == "2024-05-01T07:00:00Z"  # UTC+2 in May
    assert _utc("2024-05-01T09:00", "") == "2024-05-01T09:00:00Z"
    assert _utc("2024-05-01T09:00:00Z", "120") == "2024-05-01T09:00:00Z"  # already zoned
    assert _utc("yesterday", "0") == "yesterday"  # the API says what is wrong with it
    assert _utc("2024-05-01T09:00", "99999") == "2024-05-01T09:00:00Z"  # no such offset


def test_csrf_tokens_belong_to_their_session() -> None:
    assert csrf_token("srs_a") == csrf_token("srs_a") != csrf_token("srs_b")
    assert "srs_a" not in csrf_token("srs_a")


def test_a_request_from_another_site_is_not_same_origin() -> None:
    def request(**headers: str) -> object:
        return make_mocked_request("POST", "/ui/api/v1/x", headers={"Host": "rec.example",
                                                                     **headers})
    assert same_origin(request())  # type: ignore[arg-type]
    assert same_origin(request(Origin="http://rec.example",  # type: ignore[arg-type]
                               **{"Sec-Fetch-Site": "same-origin"}))
    assert not same_origin(request(Origin="https://evil.example"))  # type: ignore[arg-type]
    assert not same_origin(request(**{"Sec-Fetch-Site": "cross-site"}))  # type: ignore[arg-type]


def test_errors_are_said_in_words() -> None:
    assert "outside the calls" in in_words("not_found", 404)
    assert "Matter 7" in in_words("legal_hold", 409, "under legal hold (Matter 7)")
    assert in_words("bad_request", 400, "limit: 1 to 500").endswith("limit: 1 to 500.")
    assert "Nothing you did" in in_words(None, 500)


_DOC = """<?xml version="1.0"?>
<recording xmlns="urn:ietf:params:xml:ns:recording:1">
  <datamode>{mode}</datamode>
  <session session_id="c2Vzc2lvbjE="><sipSessionID>a;remote=b</sipSessionID></session>
  {participants}
  <stream stream_id="c3RyZWFtMQ==" session_id="c2Vzc2lvbjE="><label>1</label></stream>
  <stream stream_id="c3RyZWFtMg==" session_id="c2Vzc2lvbjE="><label>2</label></stream>
</recording>"""
_ALICE = ('<participant participant_id="cDE="><nameID aor="sip:alice@example.com">'
          '<name>Alice</name></nameID><send>c3RyZWFtMQ==</send></participant>')
_BOB = ('<participant participant_id="cDI="><nameID aor="sip:bob@example.com">'
        '<name>Bob</name></nameID><send>c3RyZWFtMg==</send></participant>')


def test_the_timeline_says_who_joined_sent_and_left() -> None:
    t1, t2 = datetime(2024, 5, 1, 9, 0, tzinfo=UTC), datetime(2024, 5, 1, 9, 5, tzinfo=UTC)
    log = [MetadataLogEntry(t1, "INVITE", "complete",
                            _DOC.format(mode="complete", participants=_ALICE + _BOB)),
           MetadataLogEntry(t2, "UPDATE", "complete",
                            _DOC.format(mode="complete", participants=_ALICE)),
           MetadataLogEntry(t2, "UPDATE", "complete", "<not xml")]
    channels = [{"index": 0, "label": "1"}, {"index": 1, "label": "2"}]
    entries, unreadable = participant_timeline(log, channels)
    said = [(e.participant, e.what) for e in entries]
    assert ("Alice", "joined") in said and ("Bob", "joined") in said
    assert ("Alice", "sends on channel 1") in said and ("Bob", "sends on channel 2") in said
    assert ("Bob", "left") in said and ("Bob", "stopped sending on channel 2") in said
    assert ("Alice", "left") not in said
    assert unreadable == 1
