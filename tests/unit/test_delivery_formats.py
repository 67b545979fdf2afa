"""The formats deliveries and webhooks promise: the Stripe-style signature (timestamp, HMAC
over "t.body", a replay window), the metadata XML (escaped, parseable whatever the SRC sent),
and recipient checks that refuse expired certificates."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from siprec_server.services.bundles import RecipientError
from siprec_server.services.deliveries import (
    check_recipient,
    metadata_xml,
    sign_webhook,
    verify_webhook,
)
from tests.integration.test_deliveries import certificate

SECRET = "0123456789abcdef0123"


def test_a_signature_verifies_only_for_its_body_secret_and_time() -> None:
    body = b'{"event":"recording.sealed"}'
    header = sign_webhook(SECRET, body, 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    assert verify_webhook(SECRET, body, header, now=1_700_000_100)
    assert not verify_webhook(SECRET, body + b" ", header, now=1_700_000_100)
    assert not verify_webhook("another secret of length", body, header, now=1_700_000_100)
    assert not verify_webhook(SECRET, body, header, now=1_700_000_000 + 301)  # a replay
    assert not verify_webhook(SECRET, body, "v1=deadbeef", now=1_700_000_000)


def test_the_metadata_xml_parses_whatever_the_src_sent() -> None:
    received = datetime(2026, 3, 1, tzinfo=UTC)
    xml = metadata_xml(
        {"id": "r1", "participants": [{"name": "<Eve & \"Mallory\">", "aor": "sip:1@x"}],
         "duration_s": 1.5, "restricted": False, "ended_at": None, "2bad key": 1},
        [{"sip_method": "INVITE", "datamode": "complete", "received_at": received,
          "document": "<recording xmlns='urn:ietf:params:xml:ns:recording:1'>]]></recording>"}])
    root = ET.fromstring(xml)
    ns = "{urn:x-siprec-server:delivery:1}"
    assert root.get("id") == "r1"
    assert root.find(f"{ns}participants/{ns}item/{ns}name").text == '<Eve & "Mallory">'
    assert root.find(f"{ns}restricted").text == "false"
    assert root.find(f"{ns}ended_at").get("nil") == "true"
    assert "]]>" in root.find(f"{ns}src_metadata/{ns}document").text


def test_an_expired_or_not_yet_valid_certificate_is_refused(tmp_path: Path) -> None:
    _key, good = certificate(tmp_path, "good")
    _key, old = certificate(tmp_path, "old", expired=True)
    now = datetime.now(UTC)
    assert check_recipient(good.read_text(), now).fingerprint.startswith("sha256:")
    with pytest.raises(RecipientError, match="expired"):
        check_recipient(old.read_text(), now)
    with pytest.raises(RecipientError, match="not valid before"):
        check_recipient(good.read_text(), now - timedelta(days=10))
    with pytest.raises(RecipientError):
        check_recipient("not a key", now)
